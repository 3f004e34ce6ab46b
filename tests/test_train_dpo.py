"""train_dpo.py end to end on the tiny fixture checkpoint: it learns the pairs, resumes, reads
Audio-Alpaca's schema, and refuses unusable datasets clearly."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

import train_dpo
from pipeline import TangoPipeline, load_pipeline
from preference_data.dataset import PreferenceRow, stored_pair_latents, write_preference_dataset
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
                      rejected_wav=wav_bytes(noise(i)), strategy="inference", ranker="judge", chosen_model="a", rejected_model="a",
                      chosen_seed=i, rejected_seed=100 + i, num_inference_steps=10, guidance_scale=3.0,
                      votes_for=1, votes_against=0, annotators=1)
        for i in range(6)
    ]
    write_preference_dataset(rows, folder, how_made="test pairs")
    return folder


def run(tmp_path, dataset, *extra):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # each run is its own training, as in a fresh process (mixed precision may differ)
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
    card = (out / "README.md").read_text()
    assert "dpo" in card and "6 usable pairs; rows skipped: none" in card  # not "skipped {}"


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
    assert "rows skipped: 2 (" in (out / "README.md").read_text()


def test_unusable_datasets_fail_clearly(tmp_path):
    missing = write_table(tmp_path / "missing", {"prompt": ["x"], "chosen": [audio_cell(tone(400))]})
    with pytest.raises(train_dpo.DatasetError, match="lacks column"):
        train_dpo.main([*FAST, "--dataset", str(missing), "--output_dir", str(tmp_path / "o1")])
    empty = write_table(tmp_path / "empty", {"prompt": ["  "], "chosen": [audio_cell(tone(400))],
                                              "rejected": [audio_cell(noise(0))]})
    with pytest.raises(train_dpo.DatasetError, match=r"no usable pairs .*1 rows, skipped 1 \(empty prompt: 1\)"):
        train_dpo.main([*FAST, "--dataset", str(empty), "--output_dir", str(tmp_path / "o2")])
    (tmp_path / "no-dataset-here").mkdir()  # (a folder that does not exist is refused with the flags: test_cli.py)
    with pytest.raises(train_dpo.DatasetError, match="cannot load dataset"):
        train_dpo.main([*FAST, "--dataset", str(tmp_path / "no-dataset-here"), "--output_dir", str(tmp_path / "o3")])
    no_rows = write_table(tmp_path / "no-rows", {"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(train_dpo.DatasetError, match="has no rows: its parquet files are empty"):
        train_dpo.main([*FAST, "--dataset", str(no_rows), "--output_dir", str(tmp_path / "o4")])


def test_mixed_precision_reference_matches_the_policy_at_the_first_step(tmp_path, pairs_dir):
    """Policy and reference under the same autocast: identical weights give margin 0 and loss log 2."""
    _, metrics = run(tmp_path, pairs_dir, "--max_train_steps", "1", "--train_batch_size", "6",
                     "--learning_rate", "0", "--mixed_precision", "bf16")
    assert abs(metrics["loss"] - np.log(2)) < 1e-3
    assert abs(metrics["reward_margin"]) < 1e-3


def test_resume_refuses_changed_settings(tmp_path, pairs_dir):
    run(tmp_path, pairs_dir, "--max_train_steps", "1", "--train_batch_size", "3", "--checkpointing_steps", "1")
    with pytest.raises(train_dpo.ConfigMismatch, match="learning_rate"):
        run(tmp_path, pairs_dir, "--max_train_steps", "2", "--train_batch_size", "3", "--checkpointing_steps", "1",
            "--learning_rate", "1e-3", "--resume_from_checkpoint", "latest")


def test_kill_9_during_a_checkpoint_write_resumes_from_the_last_complete_one(tmp_path, pairs_dir, caplog):
    out = tmp_path / "out"
    command = [sys.executable, str(Path(train_dpo.__file__)), *FAST, "--dataset", str(pairs_dir), "--output_dir",
               str(out), "--max_train_steps", "6", "--train_batch_size", "3", "--checkpointing_steps", "1",
               "--checkpoints_total_limit", "3"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while not (out / ".partial-checkpoint-3").exists():  # the third checkpoint is being written
            assert process.poll() is None and time.monotonic() < deadline, "training ended before the kill"
            time.sleep(0.001)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    (out / "checkpoint-9").mkdir()  # what a kill left behind before checkpoints were renamed into place
    complete = train_dpo.complete_checkpoints(out)
    assert complete and complete[-1].name in ("checkpoint-2", "checkpoint-3")
    caplog.set_level("INFO", logger="train_dpo")
    _, metrics = run(tmp_path, pairs_dir, "--max_train_steps", "6", "--train_batch_size", "3",
                     "--checkpointing_steps", "1", "--checkpoints_total_limit", "3", "--resume_from_checkpoint", "latest")
    assert f"resumed from {complete[-1]}" in caplog.text
    assert metrics["steps"] == 6 and [r["step"] for r in metrics["history"]] == [1, 2, 3, 4, 5, 6]
    assert not list(out.glob(".partial-*"))


def test_a_planted_cache_file_is_not_executed(tmp_path, pairs_dir):
    out, _ = run(tmp_path, pairs_dir, "--max_train_steps", "1", "--train_batch_size", "3")
    (cache_file,) = (out / "cache").glob("pairs-*.safetensors")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import torch

    torch.save({"mean": Payload()}, cache_file)  # a pickle where the cache belongs
    _, metrics = run(tmp_path, pairs_dir, "--max_train_steps", "1", "--train_batch_size", "3")
    assert not marker.exists() and metrics["pairs"] == 6  # ignored and rebuilt


def test_corrupt_audio_and_wrong_content_hashes_are_skipped(tmp_path):
    import hashlib

    loud = bytearray(wav_bytes(tone(400)))
    loud[len(loud) // 2 : len(loud) // 2 + 400] = b"\x4d" * 400  # float32 samples of about 2e8
    nan = bytearray(wav_bytes(tone(400)))
    nan[len(nan) // 2 : len(nan) // 2 + 400] = b"\xff\xff\xff\x7f" * 100
    good = wav_bytes(tone(500))
    named = lambda data, name=None: {"bytes": bytes(data), "path": f"{name or hashlib.sha256(data).hexdigest()}.wav"}  # noqa: E731
    rows = {
        "prompt": ["fine", "loud", "nan", "swapped bytes"],
        "chosen": [named(good), named(loud), named(nan), named(good, hashlib.sha256(b"another clip").hexdigest())],
        "rejected": [audio_cell(noise(1))] * 4,
        "strategy": ["judge-rank"] * 4,
    }
    folder = write_table(tmp_path / "corrupt", rows)
    _, metrics = run(tmp_path, folder, "--max_train_steps", "1", "--train_batch_size", "1")
    assert metrics["pairs"] == 1
    assert metrics["skipped"] == {"audio amplitude above 2.0": 1, "AudioError": 1,  # NaN samples
                                  "content hash mismatch": 1}


def test_validation_sft_first_and_a_schedule(tmp_path, pairs_dir):
    out, metrics = run(tmp_path, pairs_dir, "--num_train_epochs", "3", "--sft_first_epochs", "1",
                       "--train_batch_size", "2", "--validation_fraction", "0.34", "--learning_rate", "1e-3",
                       "--lr_scheduler", "linear", "--lr_warmup_steps", "1", "--beta_dpo", "5000",
                       "--judge_prompts", "2", "--judge_steps", "2", "--report_to", "tensorboard")
    assert metrics["train_pairs"] == 4 and metrics["validation_pairs"] == 2
    assert metrics["steps"] == 6 and [r["epoch"] for r in metrics["validation"]] == [-1, 0, 1, 2]
    before = metrics["validation"][0]  # the starting model: identical to the reference, so the margin is 0
    assert before["step"] == 0 and before["val_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert all(0 <= r["val_implicit_acc"] <= 1 and np.isfinite(r["val_loss"]) for r in metrics["validation"])
    lrs = [r["lr"] for r in metrics["history"]]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0.0)  # warmed up, then linear decay to 0
    sft_steps = [r for r in metrics["history"] if r["epoch"] == 0]
    assert all(r["loss"] == pytest.approx(r["loss_chosen"]) for r in sft_steps)  # SFT: the chosen clip's loss
    assert all(0 <= r["judge_mean_score"] <= 1 for r in metrics["validation"])  # the judge heard each epoch's clips
    best = metrics["best"]
    assert best["judge_mean_score"] == max(r["judge_mean_score"] for r in metrics["validation"])
    assert json.loads((out / "best" / "validation.json").read_text())["step"] == best["step"]
    assert list(out.rglob("events.out.tfevents.*"))  # --report_to tensorboard
    assert isinstance(load_pipeline(str(out / "best"), device="cpu"), TangoPipeline)
    assert (out / "training_curve.png").stat().st_size > 1000
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["audio_length_in_s"] == 0.64 and saved["num_processes"] == 1


@pytest.fixture(scope="module")
def shipped_architecture(tmp_path_factory):
    """A random-weight pipeline with the shipped tiny models' architecture (TimePositionUNet, the recipe's
    configuration) at toy width."""
    from tests.app_helpers import build_test_pipeline

    return build_test_pipeline(tmp_path_factory.mktemp("shipped-architecture") / "model", seed=0)


def test_two_cpu_processes_train_like_one_with_the_same_global_batch(tmp_path, pairs_dir, shipped_architecture):
    """torchrun --nproc_per_node 2 (gloo on CPU) on the shipped architecture: every UNet parameter takes part
    (DDP stops at the second step otherwise, issue 23), the same optimizer steps as one process with twice the
    per-process batch, different noise on each rank, one output that loads."""
    model = ["--pretrained_model", str(shipped_architecture)]
    single, one = run(tmp_path / "single", pairs_dir, *model, "--num_train_epochs", "2", "--train_batch_size", "4")
    out = tmp_path / "two"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               str(Path(train_dpo.__file__)), *FAST, *model, "--dataset", str(pairs_dir), "--output_dir", str(out),
               "--num_train_epochs", "2", "--train_batch_size", "2"]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    two = json.loads((out / "train_metrics.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["steps"] == one["steps"] == 4  # 6 pairs, global batch 4: 2 steps per epoch either way
    first_noise = two["first_noise_per_process"]
    assert len(first_noise) == 2 and first_noise[0] != first_noise[1]
    tuned, base = load_pipeline(str(out), device="cpu"), load_pipeline(str(shipped_architecture), device="cpu")
    assert type(tuned.unet).__name__ == "TimePositionUNet"
    projections = {k: v for k, v in tuned.unet.state_dict().items() if k.startswith("time_position_projections.")}
    assert projections and all(not v.equal(base.unet.state_dict()[k]) for k, v in projections.items())  # trained
    assert not list(out.glob("checkpoint-*")) and (out / "train_config.json").is_file()


def test_validation_holds_out_whole_prompts():
    # --pairs all makes up to six pairs per prompt from the same clips: a pair-level split leaked every one
    prompts = [f"prompt {i // 6}" for i in range(60)] + ["prompt 0 "]  # whitespace is the same prompt
    train, held = train_dpo.split_validation(prompts, 0.2, seed=3)
    assert sorted(train + held) == list(range(61))
    assert not {prompts[i].strip() for i in train} & {prompts[i].strip() for i in held}
    assert len({prompts[i] for i in held}) == 2  # 20 % of 10 prompts
    assert train_dpo.split_validation(prompts, 0.2, seed=3) == (train, held)
    assert train_dpo.split_validation(prompts, 0.0, seed=3) == (list(range(61)), [])
    with pytest.raises(train_dpo.DatasetError, match="two distinct prompts"):
        train_dpo.split_validation(["same"] * 5, 0.5, seed=0)


def test_training_uses_the_sampled_latents_not_re_encoded_audio(tmp_path):
    """Self-generated pairs train on the latents the model sampled: the base model's loss on what the step
    batches equals its loss on its own samples, where the re-encoded audio is far away."""
    import torch

    from autopairs.autorank import autorank_pairs
    from annotate.pool import PipelineGenerator
    from losses import denoising_loss

    generate = PipelineGenerator(str(FIXTURE_DIR), device="cpu")
    pipe = generate.pipe
    order = lambda clips, rate, prompt: [float(i) for i in range(len(clips))]  # noqa: E731 (a fixed ranking)
    rows = list(autorank_pairs(["a dog barks", "rain falls", "a bell rings"], generate, order, model="fixture", k=2,
                               steps=2, min_margin=0.5))
    assert len(rows) == 3 and all(row.latent_fingerprint == pipe.latent_fingerprint for row in rows)
    write_preference_dataset(rows, tmp_path / "pairs", how_made="test")
    ds = train_dpo.load_pairs(str(tmp_path / "pairs"), "train")
    length = pipe.default_audio_length_in_s
    stored = train_dpo.build_cache(pipe, ds, str(tmp_path / "pairs"), length, "mode", tmp_path / "a.safetensors")
    audio_only = ds.remove_columns(train_dpo.LATENT_COLUMNS)
    encoded = train_dpo.build_cache(pipe, audio_only, str(tmp_path / "pairs"), length, "mode", tmp_path / "b.safetensors")
    assert stored["stored_latent_pairs"] == 3 and stored["latent_sources"] == {"stored": 3}
    assert encoded["stored_latent_pairs"] == 0 and encoded["latent_sources"] == {"no stored latents": 3}

    chosen, rejected, embeds, masks = train_dpo.collate([0, 1, 2], stored, torch.Generator().manual_seed(0))
    sampled = torch.from_numpy(np.stack([row.chosen_latent for row in rows]))
    torch.testing.assert_close(chosen, sampled, rtol=1e-5, atol=1e-6)  # exactly what was ranked
    re_encoded, *_ = train_dpo.collate([0, 1, 2], encoded, torch.Generator().manual_seed(0))
    assert ((re_encoded - sampled).norm() / sampled.norm()).item() > 0.05  # the old path trained on other latents

    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    noise = torch.randn(sampled.shape, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([100, 500, 900])
    with torch.no_grad():
        own = denoising_loss(pipe.unet, scheduler, sampled, noise, timesteps, embeds, masks).mean()
        trained = denoising_loss(pipe.unet, scheduler, chosen, noise, timesteps, embeds, masks).mean()
    assert abs(trained / own - 1) < 0.10

    # latents of another latent space (or length) are not used: that row's audio is encoded instead
    other = rows[0].chosen_latent
    assert stored_pair_latents(ds[0] | {"latent_fingerprint": "elsewhere"}, pipe.latent_fingerprint,
                                         other.shape)[1] == "latents of another VAE"
    assert stored_pair_latents(ds[0], pipe.latent_fingerprint, (1, 2, 3))[1] == "latents of another length"


def test_overfitting_is_the_held_out_loss_above_log_2_while_training_accuracy_climbs():
    assert train_dpo.overfitting({"val_loss": 0.75}, [0.6, 0.9])
    assert not train_dpo.overfitting({"val_loss": 0.65}, [0.6, 0.9])  # held-out prompts still improve
    assert not train_dpo.overfitting({"val_loss": 0.75}, [0.5, 0.4])  # nothing learned either
    assert not train_dpo.overfitting({"judge_mean_score": 0.3}, [0.9])  # no held-out pairs, no verdict


def rewrite_cache(cache_file, **changes):
    """The cache file with some tensors (or metadata entries) replaced, as a planted or damaged file would be."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(cache_file), framework="pt") as handle:
        meta = json.loads(handle.metadata()["meta"])
    tensors = load_file(str(cache_file))
    for name, value in changes.items():
        (tensors if name in tensors else meta)[name] = value
    save_file(tensors, str(cache_file), metadata={"meta": json.dumps(meta)})


