"""Gold tasks, annotator trust, comments and informative-first scoring."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from annotate import InvalidInput, InvalidVote, Store
from autopairs.autorank import score_unscored
from annotate.clips import decode_wav
from annotate.export import export_human_pairs
from annotate.gold import GOLD_TRUTH_MODEL, gold_accuracy
from annotate.stats import dataset_stats
from soundworld import judge, parse
from tests.annotate_helpers import add_rendered_gold, make_tasks
from tests.test_annotate_verdict import BASE, DPO, dpo_first, make_pool

GOLD_PROMPTS = ["two knocks", "a hiss then a click", "a rising chirp", "three beeps", "a low hum",
                "a siren followed by a click", "a buzz", "a knock after a beep", "a falling chirp", "two clicks",
                "a siren", "a buzz then a beep"]


def test_gold_tasks_rank_a_render_of_the_prompt_above_renders_of_unrelated_prompts(tmp_path):
    store = Store(tmp_path / "data")
    [task_id] = add_rendered_gold(store, ["two knocks"], distractors=2)
    answer = store.gold_answers()[task_id]
    clips = store.candidates(answer)
    truth = [clips[i] for i, rank in answer.items() if rank == 1]
    others = [clips[i] for i, rank in answer.items() if rank == 2]
    assert [c.model for c in truth] == [GOLD_TRUTH_MODEL] and len(others) == 2
    assert all(c.prompt == "two knocks" for c in clips.values())
    samples = lambda clip: __import__("soundfile").read(clip.audio_path, dtype="float32")[0]
    assert judge(samples(truth[0]), 16000, "two knocks").score == 1.0  # the render is the truth
    for other in others:  # the distractors render prompts without a knock
        source = other.model.split("render of ")[1].strip("'")
        assert "knock" not in parse(source).types
        assert judge(samples(other), 16000, "two knocks").score < 1.0
    assert add_rendered_gold(store, ["two knocks"], distractors=2) == [task_id]  # idempotent
    assert store.task_progress() == []  # gold tasks are no work towards the target


def test_gold_tasks_look_like_the_regular_tasks_and_cannot_be_rendered_again(tmp_path):
    """Bar (issue 19): a gold task held 3 clips where regular ones held 4, and render(prompt, 0) found its truth."""
    import soundfile

    from soundworld import render

    store = Store(tmp_path / "data")
    [empty_store_task] = add_rendered_gold(store, ["two knocks"])
    assert len(store.gold_answers()[empty_store_task]) == 4  # a pool's default size: two models, two clips
    make_tasks(store, 3, clips=3)
    [task_id] = add_rendered_gold(store, ["a rising chirp"])
    answer = store.gold_answers()[task_id]
    assert len(answer) == 3  # as large as the regular tasks
    for clip in store.candidates(answer).values():
        heard = soundfile.read(clip.audio_path, dtype="float32")[0]
        source = "a rising chirp" if clip.model == GOLD_TRUTH_MODEL else clip.model.split("render of ")[1].strip("'")
        for public_seed in range(20):
            rendered = render(source, public_seed)[0]
            assert abs(np.corrcoef(heard[:len(rendered)], rendered[:len(heard)])[0, 1]) < 0.9
    assert add_rendered_gold(store, ["a rising chirp", "two knocks"]) == [task_id, empty_store_task]  # idempotent


def test_gold_tasks_are_mixed_into_each_annotators_queue(tmp_path):
    store = Store(tmp_path / "data", gold_share=0.25)
    make_tasks(store, 12)
    gold = set(add_rendered_gold(store, GOLD_PROMPTS))
    given = []
    while (task := store.next_task("ann")) is not None:
        given.append(task.id in gold)
        store.submit("ann", task.id, skip=True)
    assert given[:8].count(True) == 2  # a quarter of the first tasks, interleaved
    assert given[:4].count(True) == 1 and given.count(True) == len(gold)  # and every gold task once in the end


def test_a_random_gold_answerer_is_flagged_and_left_out_and_a_careful_one_kept(tmp_path):
    """Bar: the random clicker's votes leave the export (and the card says how many); the careful one's stay."""
    store = Store(tmp_path / "data", gold_share=0.4)
    make_pool(store, [f"prompt {i}" for i in range(12)])
    add_rendered_gold(store, GOLD_PROMPTS)
    gold = store.gold_answers()
    models = {clip_id: clip.model for clip_id, clip in store.candidates().items()}
    rng = random.Random(3)
    for name in ["careful", "also-careful", "clicker"]:
        while (task := store.next_task(name)) is not None:
            ids = [c.id for c in task.candidates]
            if name == "clicker":  # random everywhere, and on model tasks it prefers the base model
                ranks = (rng.sample(range(1, len(ids) + 1), len(ids)) if task.id in gold
                         else dpo_first(ids, [DPO if models[i] == BASE else BASE for i in ids]))
            else:
                ranks = [gold[task.id][i] for i in ids] if task.id in gold else dpo_first(ids, [models[i] for i in ids])
            store.submit(name, task.id, dict(zip(ids, ranks)))

    scores = gold_accuracy(store.rankings(), gold)
    assert scores["careful"].accuracy == scores["also-careful"].accuracy == 1.0
    # A random order puts the truth first in 1 of 3 gold tasks: 10 or more of 12 by luck has odds of 1 in 10^4.
    assert scores["clicker"].answered == len(GOLD_PROMPTS) and scores["clicker"].accuracy < 0.8

    result = export_human_pairs(store, tmp_path / "export", min_gold_accuracy=0.8)
    clicker_votes = sum(r.annotator == "clicker" for r in store.rankings())
    assert result.left_out_annotators == ("clicker",) and result.left_out_votes == clicker_votes == 24
    card = (tmp_path / "export" / "README.md").read_text()
    assert "votes left out (annotators below the gold accuracy threshold or flagged): 24" in card
    assert "annotators left out: clicker" in card
    assert "rankings used: 24" in card  # 12 model tasks x the 2 careful annotators; gold tasks yield no pairs
    # Without the clicker, the DPO model wins every comparison; gold clips never enter the verdict.
    verdict = card.split("## Verdict")[1]
    assert f"| {DPO} | 1.000 |" in verdict and "gold:" not in verdict

    everyone = export_human_pairs(store, tmp_path / "everyone", include_flagged=True)  # hygiene flags the clicker too
    assert everyone.left_out_votes == 0 and everyone.alpha < 0.1 < result.alpha == 1.0  # the clicker broke agreement
    stats = dataset_stats(store)
    assert stats["annotators"]["clicker"]["gold_accuracy"] == scores["clicker"].accuracy
    assert stats["annotators"]["careful"]["gold_answered"] == len(GOLD_PROMPTS)


def test_gold_answers_are_checked(tmp_path):
    store = Store(tmp_path / "data")
    make_tasks(store, 1)
    a, b = store.candidates()
    with pytest.raises(InvalidInput, match="already form a task"):
        store.add_gold_task({a: 1, b: 2})
    with pytest.raises(InvalidInput, match="prefer"):
        store.add_gold_task({a: 1, b: 1})
    with pytest.raises(InvalidInput, match="dense"):
        store.add_gold_task({a: 1, b: 3})


def test_a_vote_may_carry_a_comment(tmp_path):
    store = Store(tmp_path / "data")
    make_tasks(store, 2)
    task = store.next_task("ann")
    ids = [c.id for c in task.candidates]
    store.submit("ann", task.id, {ids[0]: 1, ids[1]: 2}, comment="  B clips at the end\nA is clean ")
    with pytest.raises(InvalidVote, match="comment"):
        store.submit("ann", store.next_task("ann").id, skip=True, comment="x" * 5000)
    with pytest.raises(InvalidVote, match="control"):
        store.submit("ann", store.next_task("ann").id, skip=True, comment="bell\x07")
    store.submit("ann", store.next_task("ann").id, skip=True, comment="   ")
    first, second = store.rankings()
    assert first.comment == "B clips at the end\nA is clean" and second.comment is None


def test_informative_first_hands_out_the_tasks_the_ranker_is_least_sure_about(tmp_path):
    store = Store(tmp_path / "data", informative_first=True)
    make_tasks(store, 3)  # clip j of task p is a tone of 110 + 13 p + 37 j Hz
    clips = store.candidates()

    def ranker(waveforms, rate, prompt):  # higher pitch scores higher; task 2's clips are the closest in score
        p = int(prompt.split()[1])
        if p == 1:
            raise ValueError("cannot read this prompt")
        return [(10.0 if p == 0 else 0.01) * float(np.abs(np.diff(w)).mean()) for w in waveforms]

    assert score_unscored(store, ranker) == 4  # prompt 1's clips stay unscored
    assert score_unscored(store, ranker) == 0  # scored once
    scored = store.candidates()
    assert [scored[i].auto_score is None for i in clips] == [c.prompt == "prompt 1" for c in clips.values()]
    order = []
    while (task := store.next_task("ann")) is not None:
        order.append(task.prompt)
        store.submit("ann", task.id, skip=True)
    assert order == ["prompt 2", "prompt 0", "prompt 1"]  # smallest score margin first, unscored last


class NamedRanker:
    """A ranker with an identity, as the judge, CLAP and preference models have: scores the clip's loudness."""

    def __init__(self, identity: str, scale: float, unreadable: str):
        self.identity, self.scale, self.unreadable = identity, scale, unreadable

    def __call__(self, waveforms, rate, prompt):
        if prompt == self.unreadable:
            raise ValueError("cannot read this prompt")
        return [self.scale * float(np.abs(w).mean()) for w in waveforms]


def test_a_replaced_ranker_rescores_every_clip_and_keeps_none_of_the_old_scores(tmp_path):
    store = Store(tmp_path / "data", informative_first=True)
    make_tasks(store, 3)
    assert score_unscored(store, NamedRanker("old", 1.0, unreadable="prompt 2")) == 4
    assert score_unscored(store, NamedRanker("old", 1.0, unreadable="prompt 2")) == 0
    # A new ranker (a retrained preference model) that cannot read prompt 0: its clips lose the old scores.
    assert score_unscored(store, NamedRanker("new", 5.0, unreadable="prompt 0")) == 4
    for clip in store.candidates().values():
        if clip.prompt == "prompt 0":
            assert clip.auto_score is None
        else:
            samples, _ = decode_wav(Path(clip.audio_path).read_bytes())
            assert clip.auto_scorer == "new" and clip.auto_score == pytest.approx(5.0 * np.abs(samples).mean())
    reopened = Store(tmp_path / "data")  # the scorer is stored, not remembered
    assert score_unscored(reopened, NamedRanker("new", 5.0, unreadable="prompt 0")) == 0
