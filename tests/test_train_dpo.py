"""train_dpo.py end to end on the tiny fixture checkpoint: it learns the pairs, resumes, reads
Audio-Alpaca's schema, and refuses unusable datasets clearly."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

import train_dpo
from annotate.dataset import PreferenceRow, write_preference_dataset
from pipeline import TangoPipeline, load_pipeline
from tests.conftest import FIXTURE_DIR

FAST = ["--pretrained_model", str(FIXTURE_DIR), "--audio_length_in_s", "0.64", "--seed", "0"]


def wav_bytes(waveform: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, waveform, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def tone(freq: float, seconds: float = 0.64, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seed: int, seconds: float = 0.64) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).uniform(-1, 1, int(seconds * 16000))).astype(np.float32)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs") / "export"
    rows = [
        PreferenceRow(prompt=f"a steady tone number {i}", chosen_wav=wav_bytes(tone(300 + 50 * i)),
                      rejected_wav=wav_bytes(noise(i)), strategy="judge-rank", chosen_model="a", rejected_model="a",
                      chosen_seed=i, rejected_seed=100 + i, num_inference_steps=10, guidance_scale=3.0,
                      votes_for=1, votes_against=0, annotators=1)
        for i in range(6)
    ]
    write_preference_dataset(rows, folder, how_made="test pairs")
    return folder


def run(tmp_path, dataset, *extra):
    out = tmp_path / "out"
    code = train_dpo.main([*FAST, "--dataset", str(dataset), "--output_dir", str(out), *extra])
    assert code == 0
    return out, json.loads((out / "train_metrics.json").read_text())


def test_training_lowers_the_dpo_loss_and_writes_a_loadable_pipeline(tmp_path, pairs_dir):
    out, metrics = run(tmp_path, pairs_dir, "--max_train_steps", "8", "--train_batch_size", "6",
                       "--learning_rate", "1e-3", "--beta_dpo", "5000")
    assert metrics["steps"] == 8 and metrics["pairs"] == 6
    assert metrics["loss"] < np.log(2) - 0.05  # it starts at log 2: policy == reference
    assert metrics["implicit_acc"] > 0.5
    tuned = load_pipeline(str(out), device="cpu")
    assert isinstance(tuned, TangoPipeline)
    base = load_pipeline(str(FIXTURE_DIR), device="cpu")
    moved = [k for k, v in tuned.unet.state_dict().items() if not np.allclose(v.numpy(), base.unet.state_dict()[k].numpy())]
    assert moved  # the UNet changed, the rest was copied
    assert "dpo" in (out / "README.md").read_text()


def test_lora_training_fuses_into_a_loadable_pipeline(tmp_path, pairs_dir):
    out, metrics = run(tmp_path, pairs_dir, "--max_train_steps", "2", "--train_batch_size", "3",
                       "--learning_rate", "1e-3", "--lora_rank", "4", "--loss", "crpo")
    assert (out / "lora").is_dir() and metrics["steps"] == 2
    assert isinstance(load_pipeline(str(out), device="cpu"), TangoPipeline)


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, pairs_dir, caplog):
    out, first = run(tmp_path, pairs_dir, "--max_train_steps", "2", "--train_batch_size", "3", "--checkpointing_steps", "2")
    assert (out / "checkpoint-2").is_dir()
    caplog.set_level("INFO", logger="train_dpo")
    out, second = run(tmp_path, pairs_dir, "--max_train_steps", "4", "--train_batch_size", "3",
                      "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest")
    assert "resumed from" in caplog.text and "at step 2" in caplog.text
    assert second["steps"] == 4 and (out / "checkpoint-4").is_dir()


def write_table(folder, columns: dict, audio: bool = True):
    """A parquet dataset with only the given columns (Audio-Alpaca's minimal schema by default)."""
    from datasets import Audio, Features, Value

    features = Features({name: Audio(sampling_rate=16000) if audio and name in ("chosen", "rejected") else Value("string")
                         for name in columns})
    (folder / "data").mkdir(parents=True)
    table = pa.table(columns, schema=features.arrow_schema)
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    return folder


def audio_cell(waveform, rate=16000):
    return {"bytes": wav_bytes(waveform, rate), "path": None}


def test_audio_alpaca_schema_and_bad_rows_are_counted(tmp_path):
    rows = {
        "prompt": ["a tone", "a tone at 44.1 kHz", "", "broken audio"],
        "chosen": [audio_cell(tone(400)), audio_cell(tone(400, rate=44100), 44100), audio_cell(tone(400)),
                   {"bytes": b"not audio at all", "path": None}],
        "rejected": [audio_cell(noise(1)), audio_cell(noise(2)), audio_cell(noise(3)), audio_cell(noise(4))],
        "strategy": ["clap-rank"] * 4,
    }
    folder = write_table(tmp_path / "alpaca", rows)
    out, metrics = run(tmp_path, folder, "--max_train_steps", "1", "--train_batch_size", "2")
    assert metrics["pairs"] == 2  # the 44.1 kHz row is resampled and kept
    assert sum(metrics["skipped"].values()) == 2 and "empty prompt" in metrics["skipped"]


def test_unusable_datasets_fail_clearly(tmp_path):
    missing = write_table(tmp_path / "missing", {"prompt": ["x"], "chosen": [audio_cell(tone(400))]})
    with pytest.raises(train_dpo.DatasetError, match="lacks column"):
        train_dpo.main([*FAST, "--dataset", str(missing), "--output_dir", str(tmp_path / "o1")])
    empty = write_table(tmp_path / "empty", {"prompt": ["  "], "chosen": [audio_cell(tone(400))],
                                              "rejected": [audio_cell(noise(0))]})
    with pytest.raises(train_dpo.DatasetError, match="no usable pairs"):
        train_dpo.main([*FAST, "--dataset", str(empty), "--output_dir", str(tmp_path / "o2")])
    with pytest.raises(train_dpo.DatasetError, match="cannot load dataset"):
        train_dpo.main([*FAST, "--dataset", str(tmp_path / "nothing-here"), "--output_dir", str(tmp_path / "o3")])
