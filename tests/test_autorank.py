"""The machine annotator: best vs worst by the judge (or CLAP), the margin filter, the dataset it writes."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

import autopairs.autorank as autorank
from autopairs.autorank import AutorankReport, ClapRanker, JudgeRanker, autorank_pairs, ranked_pairs
from preference_data.dataset import write_preference_dataset
from soundworld.perturb import Perturbation
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
        assert row.prompt == prompt and row.strategy == "inference" and row.ranker == "judge" and row.chosen_seed == 7
        chosen, rate = sf.read(io.BytesIO(row.chosen_wav), dtype="float32")
        assert rate == 16000
        np.testing.assert_array_equal(chosen, render(prompt, 7)[0])

    write_preference_dataset(rows, tmp_path / "pairs", how_made="test")
    from datasets import load_dataset

    ds = load_dataset(str(tmp_path / "pairs"), split="train", download_mode="force_redownload",
                      verification_mode="no_checks")  # a cached build of an earlier test's pairs would answer
    assert len(ds) == 2 and set(ds["strategy"]) == {"inference"} and set(ds["ranker"]) == {"judge"}
    assert {"prompt", "chosen", "rejected", "strategy", "pair_id", "votes_for"} <= set(ds.column_names)


def test_k_below_two_is_refused():
    with pytest.raises(ValueError, match="`k`"):
        list(autorank_pairs(GOOD_PROMPTS, RenderGenerator(), JudgeRanker(), model="m", k=1))


def test_cli_writes_a_dataset_and_says_when_nothing_passes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("annotate.pool.PipelineGenerator", lambda spec: RenderGenerator())  # main imports it on use
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# prompts\n" + "\n".join(GOOD_PROMPTS) + "\n")
    assert autorank.main(["--prompts", str(prompts), "--k", "2", "--out", str(tmp_path / "out")]) == 0
    assert "2 pairs (2 inference; 0 with latents) from 2 prompts" in capsys.readouterr().out
    assert (tmp_path / "out" / "data").is_dir()
    prompts.write_text(TIED_PROMPT + "\n")
    assert autorank.main(["--prompts", str(prompts), "--k", "2", "--out", str(tmp_path / "out2")]) == 1
    assert "no pair passed the filter" in capsys.readouterr().err and not (tmp_path / "out2").exists()


class SoundWorldRenderGenerator(RenderGenerator):
    """A sound-world model (as ``tiny``): it reads only the sound world's grammar."""

    reads_only_the_sound_world = True
    calls = 0

    def __call__(self, prompts, seeds, steps, guidance):
        type(self).calls += 1
        return super().__call__(prompts, seeds, steps, guidance)


