"""The preference model learned from votes (preference.reward): comparisons from rankings, Bradley-Terry training that
generalises to unseen prompts, save/load, the CLI, and `--ranker reward:PATH` feeding train_dpo.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

import autopairs.autorank as autorank
from annotate import Store
from soundworld.perturb import perturb
from preference.reward import (Comparison, Comparisons, PreferenceModel, caption_contrast_loss, comparisons_from_rankings,
                               comparisons_from_store, evaluate, main, sound_world_captions, train_preference_model)
from soundworld import parse, render, sample_prompts
from soundworld.grammar import MAX_INSTANCES
from tests.test_autorank import RenderGenerator
from train_dpo import split_validation

RATE = 16000


def noise_clip(seed: int, seconds: float = 3.84) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def event_clip(prompt: str, seed: int) -> np.ndarray:
    return render(prompt, seed)[0].astype(np.float32)


@pytest.fixture(scope="module")
def ranked_store(tmp_path_factory):
    """24 prompts, each a task of three clips: the prompt's events (ranked first) and two noise clips (tied last)."""
    store = Store(tmp_path_factory.mktemp("reward-store"))
    for p, prompt in enumerate(dict.fromkeys(sample_prompts("train", 40, seed=3))):
        if p == 24:
            break
        clips = [event_clip(prompt, p), noise_clip(2 * p), noise_clip(2 * p + 1)]
        ids = [store.add_candidate(prompt, clip, model="m", seed=j, steps=1, guidance=1.0, sample_rate=RATE).id
               for j, clip in enumerate(clips)]
        task = store.add_task(ids)
        shown = store.next_task("ann")
        assert shown.id == task
        store.submit("ann", task, {ids[0]: 1, ids[1]: 2, ids[2]: 2})
    return store


def test_every_usable_ranking_gives_its_strict_preferences_ties_skips_and_all_bad_none():
    from annotate.store import Ranking

    def ranking(ranks, **flags):
        return Ranking(id=0, task_id=7, annotator="a", ranks=ranks, all_bad=flags.get("all_bad", False),
                       skipped=flags.get("skipped", False), shown_order=list(ranks), play_counts={},
                       time_spent_s=None, created_at=0.0)

    rankings = [ranking({"x": 1, "y": 2, "z": 2}), ranking({"x": None, "y": None}, skipped=True),
                ranking({"x": None, "y": None}, all_bad=True), ranking({"x": 2, "y": 1})]
    assert comparisons_from_rankings(rankings, {7: "p"}) == [
        Comparison("p", "x", "y"), Comparison("p", "x", "z"), Comparison("p", "y", "x")]


def test_the_store_rankings_become_comparisons_with_their_audio(ranked_store):
    comparisons = comparisons_from_store(ranked_store)
    assert len(comparisons.items) == 2 * 24 and len(comparisons.prompts) == 24  # first beats each tied noise clip
    assert all(comparisons.audio[c.better].std() > 0 for c in comparisons.items)


def test_a_model_trained_on_rankings_ranks_unseen_prompts_and_round_trips(ranked_store, tmp_path):
    comparisons = comparisons_from_store(ranked_store)
    train_index, held_index = split_validation([c.prompt for c in comparisons.items], 0.25, seed=0)
    held_prompts = list(dict.fromkeys(comparisons.items[i].prompt for i in held_index))
    train_items = Comparisons([comparisons.items[i] for i in train_index], comparisons.audio)
    model = train_preference_model(train_items, epochs=12, validation_fraction=0.2,
                                   progress=False, source="test rankings")
    history = model.report.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Unseen prompts, fresh clips: the prompt's events beat noise.
    unseen = Comparisons([], {})
    for i, prompt in enumerate(held_prompts):
        unseen.audio[f"good{i}"], unseen.audio[f"bad{i}"] = event_clip(prompt, 100 + i), noise_clip(100 + i)
        unseen.items.append(Comparison(prompt, f"good{i}", f"bad{i}"))
    result = evaluate(model, unseen)
    assert result["accuracy"] >= 0.8 and result["pairs"] == len(held_prompts)
    assert result["interval"][0] <= result["accuracy"] <= result["interval"][1]

    model.save_pretrained(tmp_path / "model")
    reloaded = PreferenceModel.from_pretrained(tmp_path / "model")
    clips = np.stack([unseen.audio["good0"], unseen.audio["bad0"]])
    assert reloaded(clips, RATE, held_prompts[0]) == pytest.approx(model(clips, RATE, held_prompts[0]), abs=1e-5)
    # Another rate is resampled, not misread: half the samples at 8 kHz are the same clip.
    assert reloaded(clips[:, ::2], 8000, held_prompts[0])[0] > reloaded(clips[:, ::2], 8000, held_prompts[0])[1]
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"{model.report.comparisons} comparisons on {model.report.prompts} prompts from test rankings" in card
    assert json.loads((tmp_path / "model" / "training.json").read_text())["best_epoch"] >= 1


