"""The machine annotator: best vs worst by the judge (or CLAP), the margin filter, the dataset it writes."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

import annotate.autorank as autorank
from annotate.autorank import AutorankReport, ClapRanker, JudgeRanker, autorank_pairs, ranked_pairs
from annotate.dataset import write_preference_dataset
from soundworld import render
from tests.conftest import FIXTURE_DIR

GOOD_PROMPTS = ["a rising chirp then two knocks", "a siren followed by a hiss"]
TIED_PROMPT = "a low hum"


class RenderGenerator:
    """Clip 0 of each prompt follows it; the others render a different prompt; a tied prompt gets k copies."""

    sampling_rate = 16000
    default_steps = 7

    def __call__(self, prompts, seeds, steps, guidance):
        clips = []
        for j, prompt in enumerate(prompts):
            first = prompts.index(prompt)  # a prompt's clips come together; render all with its first seed
            text = prompt if (j == first or prompt == TIED_PROMPT) else "three clicks"
            clips.append(render(text, seeds[first])[0])
        return np.stack(clips)


def test_best_and_worst_by_the_judge_and_the_margin_filter(tmp_path):
    report = AutorankReport()
    rows = list(autorank_pairs(GOOD_PROMPTS + [TIED_PROMPT], RenderGenerator(), JudgeRanker(), model="m", k=3,
                               seed=7, min_margin=0.25, report=report))
    assert (report.prompts, report.pairs, report.below_margin) == (3, 2, 1)
    for row, prompt in zip(rows, GOOD_PROMPTS):
        assert row.prompt == prompt and row.strategy == "judge-rank" and row.chosen_seed == 7
        chosen, rate = sf.read(io.BytesIO(row.chosen_wav), dtype="float32")
        assert rate == 16000
        np.testing.assert_array_equal(chosen, render(prompt, 7)[0])

    write_preference_dataset(rows, tmp_path / "pairs", how_made="test")
    from datasets import load_dataset

    ds = load_dataset(str(tmp_path / "pairs"), split="train")
    assert len(ds) == 2 and set(ds["strategy"]) == {"judge-rank"}
    assert {"prompt", "chosen", "rejected", "strategy", "pair_id", "votes_for"} <= set(ds.column_names)


def test_k_below_two_is_refused():
    with pytest.raises(ValueError, match="`k`"):
        list(autorank_pairs(GOOD_PROMPTS, RenderGenerator(), JudgeRanker(), model="m", k=1))


def test_cli_writes_a_dataset_and_says_when_nothing_passes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(autorank, "PipelineGenerator", lambda spec: RenderGenerator())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# prompts\n" + "\n".join(GOOD_PROMPTS) + "\n")
    assert autorank.main(["--prompts", str(prompts), "--k", "2", "--out", str(tmp_path / "out")]) == 0
    assert "2 pairs from 2 prompts" in capsys.readouterr().out
    assert (tmp_path / "out" / "data").is_dir()
    prompts.write_text(TIED_PROMPT + "\n")
    assert autorank.main(["--prompts", str(prompts), "--k", "2", "--out", str(tmp_path / "out2")]) == 1
    assert "no pair passed the margin" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def tiny_clap(folder):
    """A random CLAP small enough for a test, saved the way a Hub checkpoint is."""
    from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE_DIR / "flan-t5-tiny")
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer) + 4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, projection_dim=16, pad_token_id=0),
        audio_config=dict(spec_size=256, num_mel_bins=64, window_size=8, patch_size=4, patch_stride=(4, 4),
                          patch_embeds_hidden_size=16, hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
                          projection_dim=16, enable_fusion=False),
        projection_dim=16,
    )
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ClapFeatureExtractor(feature_size=64, sampling_rate=48000, truncation="rand_trunc").save_pretrained(folder)


def test_clap_ranker_loads_a_checkpoint_and_scores_each_clip(tmp_path):
    tiny_clap(tmp_path / "clap")
    ranker = ClapRanker.from_pretrained(str(tmp_path / "clap"), device="cpu")
    clips = np.stack([render(p, 0)[0] for p in GOOD_PROMPTS + [TIED_PROMPT]])
    scores = ranker(clips, 16000, GOOD_PROMPTS[0])
    assert len(scores) == 3 and all(-1.0 <= s <= 1.0 for s in scores)
    assert scores == ranker(clips, 16000, GOOD_PROMPTS[0])  # deterministic
    assert len(set(np.round(scores, 6))) == 3  # different clips, different scores
    rows = list(autorank_pairs(GOOD_PROMPTS[:1], RenderGenerator(), ranker, model="m", k=2, min_margin=0.0))
    assert rows and rows[0].strategy == "clap-rank"


def test_ranked_pairs_best_worst_and_all_by_hand():
    scores = [0.5, 0.9, 0.1, 0.6]
    assert ranked_pairs(scores, 0.25) == [(1, 2)]
    # all: every two clips at least 0.25 apart, the better chosen: 0.9>0.5, 0.9>0.1, 0.5>0.1, 0.6>0.1 (0.9-0.6=0.3 too)
    assert sorted(ranked_pairs(scores, 0.25, "all")) == sorted([(1, 0), (1, 2), (1, 3), (0, 2), (3, 2)])
    assert ranked_pairs([0.4, 0.5], 0.25, "all") == []
    with pytest.raises(ValueError, match="pairing"):
        ranked_pairs(scores, 0.25, "some")


def test_all_pairings_give_more_rows_from_the_same_candidates():
    best_worst, every = AutorankReport(), AutorankReport()
    one = list(autorank_pairs(GOOD_PROMPTS, RenderGenerator(), JudgeRanker(), model="m", k=3, seed=7,
                              min_margin=0.0, report=best_worst))
    many = list(autorank_pairs(GOOD_PROMPTS, RenderGenerator(), JudgeRanker(), model="m", k=3, seed=7,
                               min_margin=0.0, report=every, pairing="all"))
    assert len(one) == len(GOOD_PROMPTS) and len(many) == 3 * len(GOOD_PROMPTS) == every.pairs
    assert all(row.chosen_seed != row.rejected_seed for row in many)
