"""The tiny-model recipe runs end to end at toy size, writes a loadable pipeline, and resumes."""

import json

import pytest

from pipeline import TangoPipeline, load_pipeline
from soundworld import train_tiny

TOY = ["--num_clips=24", "--workers=1", "--vae_steps=2", "--vae_batch_size=4", "--batch_size=4", "--eval_prompts=4",
       "--sample_steps=2", "--curriculum_steps=1", "--warmup_steps=1", "--checkpoint_interval=2",
       "--unet_channels=32,32,32", "--text_dim=32", "--vocab_size=120", "--text_steps=2", "--text_batch_size=8",
       "--vae_crop_frames=64"]


def test_toy_run_writes_a_pipeline_and_resumes(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    train_tiny.main([*TOY, f"--work_dir={work}", f"--out_dir={out}", "--train_steps=2", "--eval_interval=2"])
    pipe = load_pipeline(str(out), device="cpu")
    assert isinstance(pipe, TangoPipeline) and type(pipe.vocoder).__name__ == "GriffinLimVocoder"
    assert pipe.default_audio_length_in_s == pytest.approx(3.84)
    assert type(pipe.unet).__name__ == "TimePositionUNet"  # the model adds its own time-position maps
    assert pipe.unet.config.in_channels == 8 + train_tiny.position_channels
    assert pipe.config.default_num_inference_steps == 2
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert [e["step"] for e in metrics["eval"]] == [2] and metrics["vae"]
    assert {"prompt", "heard"} <= set(metrics["eval"][0]["examples"][0])
    assert {"event_recall", "extra_events_per_clip", "order_accuracy"} <= set(metrics["eval"][0]["test"])
    assert (out / "training_curves.png").stat().st_size > 0
    assert "extra_events_per_clip" in metrics["vae_ceiling"]
    assert metrics["text"] and 0 <= metrics["text_slots_exact_heldout"] <= 1

    # Asked for more steps, the run picks up the diffusion checkpoint instead of starting over.
    train_tiny.main([*TOY, f"--work_dir={work}", f"--out_dir={out}", "--train_steps=4", "--eval_interval=2"])
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert [e["step"] for e in metrics["eval"]] == [2, 4]


def test_unknown_knobs_are_refused():
    with pytest.raises(SystemExit, match="unknown knob"):
        train_tiny.apply_overrides(["--no_such_knob=1"])
    with pytest.raises(SystemExit, match="--name=value"):
        train_tiny.apply_overrides(["train_steps=3"])
    assert train_tiny.apply_overrides(["--train_steps=3"])["train_steps"] == 3