def test_prompts_a_sound_world_model_cannot_read_are_refused_before_any_clip(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("annotate.pool.PipelineGenerator", lambda spec: SoundWorldRenderGenerator())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(GOOD_PROMPTS[0] + "\na dog barks\n")
    assert autorank.main(["--prompts", str(prompts), "--k", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown word 'dog'" in err and "9 sounds" in err
    assert SoundWorldRenderGenerator.calls == 0 and not (tmp_path / "out").exists()
    # the same for a prompt of a perturbations table (as train_rounds passes one)
    table = {GOOD_PROMPTS[0]: [Perturbation(strategy="perturbed", prompt="a cat meows", change="made up")]}
    with pytest.raises(ValueError, match="unknown word 'cat'"):
        list(autorank_pairs([GOOD_PROMPTS[0]], SoundWorldRenderGenerator(), JudgeRanker(), model="tiny", k=2,
                            strategies=["inference", "perturbed"], perturbations=table))


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
    assert rows and rows[0].strategy == "inference" and rows[0].ranker == "clap"


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


class FollowingGenerator:
    """Renders each prompt as asked (clip seeded as given), with a stand-in latent per clip holding its seed: a model
    that follows its prompt, so clips of perturbed prompts miss what the original prompt asks for."""

    sampling_rate = 16000
    default_steps = 7

    def __call__(self, prompts, seeds, steps, guidance):
        from annotate.pool import GeneratedClips

        waveforms = np.stack([render(p, s)[0] for p, s in zip(prompts, seeds)])
        latents = np.stack([np.full((2, 4, 3), s, np.float32) for s in seeds])
        return GeneratedClips(waveforms, latents, "vae-1")


def test_three_strategies_make_contrasts_the_judge_ranks_against_the_original_prompt(tmp_path):
    from soundworld import judge, parse, sample_prompts

    prompts = [p for p in sample_prompts("train", 24, 3) if len(parse(p).events) >= 2][:6]
    report = AutorankReport()
    rows = list(autorank_pairs(prompts, FollowingGenerator(), JudgeRanker(), model="m", k=2, seed=11, min_margin=0.2,
                               strategies=("inference", "perturbed", "temporal"), report=report))
    kinds = {row.strategy for row in rows}
    assert {"perturbed", "temporal"} <= kinds and report.pairs == len(rows)
    for row in rows:
        chosen = sf.read(io.BytesIO(row.chosen_wav), dtype="float32")[0]
        rejected = sf.read(io.BytesIO(row.rejected_wav), dtype="float32")[0]
        # scored against the original prompt, the chosen clip is the better one
        assert judge(chosen, 16000, row.prompt).score > judge(rejected, 16000, row.prompt).score
        assert row.chosen_prompt == row.prompt
        if row.strategy == "inference":
            assert row.rejected_prompt == row.prompt
        else:  # the loser was generated from a perturbed prompt, kept in the row
            assert row.rejected_prompt != row.prompt and row.rejected_seed >= 11 + 2
        assert row.latent_fingerprint == "vae-1" and row.rejected_latent[0, 0, 0] == row.rejected_seed
    for row in [row for row in rows if row.strategy == "temporal"]:  # same events, another order
        original, perturbed = parse(row.prompt).events, parse(row.rejected_prompt).events
        assert sorted(original) == sorted(perturbed) and original != perturbed

    write_preference_dataset(rows, tmp_path / "pairs", how_made="test")
    from datasets import load_dataset

    from preference_data.latents import latent_from_bytes

    ds = load_dataset(str(tmp_path / "pairs"), split="train", download_mode="force_redownload",
                      verification_mode="no_checks")
    assert set(ds["strategy"]) == kinds and ds[0]["latent_fingerprint"] == "vae-1"
    np.testing.assert_array_equal(latent_from_bytes(ds[0]["chosen_latent"]), rows[0].chosen_latent)


def test_pair_filter_is_tango2s_band():
    keep = autorank.PairFilter(min_margin=0.2, max_margin=0.6, min_chosen_score=0.7, max_rejected_score=0.4)
    assert keep(0.8, 0.3)
    assert not keep(0.8, 0.7)  # gap too small
    assert not keep(1.0, 0.3)  # gap too large (0.7)
    assert not keep(0.65, 0.3)  # winner below its bar
    assert not keep(0.9, 0.45)  # loser above its bar
    # best (0.8) vs worst (0.1): gap 0.7 > 0.6, so the closest loser in the band is the hard negative
    assert ranked_pairs([0.8, 0.3, 0.1], keep) == [(0, 1)]
    assert ranked_pairs([0.8, 0.75, 0.1], keep) == []  # nothing in the band


def test_perturbations_file_replaces_the_built_in_perturber(tmp_path):
    table = tmp_path / "perturbations.jsonl"
    table.write_text('{"prompt": "a rising chirp then two knocks", "temporal": ["two knocks then a rising chirp"]}\n')
    from soundworld.perturb import load_perturbations

    rows = list(autorank_pairs(["a rising chirp then two knocks"], FollowingGenerator(), JudgeRanker(), model="m",
                               k=2, min_margin=0.0, strategies=("temporal",), perturbations=load_perturbations(table)))
    assert [row.rejected_prompt for row in rows] == ["two knocks then a rising chirp"]


def test_unknown_strategy_is_refused(capsys):
    with pytest.raises(ValueError, match="strategies"):
        list(autorank_pairs(GOOD_PROMPTS, RenderGenerator(), JudgeRanker(), model="m", strategies=("vibes",)))
    with pytest.raises(SystemExit):
        autorank.main(["--prompts", "train", "--out", "x", "--strategies", "inference,vibes"])
    assert "strategies must be" in capsys.readouterr().err