def test_cli_trains_and_evaluates_on_a_store_and_refuses_what_it_cannot_use(ranked_store, tmp_path, capsys):
    data_dir = str(ranked_store.data_dir)
    assert main(["train", "--data-dir", data_dir, "--out", str(tmp_path / "m"), "--epochs", "2"]) == 0
    assert "trained on 48 comparisons (24 prompts)" in capsys.readouterr().out
    assert main(["evaluate", "--data-dir", data_dir, "--model", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pairs"] == 48
    assert main(["train", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "no annotation store" in capsys.readouterr().err
    assert main(["evaluate", "--data-dir", data_dir, "--model", str(tmp_path)]) == 2
    assert "not a preference model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        autorank.main(["--prompts", "train", "--out", str(tmp_path / "o"), "--ranker", f"reward:{tmp_path}"])
    assert "not a preference model folder" in capsys.readouterr().err


def test_caption_contrast_loss_by_hand():
    import torch

    # own 1 against one contrast clip (0) and one contrast caption (0): 2 log(1 + e^-1)
    # own 0 against clips (0, 0) and one caption (1): log 3 + log(1 + e)
    loss = caption_contrast_loss(torch.tensor([1.0, 0.0]), torch.tensor([[0.0, -torch.inf], [0.0, 0.0]]),
                                 torch.tensor([[0.0, -torch.inf], [1.0, -torch.inf]]))
    assert loss.tolist() == pytest.approx([2 * np.log(1 + np.exp(-1)), np.log(3) + np.log(1 + np.e)], abs=1e-6)


def test_sound_world_captions_contrast_each_clip_with_clips_of_its_perturbed_captions():
    captions = sound_world_captions(12, contrasts=3, seed=5)
    assert captions.prompts == list(dict.fromkeys(sample_prompts("train", 12, seed=5)))
    for group in captions.groups:
        options = perturb(group.prompt)
        events = parse(group.prompt).events
        contrasts = [parse(prompt).events for prompt, _ in group.contrasts]
        assert len(contrasts) == min(3, len(options)) and events not in contrasts
        reordered = [sorted(c) == sorted(events) for c in contrasts]  # the same events in another order
        assert reordered[:1] == [any(p.strategy == "temporal" for p in options)] and not any(reordered[1:])
        for key in (group.clip, *(clip for _, clip in group.contrasts)):
            assert captions.audio[key].std() > 0
    with_added = sound_world_captions(12, contrasts=3, seed=5, added_event=True)
    for group in with_added.groups:
        events = parse(group.prompt).events
        contrasts = [parse(prompt).events for prompt, _ in group.contrasts]
        added = [c for c in contrasts if len(c) == len(events) + 1 and all(e in c for e in events)]
        assert len(added) == (len(events) < 3 and sum(n for _, n in events) < MAX_INSTANCES)  # where the grammar allows
    evaluated = set(captions.prompts[::3])  # prompts a model will be evaluated on are never captions
    assert sound_world_captions(12, contrasts=3, seed=5, exclude=evaluated).prompts == [
        prompt for prompt in captions.prompts if prompt not in evaluated]


def test_captioned_clips_through_the_generators_vae_and_vocoder_keep_their_events():
    import torch

    from pipeline import load_pipeline
    from soundworld import judge

    plain = sound_world_captions(3, seed=8)
    through = sound_world_captions(3, seed=8, through=load_pipeline("tiny", device="cpu", dtype=torch.float32))
    for group in through.groups:
        before, after = plain.audio[group.clip], through.audio[group.clip]
        assert after.shape == before.shape and not np.allclose(after, before, atol=1e-3)  # Griffin-Lim's clip now
        assert judge(after, RATE, group.prompt).event_recall == 1.0


def test_a_model_pretrained_on_captions_goes_on_to_learn_from_rankings(ranked_store, tmp_path, capsys):
    assert main(["pretrain", "--world", "40", "--epochs", "2", "--out", str(tmp_path / "pre")]) == 0
    assert "held-out captions" in capsys.readouterr().out
    pretrained = PreferenceModel.from_pretrained(tmp_path / "pre")
    assert pretrained.report.validation_accuracy is not None and pretrained.report.epochs_run == 2

    data_dir = str(ranked_store.data_dir)
    assert main(["train", "--data-dir", data_dir, "--init", str(tmp_path / "pre"), "--out", str(tmp_path / "m"),
                 "--epochs", "3"]) == 0
    tuned = PreferenceModel.from_pretrained(tmp_path / "m")
    assert tuned.report.pretrained_on == pretrained.report.source
    assert f"Pretrained on: {pretrained.report.source}" in (tmp_path / "m" / "README.md").read_text()
    # it went on from the pretrained head (same shape, moved weights), not from a fresh one
    before, after = pretrained.head.state_dict(), tuned.head.state_dict()
    assert before.keys() == after.keys() and any(not np.allclose(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="keeps its head"):
        train_preference_model(comparisons_from_store(ranked_store), init=pretrained, width=32, progress=False)
    assert main(["train", "--data-dir", data_dir, "--init", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a preference model folder" in capsys.readouterr().err


def test_autorank_with_a_learned_ranker_writes_pairs_train_dpo_trains_on(ranked_store, tmp_path, monkeypatch, capsys):
    import train_dpo
    from tests.test_train_dpo import FAST

    assert main(["train", "--data-dir", str(ranked_store.data_dir), "--out", str(tmp_path / "m"), "--epochs", "3"]) == 0
    monkeypatch.setattr("annotate.pool.PipelineGenerator", lambda spec: RenderGenerator())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a rising chirp then two knocks\na siren followed by a hiss\n")
    assert autorank.main(["--prompts", str(prompts), "--k", "3", "--ranker", f"reward:{tmp_path / 'm'}",
                          "--min-margin", "0", "--out", str(tmp_path / "pairs")]) == 0
    from datasets import load_dataset

    rows = load_dataset(str(tmp_path / "pairs"), split="train", download_mode="force_redownload",
                        verification_mode="no_checks")
    assert len(rows) == 2 and set(rows["ranker"]) == {"reward"}
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    out = tmp_path / "tuned"
    assert train_dpo.main([*FAST, "--dataset", str(tmp_path / "pairs"), "--output_dir", str(out),
                           "--max_train_steps", "2", "--train_batch_size", "2"]) == 0
    assert json.loads((out / "train_metrics.json").read_text())["pairs"] == 2


def test_the_app_ranks_with_the_owners_preference_model_and_says_what_it_learned_from(ranked_store, tmp_path):
    """--reward-model: the model scores every stored clip (the automatic verdict, informative-first) and the Dataset
    tab says when it was trained, on what, and how well it does on held-out prompts; a wrong folder stops the start."""
    from studio import Studio, parse_config
    from studio.generation import LoadedModel

    assert main(["train", "--data-dir", str(ranked_store.data_dir), "--out", str(tmp_path / "m"), "--epochs", "2"]) == 0
    data = tmp_path / "data"
    shutil.copytree(ranked_store.data_dir, data)
    config = parse_config(["--data-dir", str(data), "--reward-model", str(tmp_path / "m")], {})
    studio = Studio(config, models=[LoadedModel("base", "Base", "none-a", None, "not loaded in this test")])
    try:
        assert studio.ranker.name == "reward"
        scores = [clip.auto_score for clip in studio.store.candidates().values()]
        assert len(scores) == 72 and all(score is not None for score in scores)
        summary = studio.ranker_summary()
        assert "preference model trained" in summary and "on 48 comparisons (24 prompts" in summary
        first_scorer = studio.ranker.identity
    finally:
        studio.close()
    # The owner retrains the model: the next start rescores every clip with it, no score of the old one is kept.
    assert main(["train", "--data-dir", str(ranked_store.data_dir), "--out", str(tmp_path / "m2"), "--epochs", "1",
                 "--seed", "1"]) == 0
    config = parse_config(["--data-dir", str(data), "--reward-model", str(tmp_path / "m2")], {})
    studio = Studio(config, models=[LoadedModel("base", "Base", "none-a", None, "not loaded in this test")])
    try:
        clips = list(studio.store.candidates().values())
        assert studio.ranker.identity != first_scorer
        assert {clip.auto_scorer for clip in clips} == {studio.ranker.identity}
        samples, rate = sf.read(clips[0].audio_path, dtype="float32")
        assert clips[0].auto_score == pytest.approx(studio.ranker(samples[None], rate, clips[0].prompt)[0], abs=1e-5)
    finally:
        studio.close()
    with pytest.raises(SystemExit):
        parse_config(["--reward-model", str(tmp_path)], {})


@pytest.fixture(scope="module")
def saved_model(ranked_store, tmp_path_factory):
    """A preference model trained for one epoch and saved: the folder the planted ones are copied from."""
    folder = tmp_path_factory.mktemp("saved") / "model"
    assert main(["train", "--data-dir", str(ranked_store.data_dir), "--out", str(folder), "--epochs", "1"]) == 0
    return folder


def plant(folder, tmp_path, damage: str):
    """A copy of a saved preference model with one thing wrong; returns (folder, the file a refusal must name)."""
    planted = tmp_path / f"planted-{damage}"
    shutil.copytree(folder, planted)
    weights = next((planted / "reward").glob("*.safetensors"))
    if damage == "bad-json":
        (planted / "reward" / "config.json").write_text('{"_class_name": "PreferenceHead",')
        return planted, planted / "reward" / "config.json"
    if damage == "unknown-key":
        record = json.loads((planted / "training.json").read_text())
        (planted / "training.json").write_text(json.dumps({**record, "evil": 1}))
        return planted, planted / "training.json"
    if damage == "pickle":
        weights.unlink()
        (planted / "reward" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04crandom\n_urandom\n.")
        return planted, planted / "reward" / "diffusion_pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated weights
    return planted, planted


@pytest.mark.parametrize("damage", ["bad-json", "unknown-key", "pickle", "truncated"])
def test_a_planted_or_damaged_model_folder_is_refused_in_one_line_naming_the_file(saved_model, ranked_store,
                                                                                    tmp_path, capsys, damage):
    """The attack: bad JSON, an unknown training.json key or pickle weights ended preference.reward (and app.py) with a
    traceback, e.g. `TypeError: TrainingReport.__init__() got an unexpected keyword argument 'evil'`."""
    planted, culprit = plant(saved_model, tmp_path, damage)
    assert main(["evaluate", "--data-dir", str(ranked_store.data_dir), "--model", str(planted)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"error: {culprit}") and "Traceback" not in err
    if damage != "truncated":  # refused before anything loads (truncated weights: the loaders' progress bars first)
        assert len(lines) == 1
    assert autorank.main(["--prompts", "train", "--n", "1", "--out", str(tmp_path / "o"),
                          "--ranker", f"reward:{planted}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == lines[-1]


def test_the_app_refuses_a_planted_reward_model_with_exit_2_and_one_line(saved_model, tmp_path):
    import subprocess
    import sys

    planted, culprit = plant(saved_model, tmp_path, "bad-json")
    run = subprocess.run([sys.executable, "app.py", "--reward-model", str(planted), "--data-dir", str(tmp_path / "d"),
                          "--port", "0"], capture_output=True, text=True, timeout=300,
                         cwd=__import__("pathlib").Path(__file__).parents[1])
    assert run.returncode == 2 and run.stderr.startswith(f"error: {culprit}: not valid JSON")
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "d").exists()  # before anything loads


def test_a_tagger_folder_with_pickle_weights_or_a_planted_record_is_refused_naming_the_file(tmp_path):
    from preference.events import TRAINING_FILE, load_tagger
    from annotate.validation import UnusableModelFolder

    (tmp_path / "config.json").write_text('{"_class_name": "EventTagger"}')
    (tmp_path / TRAINING_FILE).write_text('{"evil": 1}')
    with pytest.raises(UnusableModelFolder, match=f"^{tmp_path / TRAINING_FILE}: unknown key"):
        load_tagger(tmp_path)
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(UnusableModelFolder, match=f"^{tmp_path / 'diffusion_pytorch_model.bin'}: pickle weights are "
                                                  "refused"):
        load_tagger(tmp_path)
