"""Export: votes -> a dataset folder that `datasets` loads, atomically; pushes to the Hub without the network."""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from datasets import Audio, load_dataset

from annotate import InvalidInput, Store
from preference_data.dataset import (EXPORT_MARKER, FEATURES, EmptyDataset, NotAnExport, decode_audio, load_pairs,
                                     write_preference_dataset)
from annotate.export import PushError, ScheduledPush, export_human_pairs, push_to_hub
from annotate.store import DB_NAME
from tests.annotate_helpers import SineGenerator, make_tasks, preference_row, tone
from tests.local_hub import LocalHub

# Clip j of make_tasks(..., clips=4): model base/dpo alternating, seed j.
RANKS = {  # annotator -> rank by seed
    "ann": {1: 1, 3: 2, 0: 3, 2: 3},
    "bob": {1: 1, 3: 2, 0: 3, 2: 3},
    "cat": {3: 1, 1: 2, 0: 3, 2: 4},
}


@pytest.fixture
def voted_store(tmp_path) -> Store:
    store = Store(tmp_path / "data")
    make_tasks(store, 2, clips=4)
    clips = store.candidates()
    for name, by_seed in RANKS.items():
        while (task := store.next_task(name)) is not None:
            store.submit(name, task.id, {c.id: by_seed[clips[c.id].seed] for c in task.candidates})
    vote_skip = store.next_task("dan")
    store.submit("dan", vote_skip.id, skip=True)
    return store


def _load(folder: Path, cache: Path):
    """Load as a consumer without torchcodec must: audio columns cast to undecoded bytes."""
    dataset = load_dataset(str(folder), split="train", cache_dir=str(cache))
    assert dataset.features == FEATURES  # the declared schema, 16 kHz audio included
    return dataset.cast_column("chosen", Audio(decode=False)).cast_column("rejected", Audio(decode=False))


