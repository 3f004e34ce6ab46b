"""app.py's handlers called as plain functions, no server: the Studio goes in first, widget values
after, and refused input comes out as a gr.Error with the reason."""

import inspect

import gradio as gr
import pytest

import app
from studio import Studio, StudioConfig
from studio.generation import LoadedModel
from tests.annotate_helpers import make_tasks


@pytest.fixture
def studio(tmp_path):
    """A studio without models (annotation and admin handlers need none), two 3-clip tasks."""
    config = StudioConfig(data_dir=tmp_path / "data", admins=frozenset({"admin"}), device="cpu")
    models = [LoadedModel("base", "Base", "none-a", None, "not loaded in this test"),
              LoadedModel("dpo", "DPO-tuned", "none-b", None, "not loaded in this test")]
    studio = Studio(config, models=models)
    make_tasks(studio.store, 2, clips=3)
    return studio


def test_bound_handlers_look_to_gradio_like_the_endpoint_without_its_state(studio):
    bound = app.bind(app.vote, studio)
    assert list(inspect.signature(bound).parameters) == ["annotator", "task_id", "ranking", "verdict", "comment",
                                                          "request", "profile"]
    assert "studio" not in bound.__annotations__ and bound.__name__ == "vote" and "Vote on your open task" in bound.__doc__
    played = app.bind(app.play_clip, studio, 2)
    assert list(inspect.signature(played).parameters) == ["annotator", "task", "request", "profile"]


def test_rank_a_task_through_the_handlers(studio):
    info, files, task = app.next_task(studio, "ann", None, None)
    assert info["task_id"] == task.task_id and len(files) == 3 and [c["label"] for c in info["clips"]] == ["A", "B", "C"]
    shown = app.show_task(task, info)
    assert shown[1] == f"**Prompt:** {task.prompt}"
    # Voting is locked until every clip was played; the form's Vote says which ranks are missing.
    for position in range(2):
        vote_enabled, _, skip_enabled, message = app.play_clip(studio, position, "ann", task, None, None)
        assert vote_enabled["interactive"] is False and skip_enabled["interactive"] is True
    assert message == "Still to play: C"
    with pytest.raises(gr.Error, match="not played yet: C"):
        app.vote(studio, "ann", task.task_id, {"A": 1, "B": 2, "C": 3})
    vote_enabled, *_, message = app.play_clip(studio, 2, "ann", task, None, None)
    assert vote_enabled["interactive"] is True and message.startswith("All clips played")
    with pytest.raises(gr.Error, match="give every clip a rank; missing: C"):
        app.vote_from_form(studio, "rank", "ann", task, "", None, None, "1", "2", None)
    assert studio.store.counts()["rankings"] == 0
    assert app.vote_from_form(studio, "rank", "ann", task, "", None, None, "2", "1", "1").startswith("Vote 1 stored")
    [stored] = studio.store.rankings()
    assert stored.ranks == dict(zip(stored.shown_order, (2, 1, 1))) and stored.annotator == "ann"


def test_skip_needs_no_listening_and_the_last_task_says_so(studio):
    for _ in range(2):
        _, _, task = app.next_task(studio, "bo", None, None)
        assert "(skip)" in app.vote_from_form(studio, "skip", "bo", task, "", None, None)
    info, files, task = app.next_task(studio, "bo", None, None)
    assert (info["task_id"], files, task) == (None, None, None)
    assert app.show_task(task, info)[1] == "**No task left for you.** Thank you!"


def test_api_handlers_refuse_with_the_reason(studio):
    with pytest.raises(gr.Error, match="type your annotator name first"):
        app.next_task(studio, "", None, None)
    with pytest.raises(gr.Error, match="ask for the next task first"):
        app.played(studio, "cy", 1, "A", None, None)
    with pytest.raises(gr.Error, match="no task loaded"):
        app.vote_from_form(studio, "rank", "cy", None, "", None, None)
    with pytest.raises(gr.Error, match="'cy' is not an admin"):
        app.export(studio, "cy")
    with pytest.raises(gr.Error, match="no Hub dataset configured"):
        app.push(studio, "admin")
    with pytest.raises(gr.Error, match="generate clips first"):
        app.send(studio, None)


def stored_clip_ids(studio, name):
    """The store's ids of the clips of ``name``'s open task, in the order shown (the annotator sees others)."""
    return [clip.id for clip in studio.store.next_task(name).candidates]


def test_admin_handlers(studio):
    for name in ("ann", "bo"):
        _, _, task = app.next_task(studio, name, None, None)
        for position in range(3):
            app.play_clip(studio, position, name, task, None, None)
        shown = stored_clip_ids(studio, name)
        by_clip = sorted(shown)  # both annotators agree (their shown orders are shuffled apart)
        app.vote(studio, name, task.task_id, {label: by_clip.index(clip_id) + 1 for label, clip_id in zip(task.labels, shown)})
    overview, rows, *previews = app.show_dataset(studio, "admin", None, None)
    assert "**votes**: 2" in overview and [row[0] for row in rows] == ["ann", "bo"]
    assert len(previews) == 3 * app.PREVIEW_PAIRS
    result = app.export(studio, "admin")
    assert result["pairs"] >= 1 and app.export_message(studio, "admin", None, None).startswith("Export ")


def test_expected_errors_log_one_line_and_no_traceback(studio):
    with pytest.raises(gr.Error) as refused:
        app.vote(studio, "ann", 1, {"A": 1})
    assert refused.value.print_exception is False and refused.value.__cause__ is None
    assert refused.value.__suppress_context__


def test_dataset_tab_outcomes_in_place(studio):
    overview, rows, *previews = app.show_dataset(studio, "cy", None, None)
    assert overview.startswith("**Not shown:**") and "'cy' is not an admin" in overview and rows == []
    assert app.export_message(studio, "admin", None, None).startswith("**Export failed:** no preference pairs")
    assert app.push_message(studio, "admin", None, None).startswith("**Push failed:** no Hub dataset configured")


def test_leaderboard_results_and_reveal_after_vote(studio, tmp_path):
    from dataclasses import replace

    studio.config = replace(studio.config, reveal_models=True)
    assert app.public_leaderboard(studio) == []
    for name in ("ann", "bo"):
        _, _, task = app.next_task(studio, name, None, None)
        for position in range(3):
            app.play_clip(studio, position, name, task, None, None)
        models = [studio.store.candidates()[clip_id].model for clip_id in stored_clip_ids(studio, name)]
        ranks = sorted(task.labels, key=lambda label: models[task.labels.index(label)])
        answer = app.vote(studio, name, task.task_id, {label: ranks.index(label) + 1 for label in task.labels},
                          comment="base first")
        assert answer["models"] == dict(zip(task.clip_ids, models))  # the reveal: the clip ids shown -> model
    rows = app.public_leaderboard(studio)
    assert [row["model"] for row in rows] == ["base", "dpo"] and rows[0]["comparisons"] == 2 * 2
    assert "| base |" in app.show_results(studio)
    assert [r.comment for r in studio.store.rankings()] == ["base first"] * 2
