"""Issue 20, items 3 and 4, through app.py's handlers (no server): the A/B form of a two-clip task (its answers are
rankings that Store.submit keeps like any other), the models named after the vote, the Results tab's minimum of
comparisons, and the annotator's own view: their count, their gold accuracy where the owner shows it, and undo of
their last vote."""

from __future__ import annotations

from dataclasses import replace

import gradio as gr
import pytest

import app
from annotate import InvalidVote
from studio import Studio, StudioConfig
from studio.annotation import AB_RANKINGS, VERDICT_NAMES
from studio.generation import LoadedModel
from tests.annotate_helpers import SAMPLE_RATE, make_tasks, tone

NO_MODELS = [LoadedModel("base", "Base", "none-a", None, "not loaded in this test"),
             LoadedModel("dpo", "DPO-tuned", "none-b", None, "not loaded in this test")]


@pytest.fixture
def studio(tmp_path):
    """A studio without models and two two-clip tasks (base vs dpo); votes count at once (how long clips were heard
    is test_app_campaign's)."""
    studio = Studio(StudioConfig(data_dir=tmp_path / "data", device="cpu", min_heard_fraction=0), models=NO_MODELS)
    make_tasks(studio.store, 2)
    return studio


@pytest.fixture
def revealing(tmp_path):
    """As ``studio``, with --reveal-models and tasks of one annotator each: the vote a task needs sees its models."""
    studio = Studio(StudioConfig(data_dir=tmp_path / "data", device="cpu", min_heard_fraction=0, reveal_models=True),
                    models=NO_MODELS)
    make_tasks(studio.store, 2, target_overlap=1)
    return studio


def loaded(studio, name):
    """``name``'s next task with every clip played, as the page holds it."""
    _, _, task = app.next_task(studio, name, None, None)
    for position in range(len(task.clip_ids)):
        app.play_clip(studio, position, name, task, None, None)
    return task


def button_states(updates):
    """form_buttons' updates by button: (visible, interactive); the All bad button's label."""
    names = ["vote", "all_bad", *(verdict for verdict, _, _ in app.AB_BUTTONS), "skip"]
    return {name: (update.get("visible", True), update.get("interactive")) for name, update in zip(names, updates)}, \
        updates[1]["value"]


def test_ab_answers_are_stored_as_rankings_of_the_two_clips(studio):
    """A is better = {A: 1, B: 2}, B is better = {A: 2, B: 1}, Tie = {A: 1, B: 1}, Both bad = an all-bad vote."""
    _, _, task = app.next_task(studio, "ann", None, None)
    with pytest.raises(gr.Error, match="play every clip before voting: not played yet: A, B"):
        app.vote_from_form(studio, "a_better", "ann", task, "", None, None)
    assert studio.store.counts()["rankings"] == 0
    for name, verdict in (("ann", "a_better"), ("bo", "b_better"), ("cy", "tie"), ("dee", "all_bad")):
        task = loaded(studio, name)
        message = app.vote_from_form(studio, verdict, name, task, "", None, None)
        assert message.endswith(f"stored ({VERDICT_NAMES[verdict]}).") and VERDICT_NAMES["a_better"] == "A is better"
        stored = studio.store.rankings()[-1]
        if verdict == "all_bad":
            assert stored.all_bad and set(stored.ranks.values()) == {None}
        else:
            assert stored.ranks == dict(zip(stored.shown_order, AB_RANKINGS[verdict].values()))
        assert set(stored.play_counts.values()) == {1}