def test_a_cache_with_non_finite_or_inconsistent_tensors_is_rebuilt(tmp_path, pairs_dir, caplog):
    import torch
    from safetensors.torch import load_file

    pipe = load_pipeline(str(FIXTURE_DIR), device="cpu")
    ds, cache_file = train_dpo.load_pairs(str(pairs_dir), "train"), tmp_path / "pairs.safetensors"
    build = lambda: train_dpo.build_cache(pipe, ds, str(pairs_dir), 0.64, "mode", cache_file)  # noqa: E731
    good = build()
    mean, offsets = good["mean"], good["embed_offsets"]
    plantings = {
        "nan latents": {"mean": torch.full_like(mean, float("nan"))},
        "inf embeddings": {"embeds": torch.full_like(good["embeds"], float("inf"))},
        "fewer latents than rows": {"mean": mean[:2].contiguous(), "std": good["std"][:2].contiguous()},
        "latents of another length": {"mean": mean[..., :8, :].contiguous(), "std": good["std"][..., :8, :].contiguous()},
        "offsets past the embeddings": {"embed_offsets": offsets + 5},
        "offsets out of order": {"embed_offsets": offsets.flip(0).contiguous()},
        "rows without prompts": {"prompts": ["one"]},
    }
    caplog.set_level("WARNING", logger="train_dpo")
    for what, changes in plantings.items():
        rewrite_cache(cache_file, **changes)
        caplog.clear()
        rebuilt = build()
        assert "ignoring unusable cache" in caplog.text, what
        assert torch.equal(rebuilt["mean"], mean) and torch.equal(load_file(str(cache_file))["mean"], mean), what
    caplog.clear()
    assert torch.equal(build()["embed_offsets"], offsets) and not caplog.text  # a sound cache is read as it is


