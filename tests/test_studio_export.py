"""The Dataset tab's download and preview of an export (studio.admin): the zip holds the parquet shards and the card
and loads back with `datasets`; the preview plays the export's first pairs from the store's clips."""

import io
import zipfile
from pathlib import Path

import pytest
import soundfile as sf
from datasets import Audio, load_dataset

from annotate import Store
from studio import StudioConfig
from studio.admin import PREVIEW_PAIRS, export_dataset, export_download, export_preview
from tests.annotate_helpers import make_tasks


def rank_by_clip_id(store: Store, annotator: str) -> None:
    """Rank the clips of ``annotator``'s next task by the store's clip id: annotators agree, whatever order they see."""
    task = store.next_task(annotator)
    order = sorted(clip.id for clip in task.candidates)
    store.submit(annotator, task.id, {clip.id: order.index(clip.id) + 1 for clip in task.candidates})


@pytest.fixture
def exported(tmp_path):
    """(store, export result): one 3-clip task ranked alike by two annotators, i.e. three pairs of 2 votes to 0."""
    config = StudioConfig(data_dir=tmp_path / "data")
    store = Store(config.data_dir)
    make_tasks(store, 1, clips=3)
    for annotator in ("ann", "bo"):
        rank_by_clip_id(store, annotator)
    yield store, export_dataset(store, config)
    store.close()


def test_the_zip_holds_the_shards_and_the_card_and_loads_with_datasets(exported, tmp_path):
    store, result = exported
    zip_path = export_download(result, tmp_path / "downloads")
    assert zip_path.name == f"tango-preferences-export-{result.export_id}.zip"
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["README.md", "data/train-00000-of-00001.parquet"]  # no export marker
        assert archive.read("README.md") == (result.out_dir / "README.md").read_bytes()
        archive.extractall(tmp_path / "unzipped")
    dataset = load_dataset("parquet", data_files=str(tmp_path / "unzipped" / "data" / "*.parquet"), split="train")
    dataset = dataset.cast_column("chosen", Audio(decode=False)).cast_column("rejected", Audio(decode=False))
    assert len(dataset) == result.summary.rows == 3
    clips = {Path(clip.audio_path).stem: clip for clip in store.candidates().values()}
    for row in dataset:
        chosen = clips[Path(row["chosen"]["path"]).stem]
        assert row["prompt"] == chosen.prompt and (row["votes_for"], row["votes_against"]) == (2, 0)
        assert row["chosen"]["bytes"] == Path(chosen.audio_path).read_bytes()
        samples, rate = sf.read(io.BytesIO(row["rejected"]["bytes"]))
        assert rate == 16000 and len(samples) > 0


def test_a_new_export_replaces_the_earlier_zip(exported, tmp_path):
    store, first = exported
    earlier = export_download(first, tmp_path / "downloads")
    second = export_dataset(store, StudioConfig(data_dir=store.data_dir))
    latest = export_download(second, tmp_path / "downloads")
    assert second.export_id == first.export_id + 1 and not earlier.exists()
    assert list((tmp_path / "downloads").iterdir()) == [latest]


def test_the_preview_plays_the_first_exported_pairs_from_the_store(exported):
    store, result = exported
    preview = export_preview(store, result.out_dir)
    rows = load_dataset("parquet", data_files=str(result.out_dir / "data" / "*.parquet"), split="train")
    assert len(preview) == min(PREVIEW_PAIRS, len(rows))
    for pair, row in zip(preview, rows.cast_column("chosen", Audio(decode=False))):
        assert (pair.prompt, pair.chosen_model, pair.rejected_model) == (row["prompt"], row["chosen_model"],
                                                                          row["rejected_model"])
        assert (pair.votes_for, pair.votes_against) == (2, 0)
        assert Path(pair.chosen_audio).read_bytes() == row["chosen"]["bytes"]
        assert Path(pair.rejected_audio).is_relative_to(store.audio_dir)


def test_the_preview_leaves_out_pairs_whose_clips_the_store_lost(exported):
    store, result = exported
    first = export_preview(store, result.out_dir, count=1)[0]
    Path(first.chosen_audio).unlink()
    assert all(first.chosen_audio not in (pair.chosen_audio, pair.rejected_audio)
               for pair in export_preview(store, result.out_dir))