def test_the_form_is_ab_for_two_clips_and_a_ranking_for_more(studio):
    three = [studio.store.add_candidate("three clips", tone(200 + 50 * i), model=m, seed=i, steps=10, guidance=3.0,
                                        sample_rate=SAMPLE_RATE).id for i, m in enumerate(["base", "dpo", "dpo"])]
    three_task = studio.store.add_task(three)

    info, _, pair = app.next_task(studio, "ann", None, None)
    shown = app.show_task(pair, info)
    ranks, form = shown[2 + app.MAX_SHOWN_CLIPS:2 + 2 * app.MAX_SHOWN_CLIPS], shown[2 + 2 * app.MAX_SHOWN_CLIPS:-2]
    assert not any(update["visible"] for update in ranks) and shown[-1] == "Play both clips, then say which is better."
    states, all_bad_label = button_states(form)
    assert all_bad_label == "Both bad" and states["vote"] == (False, False) and states["skip"] == (True, True)
    assert all(states[verdict] == (True, False) for verdict in AB_RANKINGS)  # shown, locked until both are played
    *form, message = app.play_clip(studio, 0, "ann", pair, None, None)
    assert message == "Still to play: B" and button_states(form)[0]["a_better"] == (True, False)
    *form, message = app.play_clip(studio, 1, "ann", pair, None, None)
    assert message == "All clips played: which is better?"
    assert all(button_states(form)[0][verdict] == (True, True) for verdict in AB_RANKINGS)

    app.vote_from_form(studio, "skip", "ann", pair, "", None, None)
    app.vote_from_form(studio, "skip", "ann", app.next_task(studio, "ann", None, None)[2], "", None, None)
    info, _, larger = app.next_task(studio, "ann", None, None)  # after the two pairs
    assert larger.task_id == three_task
    shown = app.show_task(larger, info)
    states, all_bad_label = button_states(shown[2 + 2 * app.MAX_SHOWN_CLIPS:-2])
    assert all_bad_label == "All bad" and states["vote"] == (True, False)
    assert all(states[verdict][0] is False for verdict in AB_RANKINGS)
    for position in range(3):
        app.play_clip(studio, position, "ann", larger, None, None)
    with pytest.raises(gr.Error, match="'a_better' is for two-clip tasks; this one has 3 clips: rank them"):
        app.vote(studio, "ann", three_task, None, "a_better")
    with pytest.raises(gr.Error, match="`ranking` must be empty with `verdict` 'tie'"):
        app.vote(studio, "ann", three_task, {"A": 1, "B": 1, "C": 1}, "tie")
    assert studio.store.vote_of("ann", three_task) is None


def test_the_api_takes_ab_verdicts_and_a_vote_sent_again_gets_its_id(studio):
    task = loaded(studio, "ann")
    first = app.vote(studio, "ann", task.task_id, None, "b_better")
    assert app.vote(studio, "ann", task.task_id, None, "b_better")["vote_id"] == first["vote_id"]
    assert app.vote(studio, "ann", task.task_id, {"A": 2, "B": 1})["vote_id"] == first["vote_id"]  # the same ranking
    with pytest.raises(gr.Error, match="already voted differently"):
        app.vote(studio, "ann", task.task_id, None, "tie")


def test_models_are_named_after_an_ab_vote_never_before_nor_after_both_bad(revealing):
    studio = revealing
    task = loaded(studio, "ann")
    message = app.vote_from_form(studio, "tie", "ann", task, "", None, None)
    models = [studio.store.candidates()[clip_id].model for clip_id in studio.store.rankings()[-1].shown_order]
    assert message.endswith(f"Revealed: **A** was `{models[0]}`, **B** was `{models[1]}`.")
    assert sorted(models) == ["base", "dpo"]
    both_bad = app.vote_from_form(studio, "all_bad", "bo", loaded(studio, "bo"), "", None, None)
    assert "Revealed" not in both_bad and "was `" not in both_bad


def test_undo_brings_the_task_back_and_counts_nowhere(studio):
    task = loaded(studio, "ann")
    vote_id = app.vote(studio, "ann", task.task_id, None, "a_better")["vote_id"]
    _, _, following = app.next_task(studio, "ann", None, None)  # the page loads the next task after a vote
    assert following.task_id != task.task_id
    assert app.undo_from_form(studio, "ann", None, None) == (
        f"Vote {vote_id} undone: its task is back; play its clips and vote again.")
    info, _, again = app.next_task(studio, "ann", None, None)
    assert again.task_id == task.task_id and again.clip_ids == task.clip_ids and not again.all_played
    assert "You have ranked **0** task(s)" in info["progress"] and studio.store.rankings() == []
    with pytest.raises(gr.Error, match="play every clip before voting"):  # played anew, as any task
        app.vote(studio, "ann", task.task_id, None, "b_better")
    for position in range(2):
        app.play_clip(studio, position, "ann", again, None, None)
    answer = app.vote(studio, "ann", task.task_id, None, "b_better")
    assert "You have ranked **1** task(s)" in answer["progress"]
    assert [r.ranks for r in studio.store.rankings()] == [dict(zip(studio.store.rankings()[0].shown_order, (2, 1)))]

    with pytest.raises(gr.Error, match="you have no vote to undo"):
        app.undo(studio, "bo")
    assert app.undo(studio, "ann")["vote_id"] == answer["vote_id"]
    with pytest.raises(gr.Error, match=f"vote {answer['vote_id']} is undone already"):
        app.undo(studio, "ann")