def test_export_round_trip_through_datasets(voted_store, tmp_path):
    result = export_human_pairs(voted_store, tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export" / "data").iterdir()) == ["train-00000-of-00001.parquet"]

    dataset = _load(tmp_path / "export", tmp_path / "cache")
    assert list(dataset.column_names) == list(FEATURES)
    # Per task, all 6 pairs of its 4 clips have a strict majority (ann and bob tie seeds 0 and 2; cat decides).
    assert len(dataset) == result.summary.rows == 12

    clips = {c.sha256: c for c in voted_store.candidates().values()}
    rows = dataset.to_list()
    for row in rows:
        assert row["strategy"] == "human" and row["ranker"] == "human"
        for side in ("chosen", "rejected"):
            clip = clips[row[side]["path"].removesuffix(".wav")]
            samples, rate = sf.read(io.BytesIO(row[side]["bytes"]), dtype="float32")
            assert rate == 16000
            p, j = int(clip.prompt.split()[1]), clip.seed
            np.testing.assert_array_equal(samples, tone(110 + 13 * p + 37 * j))  # the stored samples, exactly
            assert (row[f"{side}_model"], row[f"{side}_seed"]) == (clip.model, clip.seed)
            assert row["prompt"] == clip.prompt
        assert (row["num_inference_steps"], row["guidance_scale"]) == (10, 3.0)

    by_seeds = {(clips[r["chosen"]["path"][:-4]].seed, clips[r["rejected"]["path"][:-4]].seed, r["prompt"]): r for r in rows}
    strong = by_seeds[(1, 0, "prompt 0")]  # everyone ranked seed 1 above seed 0
    assert (strong["votes_for"], strong["votes_against"], strong["annotators"]) == (3, 0, 3)
    split = by_seeds[(1, 3, "prompt 1")]  # ann, bob: 1 > 3; cat: 3 > 1
    assert (split["votes_for"], split["votes_against"], split["annotators"]) == (2, 1, 3)
    tied = by_seeds[(0, 2, "prompt 0")]  # ann, bob tied 0 and 2; cat: 0 > 2
    assert (tied["votes_for"], tied["votes_against"], tied["annotators"]) == (1, 0, 3)
    assert (strong["chosen_model"], strong["rejected_model"]) == ("dpo", "base")

    # What train_dpo.py and the preference model read of it (the library's reader) is the same rows and samples.
    trained = load_pairs(str(tmp_path / "export"), "train")
    assert trained["prompt"] == dataset["prompt"]
    np.testing.assert_array_equal(decode_audio(trained[0]["chosen"], tmp_path / "export"),
                                  sf.read(io.BytesIO(rows[0]["chosen"]["bytes"]), dtype="float32")[0])


def test_min_votes_drops_pairs_backed_by_one_vote_and_the_card_counts_each_threshold(voted_store, tmp_path, capsys):
    from annotate.__main__ import main

    out = tmp_path / "export"
    assert main(["export", "--data-dir", str(voted_store.data_dir), "--out", str(out), "--min-votes", "2"]) == 0
    assert "10 pairs" in capsys.readouterr().out
    rows = _load(out, tmp_path / "cache").to_list()
    assert len(rows) == 10 and min(row["votes_for"] for row in rows) == 2  # the two 1-0 pairs (seeds 0, 2) dropped
    card = (out / "README.md").read_text()
    strong = sum(row["votes_for"] == 3 for row in rows)
    assert "| 1 | 12 |" in card and "| 2 (this export) | 10 |" in card and f"| 3 | {strong} |" in card
    assert "backed by at least 2 vote(s)" in card
    with pytest.raises(InvalidInput, match="min_votes"):
        export_human_pairs(voted_store, out, min_votes=0)


def test_export_is_recorded_and_pair_ids_are_stable(voted_store, tmp_path):
    first = export_human_pairs(voted_store, tmp_path / "export")
    ids = set(_load(tmp_path / "export", tmp_path / "cache-1")["pair_id"])
    second = export_human_pairs(voted_store, tmp_path / "export")
    assert set(_load(tmp_path / "export", tmp_path / "cache-2")["pair_id"]) == ids and len(ids) == 12
    assert first.summary.fingerprint == second.summary.fingerprint
    records = voted_store.exports()
    assert [r.id for r in records] == [first.export_id, second.export_id]
    assert records[-1].pairs == 12 and records[-1].rankings == 6 and records[-1].strategy == "human"
    assert records[-1].alpha == pytest.approx(first.alpha) and first.alpha > 0.5


def files_in(folder: Path) -> dict[str, bytes | None]:
    """Every file under ``folder`` and its bytes; a database by its name only and its journals not at all
    (SQLite checkpoints and indexes them as it reads: compare a store by its content)."""
    return {str(p.relative_to(folder)): None if p.name == DB_NAME else p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_an_export_replaces_only_a_previous_export_never_the_data(voted_store, tmp_path):
    data = voted_store.data_dir
    others = tmp_path / "notes"
    others.mkdir()
    (others / "todo.txt").write_text("keep me")
    (tmp_path / "a-file").write_text("keep me too")
    before = files_in(tmp_path)
    refused = {data: "data folder", data / "audio": "inside the data folder", data / "notes": "inside the data folder",
               tmp_path: "data folder", data / "annotate.sqlite": "inside the data folder",
               others: "no .tango-export marker", tmp_path / "a-file": "a file, not a folder"}
    for out_dir, reason in refused.items():
        with pytest.raises(NotAnExport, match=reason):
            export_human_pairs(voted_store, out_dir)
        if out_dir.exists():  # the dataset writer alone (it knows no data folder) refuses what no export made
            with pytest.raises(NotAnExport):
                write_preference_dataset([preference_row(0)], out_dir, how_made="over something else")
    assert files_in(tmp_path) == before and voted_store.exports() == [] and len(voted_store.rankings()) == 7
    assert not (data / "notes").exists() and not list(tmp_path.rglob(".*.lock"))

    for out_dir in (data / "export", tmp_path / "export"):  # the data folder's own export folder, a new folder
        for _ in range(2):  # an export replaces its own previous export
            assert export_human_pairs(voted_store, out_dir).summary.rows == 12
        assert (out_dir / EXPORT_MARKER).is_file()
    legacy = tmp_path / "legacy"  # an export made before the marker: README.md and data/train-*.parquet only
    write_preference_dataset([preference_row(0)], legacy, how_made="old")
    (legacy / EXPORT_MARKER).unlink()
    assert export_human_pairs(voted_store, legacy).summary.rows == 12
    # Issue 31: a hand-made dataset of the same layout (its own card, no marker) was replaced.
    hand_made = tmp_path / "hand-made"
    shutil.copytree(legacy / "data", hand_made / "data")
    (hand_made / "README.md").write_text("# My own recordings\n")
    before = files_in(hand_made)
    with pytest.raises(NotAnExport, match="holds files no export made"):
        export_human_pairs(voted_store, hand_made)
    assert files_in(hand_made) == before and (hand_made / "README.md").read_text() == "# My own recordings\n"


def test_pair_id_ignores_direction():
    row = preference_row(3)
    flipped = replace(row, chosen_wav=row.rejected_wav, rejected_wav=row.chosen_wav)
    assert row.pair_id == flipped.pair_id != preference_row(4).pair_id


def test_dataset_card_declares_features_and_counts(voted_store, tmp_path):
    export_human_pairs(voted_store, tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "configs" not in front  # see the next test
    features = {f["name"]: f["dtype"] for f in front["dataset_info"]["features"]}
    assert features["chosen"] == {"audio": {"sampling_rate": 16000, "decode": False}}
    assert features["votes_for"] == "int64" and features["guidance_scale"] == "float64"
    assert "12 pairs" in card and "Krippendorff's alpha (ordinal)" in card and "blind" in card


def card_snippet(folder: Path) -> str:
    """The Python block of an export's card ("## Loading"), naming ``folder`` where it says which dataset."""
    card = (folder / "README.md").read_text()
    code = card.split("## Loading", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "<this folder or repo id>" in code
    return code.replace("<this folder or repo id>", str(folder))


def test_the_card_snippet_loads_its_own_folder_when_another_export_has_the_same_folder_name(tmp_path, monkeypatch):
    """Issue 32: with a card declaring ``configs``, ``datasets`` cached a local folder by its name, so
    ``load_dataset("a/mydata")`` then ``load_dataset("b/mydata")`` returned a's rows for b."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "one-cache-for-both"))
    folders = {tmp_path / "a" / "mydata": range(0, 3), tmp_path / "b" / "mydata": range(3, 7)}
    for folder, rows in folders.items():
        write_preference_dataset([preference_row(i) for i in rows], folder, how_made="test")
    for _ in range(2):  # the second round loads from the cache
        for folder, rows in folders.items():
            namespace = {}
            exec(card_snippet(folder), namespace)
            assert namespace["ds"]["prompt"] == [f"prompt {i}" for i in rows]
            assert namespace["rate"] == 16000 and len(namespace["samples"]) > 0
    # A folder exported again in place loads its new rows too.
    write_preference_dataset([preference_row(i) for i in range(10, 12)], tmp_path / "a" / "mydata", how_made="test")
    namespace = {}
    exec(card_snippet(tmp_path / "a" / "mydata"), namespace)
    assert namespace["ds"]["prompt"] == ["prompt 10", "prompt 11"]


def test_nothing_to_export_keeps_the_previous_export(tmp_path):
    store = Store(tmp_path / "data")
    make_tasks(store, 1)
    write_preference_dataset([preference_row(0)], tmp_path / "export", how_made="earlier")
    with pytest.raises(EmptyDataset):
        export_human_pairs(store, tmp_path / "export")
    assert len(_load(tmp_path / "export", tmp_path / "cache")) == 1
    assert store.exports() == []


def test_a_failing_row_source_keeps_the_previous_export(tmp_path):
    write_preference_dataset([preference_row(i) for i in range(3)], tmp_path / "export", how_made="earlier")

    def broken_rows():
        yield preference_row(10)
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        write_preference_dataset(broken_rows(), tmp_path / "export", how_made="broken")
    bad = replace(preference_row(11), strategy="vibes")
    with pytest.raises(ValueError, match="strategy"):
        write_preference_dataset([bad], tmp_path / "export", how_made="broken")
    wrong_rate = io.BytesIO()
    sf.write(wrong_rate, tone(440), 8000, format="WAV")
    with pytest.raises(ValueError, match="8000 Hz"):
        write_preference_dataset([replace(preference_row(12), chosen_wav=wrong_rate.getvalue())],
                                 tmp_path / "export", how_made="broken")
    assert _load(tmp_path / "export", tmp_path / "cache")["prompt"] == ["prompt 0", "prompt 1", "prompt 2"]
    assert not list(tmp_path.glob(".export.building"))


def test_a_swap_cut_between_its_renames_is_undone_or_finished(tmp_path):
    out_dir = tmp_path / "export"
    write_preference_dataset([preference_row(0)], out_dir, how_made="v1")
    os.replace(out_dir, tmp_path / ".export.previous")  # killed after the first rename

    def failing_rows():
        raise OSError("killed again")
        yield  # pragma: no cover

    with pytest.raises(OSError):
        write_preference_dataset(failing_rows(), out_dir, how_made="v2")
    assert _load(out_dir, tmp_path / "cache-1")["prompt"] == ["prompt 0"]  # the previous export is back

    (tmp_path / ".export.previous").mkdir()  # killed after the second rename, before the cleanup
    write_preference_dataset([preference_row(5), preference_row(6)], out_dir, how_made="v3")
    assert len(_load(out_dir, tmp_path / "cache-2")) == 2
    assert not (tmp_path / ".export.previous").exists()


def test_shards_split_by_size_and_load_in_order(tmp_path, monkeypatch):
    import preference_data.dataset

    row_bytes = len(preference_row(0).chosen_wav) * 2
    monkeypatch.setattr(preference_data.dataset, "MAX_SHARD_BYTES", 3 * row_bytes)
    monkeypatch.setattr(preference_data.dataset, "ROWS_PER_GROUP", 2)
    summary = write_preference_dataset((preference_row(i) for i in range(7)), tmp_path / "export", how_made="sharded")
    assert summary.shards == 3
    assert sorted(p.name for p in (tmp_path / "export" / "data").iterdir()) == [
        f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert _load(tmp_path / "export", tmp_path / "cache")["prompt"] == [f"prompt {i}" for i in range(7)]


# ---------------------------------------------------------------- the Hub, without the network

TOKEN = "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123"


@pytest.fixture
def export_dir(tmp_path) -> Path:
    write_preference_dataset([preference_row(i) for i in range(3)], tmp_path / "export", how_made="for the Hub")
    return tmp_path / "export"


def test_push_creates_the_dataset_repo_and_commits_the_export_once(export_dir, tmp_path):
    api = LocalHub(tmp_path / "hub")
    info = push_to_hub(export_dir, "me/tango-prefs", token=TOKEN, api=api)
    assert info.oid == "commit-1"
    assert api.repos == [("me/tango-prefs", {"repo_type": "dataset", "exist_ok": True, "private": None, "token": TOKEN})]
    [commit] = api.commits
    assert commit["repo_id"] == "me/tango-prefs" and commit["repo_type"] == "dataset" and commit["token"] == TOKEN
    assert sorted(commit["files"]) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert commit["delete_patterns"] == ["data/*"]  # shards of an older, larger export do not linger
    assert all(TOKEN.encode() not in data for data in commit["files"].values())


def test_push_takes_the_token_from_the_environment(export_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = LocalHub(tmp_path / "hub")
    push_to_hub(export_dir, "me/tango-prefs", api=api)
    assert api.commits[0]["token"] == TOKEN


def test_push_without_any_token_says_how_to_get_one(export_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("annotate.export.get_token", lambda: None)
    with pytest.raises(PushError, match="HF_TOKEN"):
        push_to_hub(export_dir, "me/tango-prefs", api=LocalHub(tmp_path / "hub"))


def test_a_failed_push_never_leaks_the_token(export_dir, caplog):
    api = LocalHub(export_dir.parent / "hub", fail_with=RuntimeError(f"401 Unauthorized; headers={{'authorization': 'Bearer {TOKEN}'}}"))
    with caplog.at_level(logging.DEBUG), pytest.raises(PushError) as raised:
        push_to_hub(export_dir, "me/tango-prefs", token=TOKEN, api=api)
    error = raised.value
    assert "401 Unauthorized" in str(error)
    assert TOKEN not in str(error) and TOKEN not in repr(error) and TOKEN not in caplog.text
    assert error.__cause__ is None and error.__context__ is None  # the raw error is not chained


@pytest.mark.parametrize("repo_id", ["no-owner", "a/b/c", "../x", "me/" + "x" * 200, ""])
def test_push_refuses_bad_repo_ids_and_non_exports(export_dir, tmp_path, repo_id):
    with pytest.raises(ValueError, match="repo_id"):
        push_to_hub(export_dir, repo_id, token=TOKEN, api=LocalHub(tmp_path / "hub"))
    with pytest.raises(ValueError, match="not an export"):
        push_to_hub(export_dir / "data", "me/x", token=TOKEN, api=LocalHub(tmp_path / "hub"))


def test_scheduled_push_commits_each_new_export_once(export_dir, tmp_path):
    api, exports = LocalHub(tmp_path / "hub"), []
    scheduler = ScheduledPush(export_dir, "me/tango-prefs", every=60, token=TOKEN, api=api,
                              before_push=lambda: exports.append(time.time()))
    try:
        deadline = time.monotonic() + 30
        while not api.commits:  # the scheduler's first run happens at start, in its thread
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert scheduler.trigger().result() is None  # unchanged: no second commit
        write_preference_dataset([preference_row(i) for i in range(5)], export_dir, how_made="newer")
        assert scheduler.trigger().result().oid == "commit-2"
    finally:
        scheduler.stop()
    assert len(api.commits) == 2 and len(exports) >= 3
    assert api.commits[0]["commit_message"] == "Scheduled export of preference pairs"
    assert api.repos[0][0] == "me/tango-prefs" and api.repos[0][1]["repo_type"] == "dataset"
    assert not list(export_dir.parent.glob(".export.push-*"))  # snapshots cleaned up


def test_scheduled_push_before_any_vote_waits_quietly_and_setup_errors_are_scrubbed(tmp_path):
    store = Store(tmp_path / "data")
    make_tasks(store, 1)
    api = LocalHub(tmp_path / "hub")
    scheduler = ScheduledPush(tmp_path / "export", "me/tango-prefs", every=60, token=TOKEN, api=api,
                              before_push=lambda: export_human_pairs(store, tmp_path / "export"))
    try:
        assert scheduler.trigger().result() is None  # nothing exported yet: no commit, no error
    finally:
        scheduler.stop()
    assert api.commits == []

    class Unauthorized(LocalHub):
        def create_repo(self, repo_id, **kwargs):
            raise RuntimeError(f"401: invalid token {TOKEN}")

    with pytest.raises(PushError) as raised:
        ScheduledPush(tmp_path / "export", "me/tango-prefs", token=TOKEN, api=Unauthorized(tmp_path / "hub"))
    assert "401" in str(raised.value) and TOKEN not in str(raised.value) and raised.value.__context__ is None


class LatentSineGenerator(SineGenerator):
    """A generator that, like the pipeline, also returns the latent behind each clip (holding its seed)."""

    def __call__(self, prompts, seeds, steps, guidance):
        from annotate.pool import GeneratedClips

        waveforms = super().__call__(prompts, seeds, steps, guidance)
        latents = np.stack([np.full((2, 3, 4), seed, np.float32) for seed in seeds])
        return GeneratedClips(waveforms, latents, "vae-of-" + self.model)


def test_pool_clips_keep_their_latents_through_votes_and_export(tmp_path):
    """What annotators ranked is what DPO trains on: the latents stored with pool clips reach the export."""
    from preference_data.latents import latent_from_bytes
    from annotate.pool import build_pool
    from tests.annotate_helpers import vote

    store = Store(tmp_path / "data")
    build_pool(store, ["a beep", "a hiss"], ["m1", "m1-dpo"], k=2, make_generator=LatentSineGenerator,
               progress=False)
    clips = store.candidates()
    assert all(Path(c.latent_path).is_file() for c in clips.values())
    assert all(c.read_latent()[0, 0, 0] == c.seed for c in clips.values())
    for annotator in ("ann", "bob"):
        for _ in range(2):  # both rank by (model, seed), so they agree and pairs within one model exist
            task = store.next_task(annotator)
            order = sorted((clips[shown.id] for shown in task.candidates), key=lambda clip: (clip.model, clip.seed))
            store.submit(annotator, task.id, {clip.id: rank for rank, clip in enumerate(order, 1)})
    export_human_pairs(store, tmp_path / "export")
    ds = load_dataset(str(tmp_path / "export"), split="train", download_mode="force_redownload",
                      verification_mode="no_checks")
    by_id = {(c.model, c.seed, c.prompt): c for c in clips.values()}
    checked = 0
    for row in ds:
        chosen = by_id[(row["chosen_model"], row["chosen_seed"], row["prompt"])]
        rejected = by_id[(row["rejected_model"], row["rejected_seed"], row["prompt"])]
        if chosen.latent_fingerprint == rejected.latent_fingerprint:  # one model's latent space
            assert row["latent_fingerprint"] == chosen.latent_fingerprint
            assert latent_from_bytes(row["chosen_latent"])[0, 0, 0] == row["chosen_seed"]
            checked += 1
        else:  # two VAEs: latents of different spaces are not a pair DPO can compare
            assert row["chosen_latent"] is None and row["latent_fingerprint"] is None
    assert checked and len(ds) > checked


def test_a_latent_without_its_fingerprint_is_refused(tmp_path):
    from annotate import InvalidInput

    store = Store(tmp_path / "data")
    with pytest.raises(InvalidInput, match="latent"):
        store.add_candidate("a beep", tone(440), model="m", seed=0, steps=1, guidance=3.0, sample_rate=16000,
                            latent=np.zeros((2, 3, 4), np.float32))
    with pytest.raises(InvalidInput, match="latent"):
        store.add_candidate("a beep", tone(440), model="m", seed=0, steps=1, guidance=3.0, sample_rate=16000,
                            latent=np.full((2, 3, 4), np.nan, np.float32), latent_fingerprint="v")
    assert store.candidates() == {}
