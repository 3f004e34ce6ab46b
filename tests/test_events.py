"""The event tagger (preference.events): timelines become frame labels and prompt targets, the detector's
probabilities become per-type events, it learns rendered events, and a preference model hears clips through it
(train, save, load, rank, the CLI)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from preference.events import (AUDIO_FEATURES, EventPreferenceHead, EventTagger, TimedClip, frame_labels, load_tagger,
                               log_mel, prompt_targets, rendered_timelines, save_tagger, train_event_tagger)
from preference.reward import PreferenceModel, main
from annotate.validation import InvalidInput
from soundworld import EVENT_TYPES, parse, render
from tests.test_reward import RATE, ranked_store  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def tiny_parts():
    from pipeline import load_pipeline

    pipe = load_pipeline("tiny", device="cpu", dtype=torch.float32)
    return pipe.tokenizer, pipe.text_encoder


def test_a_timeline_becomes_frame_labels_and_a_prompt_its_counts_and_order():
    clip = TimedClip("two knocks then a hiss", np.zeros(RATE), [("knock", 0.1, 0.17), ("knock", 0.5, 0.56),
                                                                ("hiss", 0.8, 0.95)])
    labels = frame_labels(clip, 100, EVENT_TYPES)
    knock, hiss = EVENT_TYPES.index("knock"), EVENT_TYPES.index("hiss")
    assert labels[:, knock].nonzero().flatten().tolist() == [*range(10, 18), *range(50, 57)]
    assert labels[:, hiss].nonzero().flatten().tolist() == list(range(80, 96))
    assert labels.sum() == 8 + 7 + 16  # nothing else sounds

    counts, positions = prompt_targets("two knocks then a hiss", EVENT_TYPES, max_count=3)
    assert counts[knock] == 2 and counts[hiss] == 1 and counts.sum() == 3
    assert positions[knock] == pytest.approx(1 / 3) and positions[hiss] == pytest.approx(2 / 3)
    assert positions.count_nonzero() == 2


def test_the_detectors_probabilities_become_events_per_type(monkeypatch):
    tagger = EventTagger(event_types=list(EVENT_TYPES)).eval()
    beep, siren = EVENT_TYPES.index("beep"), EVENT_TYPES.index("siren")
    probability = torch.zeros(1, 100, len(EVENT_TYPES))
    probability[0, 10:20, beep] = probability[0, 60:70, beep] = 0.9  # two beeps
    probability[0, 40:41, beep] = 0.9  # a one-frame flicker: not an event
    probability[0, 30:50, siren] = 0.8
    logits = torch.logit(probability.clamp(1e-4, 1 - 1e-4))
    monkeypatch.setattr(tagger, "frame_logits", lambda mel: logits)
    events = tagger.audio_events(torch.zeros(1, 100, 64))[0]
    column = {name: i for i, name in enumerate(AUDIO_FEATURES)}
    assert events.shape == (len(EVENT_TYPES), len(AUDIO_FEATURES))
    assert events[beep, column["segments"]] == 2 and events[siren, column["segments"]] == 1
    assert events[beep, column["onsets"]] == pytest.approx(2.7, abs=0.01)  # three rises of 0.9, the flicker too
    assert events[siren, column["first_onset"]] == pytest.approx(30 / 99, abs=1e-4)
    assert events[beep, column["centre"]] < events[siren, column["centre"]] + 0.1  # beeps around the siren
    assert events[EVENT_TYPES.index("hum"), column["first_onset"]] == 1  # never sounds
    assert events[EVENT_TYPES.index("hum"), column["segments"]] == 0


def test_the_tagger_learns_rendered_events_and_reads_prompts_and_round_trips(tiny_parts, tmp_path):
    tokenizer, text_encoder = tiny_parts
    clips = rendered_timelines(240, seed=4)
    assert all(render(c.prompt, 0)[0].shape == c.waveform.shape for c in clips[:3])
    assert [name for name, _, _ in clips[0].events] == parse(clips[0].prompt).instances
    tagger, report = train_event_tagger(clips, tokenizer, text_encoder, epochs=4, text_epochs=40, batch_size=8,
                                        progress=False)
    assert report.frame_f1 > 0.6  # an untrained detector calls no frame right (F1 about 0.05)
    assert report.position_error < 0.15 and report.validation_captions >= 1

    save_tagger(tagger, report, tmp_path / "tagger")
    reloaded, reloaded_report = load_tagger(tmp_path / "tagger")
    mel = log_mel([clips[0].waveform])
    assert torch.allclose(reloaded.audio_events(mel), tagger.audio_events(mel))
    assert reloaded_report == report
    with pytest.raises(InvalidInput, match="not an event tagger"):
        load_tagger(tmp_path)


def test_the_event_head_scores_each_clip_against_its_prompt_once_encoded():
    head = EventPreferenceHead(n_types=len(EVENT_TYPES)).eval()
    audio, text = torch.randn(2, len(EVENT_TYPES), 5), torch.randn(3, len(EVENT_TYPES), 5).abs()
    mask = torch.ones(3, len(EVENT_TYPES), dtype=torch.bool)
    with torch.no_grad():
        shared = head(audio, mask[:2], text, mask, torch.tensor([0, 1, 0]))
        one_by_one = [head(audio[[a]], mask[:1], text[[b]], mask[:1]) for b, a in enumerate([0, 1, 0])]
    assert shared.shape == (3,) and torch.allclose(shared, torch.cat(one_by_one), atol=1e-5)


def test_a_preference_model_hears_clips_through_the_tagger(ranked_store, tmp_path, capsys):  # noqa: F811
    assert main(["tagger", "--world", "40", "--epochs", "1", "--round-trip-share", "0.25",
                 "--out", str(tmp_path / "tagger")]) == 0
    out = capsys.readouterr().out
    assert "rendered clips of 39 captions" in out  # 40 draws, 39 distinct captions
    data_dir = str(ranked_store.data_dir)
    assert main(["train", "--data-dir", data_dir, "--tagger", str(tmp_path / "tagger"), "--out", str(tmp_path / "m"),
                 "--epochs", "2"]) == 0
    model = PreferenceModel.from_pretrained(tmp_path / "m")
    assert isinstance(model.head, EventPreferenceHead) and model.vae is None and not (tmp_path / "m" / "vae").exists()
    assert model.report.reads_through.startswith("an event tagger trained on ")
    assert "rendered clips of 39 captions (25% of them also through" in model.report.reads_through
    assert "Hears clips through: an event tagger" in (tmp_path / "m" / "README.md").read_text()
    assert json.loads((tmp_path / "m" / "training.json").read_text())["comparisons"] == 48

    prompt = "a siren followed by a hiss"
    clips = np.stack([render(prompt, 1)[0], render("three knocks", 1)[0]])
    scores = model(clips, RATE, prompt)
    assert len(scores) == 2 and all(np.isfinite(scores))
    tagger, _ = load_tagger(tmp_path / "tagger")
    trained_here = PreferenceModel(model.head, model.tokenizer, model.text_encoder, tagger=tagger)
    assert trained_here(clips, RATE, prompt) == pytest.approx(scores, abs=1e-5)  # the saved copy is the tagger
    torch.nn.init.zeros_(tagger.frame_out.weight)
    assert trained_here.identity != model.identity  # other tagger weights: another scorer

    # The app ranks with it and says what it hears through.
    from studio import Studio, parse_config
    from studio.generation import LoadedModel

    data = tmp_path / "data"
    shutil.copytree(ranked_store.data_dir, data)
    studio = Studio(parse_config(["--data-dir", str(data), "--reward-model", str(tmp_path / "m")], {}),
                    models=[LoadedModel("base", "Base", "none-a", None, "not loaded in this test")])
    try:
        assert studio.ranker.identity == model.identity
        assert all(clip.auto_score is not None for clip in studio.store.candidates().values())
        assert "hears clips through an event tagger trained on " in studio.ranker_summary()
    finally:
        studio.close()

    with pytest.raises(SystemExit):  # a head over a tagger cannot go on from a latent head
        main(["train", "--data-dir", data_dir, "--tagger", str(tmp_path / "tagger"), "--init", str(tmp_path / "m"),
              "--out", str(tmp_path / "x")])
    assert main(["train", "--data-dir", data_dir, "--tagger", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not an event tagger" in capsys.readouterr().err