def test_a_vote_that_named_the_models_cannot_be_undone(revealing):
    studio = revealing
    task = loaded(studio, "ann")
    app.vote_from_form(studio, "a_better", "ann", task, "", None, None)
    with pytest.raises(gr.Error, match="showed you the models behind its clips, so it stays"):
        app.undo(studio, "ann")
    assert len(studio.store.rankings()) == 1
    task = loaded(studio, "ann")
    app.vote_from_form(studio, "all_bad", "ann", task, "", None, None)  # named nothing: may be undone
    assert app.undo(studio, "ann")["task_id"] == task.task_id
    with pytest.raises(InvalidVote, match="hidden"):
        studio.annotation.reveal("ann", task.task_id)


def test_an_undo_changes_the_public_results_only_with_the_next_batch(studio):
    """Results publish in batches so that no one vote's effect shows. An undo of a published vote was refused (half
    the immediate undos of 16 concurrent voters, issue 31); now the vote stays in what was published, as it stood,
    and leaves the results when the next batch closes."""
    studio.config = replace(studio.config, leaderboard_every=2)
    comparisons = lambda: [row["comparisons"] for row in app.public_leaderboard(studio)]  # noqa: E731
    first = app.vote(studio, "ann", loaded(studio, "ann").task_id, None, "a_better")
    assert comparisons() == []  # a batch needs two votes of two annotators
    app.vote(studio, "bo", loaded(studio, "bo").task_id, None, "a_better")  # completes the batch
    published = app.public_leaderboard(studio)
    assert comparisons() == [2, 2]
    assert app.undo(studio, "ann")["vote_id"] == first["vote_id"]  # allowed: the results keep the batch as it was
    assert app.public_leaderboard(studio) == published and len(studio.store.rankings()) == 1
    app.vote(studio, "ann", loaded(studio, "ann").task_id, None, "b_better")  # voted again, differently
    assert app.public_leaderboard(studio) == published
    app.vote(studio, "cy", loaded(studio, "cy").task_id, None, "a_better")  # the next batch closes
    assert comparisons() == [3, 3]  # bo's, ann's new vote and cy's: the undone one is gone


def test_gold_accuracy_shows_only_where_the_owner_allows_it(studio):
    ids = [studio.store.add_candidate("a check", tone(300 + 400 * i), model=f"gold {i}", seed=i, steps=1,
                                      guidance=0.0, sample_rate=SAMPLE_RATE).id for i in range(2)]
    studio.store.add_gold_task({ids[0]: 1, ids[1]: 2})
    info, _, gold = app.next_task(studio, "ann", None, None)  # the first task is a gold one (gold_share)
    assert gold.task_id in studio.store.gold_answers() and "check tasks" not in info["progress"]
    studio.config = replace(studio.config, show_gold_accuracy=True)
    assert "check tasks (their answer is known): shown once you have answered 5" in app.next_task(
        studio, "ann", None, None)[0]["progress"]
    for position in range(2):
        app.play_clip(studio, position, "ann", gold, None, None)
    truth_letter = "A" if studio.store.next_task("ann").candidates[0].id == ids[0] else "B"
    answer = app.vote(studio, "ann", gold.task_id, None, "a_better" if truth_letter == "A" else "b_better")
    # One answer moves nothing (test_app_campaign: steps of five, past the undo window), and it cannot be undone.
    assert "shown once you have answered 5" in answer["progress"]
    with pytest.raises(gr.Error, match="a vote on a check task .* cannot be undone"):
        app.undo(studio, "ann")


def test_results_say_too_few_votes_below_the_owners_minimum(studio):
    studio.config = replace(studio.config, leaderboard_every=1, min_comparisons=2)
    for name in ("ann", "bo"):
        task = loaded(studio, name)
        app.vote(studio, name, task.task_id, None, "a_better")
    # Both voted on the first task (it is the closest to its target): one comparison each vote, two per model.
    rows = app.public_leaderboard(studio)
    assert all(not row["too_few_votes"] and row["win_rate"] is not None for row in rows)
    studio.config = replace(studio.config, min_comparisons=3)
    results, forest = app.show_results(studio)
    assert "| base | too few votes | | | | 2 |" in results and "once it was in 3 comparisons" in results
    assert "too few comparisons yet (2 of the 3 before numbers show)" in results and forest == ""  # no numbers
    rows = app.public_leaderboard(studio)
    assert [(row["too_few_votes"], row["win_rate"], row["bt_interval"]) for row in rows] == [(True, None, None)] * 2