def test_a_non_finite_loss_stops_the_run_before_anything_is_saved(tmp_path, pairs_dir, monkeypatch):
    import torch

    real_collate = train_dpo.collate

    def poisoned(indices, cache, generator):
        latents_w, latents_l, embeds, masks = real_collate(indices, cache, generator)
        return latents_w * float("nan"), latents_l, embeds, masks

    monkeypatch.setattr(train_dpo, "collate", poisoned)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    out = tmp_path / "out"
    with pytest.raises(train_dpo.TrainingDiverged, match="the loss is nan at step 1") as caught:
        train_dpo.main([*FAST, "--dataset", str(pairs_dir), "--output_dir", str(out), "--max_train_steps", "2",
                        "--train_batch_size", "3", "--checkpointing_steps", "1"])
    assert "\n" not in str(caught.value)
    assert not list(out.glob("checkpoint-*")) and not (out / "unet").exists() and not (out / "train_metrics.json").exists()

    unet = torch.nn.Linear(2, 2)
    with torch.no_grad():
        unet.weight[0, 0] = float("inf")
    with pytest.raises(train_dpo.TrainingDiverged, match="1 non-finite UNet weights: not saving best/"):
        train_dpo.check_finite_weights(unet, "best/")


class RecordingUNet(torch.nn.Module):
    """A UNet stand-in that appends the timesteps of each call to ``seen`` and predicts ``weight * noisy``."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, noisy, timesteps, **conditioning):
        self.seen.append(timesteps.clone())
        return SimpleNamespace(sample=noisy * self.weight)


def test_timestep_range_draws_training_timesteps_inside_it_only(tmp_path):
    import contextlib

    from diffusers import DDPMScheduler

    from losses import PreferenceLossConfig

    seen = []
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    latents = torch.randn(64, 2, 4, 4)
    batch = (latents, latents + 1, torch.zeros(64, 3, 8), torch.ones(64, 3))
    unet = RecordingUNet(seen)

    def drawn(timestep_range):
        seen.clear()
        train_dpo.preference_step(PreferenceLossConfig("dpo"), unet, unet, scheduler, batch, torch.Generator().manual_seed(0),
                                  "cpu", contextlib.nullcontext, timestep_range=timestep_range)
        return torch.cat(seen)

    noisy_half, every = drawn((500, 1000)), drawn(None)
    assert noisy_half.min() >= 500 and noisy_half.max() <= 999
    assert every.min() < 500 and every.max() <= 999  # by default the low half too
    assert train_dpo.parse_args(["--dataset", "d", "--output_dir", "o", "--timestep_range", "500", "1000"]
                                ).timestep_range == [500, 1000]
    with pytest.raises(SystemExit):
        train_dpo.parse_args(["--dataset", "d", "--output_dir", "o", "--timestep_range", "900", "100"])


def test_mirror_batches_train_a_pair_with_its_mirror_on_the_same_noise(tmp_path, caplog):
    """A pair and its mirror (the same clips the other way round, for the other order's prompt) share a batch,
    noise and timestep: what the clips differ in then cancels between them."""
    import contextlib

    from diffusers import DDPMScheduler

    from losses import PreferenceLossConfig

    mean = torch.randn(4, 2, 1, 2, 2)
    mean[2] = mean[0].flip(0)  # pair 2 is pair 0's mirror
    assert train_dpo.mirror_units([0, 1, 2, 3], {"mean": mean}) == [[0, 2], [1], [3]]
    assert train_dpo.mirror_units([1, 2, 3], {"mean": mean}) == [[1], [2], [3]]  # its mirror held out

    seen = []

    latents = torch.randn(3, 2, 4, 4)
    batch = (latents, latents + 1, torch.zeros(3, 3, 8), torch.ones(3, 3))
    unet = RecordingUNet(seen)
    _, _, drawn = train_dpo.preference_step(PreferenceLossConfig("dpo"), unet, unet, DDPMScheduler(), batch,
                                            torch.Generator().manual_seed(0), "cpu", contextlib.nullcontext,
                                            groups=[0, 1, 0])
    torch.testing.assert_close(drawn[0], drawn[2])
    assert not torch.allclose(drawn[0], drawn[1])
    timesteps = seen[0][:3]
    assert timesteps[0] == timesteps[2]

    # --mirror_margin: one DPO term per unit, on the sum of its pairs' margins
    from losses import denoising_loss, preference_loss

    policy = RecordingUNet(seen)
    with torch.no_grad():
        policy.weight.fill_(0.5)
    seen.clear()
    loss, _, drawn = train_dpo.preference_step(PreferenceLossConfig("dpo", beta_dpo=10.0), policy, unet, DDPMScheduler(),
                                               batch, torch.Generator().manual_seed(0), "cpu", contextlib.nullcontext,
                                               groups=[0, 1, 0], sum_groups=True)
    steps = seen[0][:3]
    rows = (torch.cat([batch[0], batch[1]]), torch.cat([drawn, drawn]), torch.cat([steps, steps]),
            torch.cat([batch[2], batch[2]]), torch.cat([batch[3], batch[3]]).bool())
    with torch.no_grad():
        (policy_w, policy_l), (ref_w, ref_l) = (denoising_loss(m, DDPMScheduler(), *rows).chunk(2) for m in (policy, unet))
    per_unit = [torch.stack([x[0] + x[2], x[1]]) for x in (policy_w, policy_l, ref_w, ref_l)]
    expected, _ = preference_loss(PreferenceLossConfig("dpo", beta_dpo=10.0), *per_unit)
    torch.testing.assert_close(loss.detach(), expected)
    per_pair, _ = preference_loss(PreferenceLossConfig("dpo", beta_dpo=10.0), policy_w, policy_l, ref_w, ref_l)
    assert not torch.isclose(per_pair, expected)

    # end to end (--mirror_margin implies --mirror_batches): three pairs and their mirrors, two units a batch
    pipe = load_pipeline(str(FIXTURE_DIR), device="cpu")
    shape = train_dpo.expected_latent_shape(pipe, 0.64)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        latents = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
        wavs = [wav_bytes(tone(300 + 50 * i)), wav_bytes(noise(i))]
        for prompt, order in ((f"a tone {i} then a hiss", [0, 1]), (f"a hiss then a tone {i}", [1, 0])):
            rows.append(PreferenceRow(
                prompt=prompt, chosen_wav=wavs[order[0]], rejected_wav=wavs[order[1]], strategy="reordered",
                ranker="judge", chosen_model="a", rejected_model="a", chosen_seed=i, rejected_seed=i,
                num_inference_steps=10, guidance_scale=3.0, votes_for=1, votes_against=0, annotators=1,
                chosen_latent=latents[order[0]], rejected_latent=latents[order[1]],
                latent_fingerprint=pipe.latent_fingerprint))
    write_preference_dataset(rows, tmp_path / "mirrored", how_made="test")
    with caplog.at_level("INFO"):
        _, metrics = run(tmp_path, tmp_path / "mirrored", "--mirror_margin", "--train_batch_size", "2",
                         "--num_train_epochs", "1")
    assert "3 pairs with their mirror, 0 alone" in caplog.text
    assert metrics["steps"] == 2 and metrics["stored_latent_pairs"] == 6
