"""app.py's handlers called as plain functions, no server: the Studio goes in first, widget values
after, and refused input comes out as a gr.Error with the reason."""

import inspect
import zipfile
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest

import app
from studio import Studio, StudioConfig
from studio.annotation import AnnotationSession
from studio.generation import LoadedModel
from tests.annotate_helpers import make_tasks


@pytest.fixture
def studio(tmp_path):
    """A studio without models (annotation and admin handlers need none), two 3-clip tasks; votes count at once
    (how long clips were heard is test_app_campaign's)."""
    config = StudioConfig(data_dir=tmp_path / "data", admins=frozenset({"admin"}), device="cpu", min_heard_fraction=0)
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
        vote_enabled, *_, skip_enabled, message = app.play_clip(studio, position, "ann", task, None, None)
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


def test_an_empty_store_says_where_tasks_come_from(tmp_path):
    config = StudioConfig(data_dir=tmp_path / "data", admins=frozenset({"admin"}), device="cpu")
    empty = Studio(config, models=[LoadedModel("base", "Base", "none-a", None, "not loaded in this test"),
                                   LoadedModel("dpo", "DPO-tuned", "none-b", None, "not loaded in this test")])
    info, _, task = app.next_task(empty, "ann", None, None)
    assert info["message"] == "no tasks yet"
    said = app.show_task(task, info)[1]
    assert "Send these clips to annotation" in said and "Make tasks" in said and "python -m annotate pool" in said
    # Without a loaded model the Dataset tab's Make tasks says why in place; a visitor is refused first.
    assert "not an admin" in app.pool_message(empty, "visitor", "a beep", 2, None, None)
    assert "no model is loaded" in app.pool_message(empty, "admin", "a beep", 2, None, None)
    assert "no prompts" in app.pool_message(empty, "admin", "# only a comment\n\n", 2, None, None)


def test_results_count_towards_the_first_batch_and_score_clips_pooled_while_the_app_runs(tmp_path):
    """Issue 32: "no comparisons between models yet" with 7 rankings in, and clips pooled while the app ran stayed
    without automatic scores until a restart."""
    from annotate import Store
    from tests.test_annotate_verdict import dpo_first, make_pool, vote_all

    config = StudioConfig(data_dir=tmp_path / "data", leaderboard_every=20)
    studio = Studio(config, models=[LoadedModel("base", "Base", "tiny", None, "not loaded in this test")])  # judged
    make_pool(Store(config.data_dir), ["two knocks", "a hiss then a beep", "three clicks", "a buzz", "a siren",
                                       "a beep then a knock", "two beeps"])  # `annotate pool` beside the app
    vote_all(studio.store, ["ann"], dpo_first)
    results, forest = app.show_results(studio)
    assert "**First results**: 7 of 20 votes in." in results and "From human rankings**: no comparisons" in results
    assert all(clip.auto_score is not None for clip in studio.store.candidates().values())
    assert "From the automatic ranker** (7 task(s) it ranked)" in results and "From the automatic ranker" in forest
    studio.config = replace(studio.config, leaderboard_every=4)  # enough votes, but all of one annotator
    assert "**First results**: 7 votes in, waiting for votes of 4 different annotators." in app.show_results(studio)[0]


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


def vote_in_agreement(studio, names) -> list[str]:
    """Each annotator plays every clip of a task and ranks them by the store's clip id (all agree, though their
    shown orders are shuffled apart); returns the store's clip ids in rank order."""
    for name in names:
        _, _, task = app.next_task(studio, name, None, None)
        for position in range(len(task.labels)):
            app.play_clip(studio, position, name, task, None, None)
        shown = stored_clip_ids(studio, name)
        by_clip = sorted(shown)
        app.vote(studio, name, task.task_id, {label: by_clip.index(clip_id) + 1 for label, clip_id in zip(task.labels, shown)})
    return by_clip


def test_admin_handlers(studio):
    vote_in_agreement(studio, ("ann", "bo"))
    overview, rows, title, *previews = app.show_dataset(studio, "admin", None, None)
    assert "**votes**: 2" in overview and [row[0] for row in rows] == ["ann", "bo"]
    assert title["value"].startswith("**Strongest pairs so far**") and len(previews) == 3 * app.PREVIEW_PAIRS
    result = app.export(studio, "admin")
    assert result["pairs"] >= 1


def test_export_offers_a_zip_and_plays_its_first_pairs_to_admins_only(studio):
    vote_in_agreement(studio, ("ann", "bo"))  # three pairs, 2 votes to 0
    message, download, title, *previews = app.export_on_page(studio, "cy", None, None)
    assert message.startswith("**Export failed:** 'cy' is not an admin")
    assert download == {"__type__": "update", "visible": False, "value": None}
    assert not title["visible"] and not any(update["visible"] for update in previews)
    assert not (studio.generated_dir / "downloads").exists()

    message, download, title, *previews = app.export_on_page(studio, "admin", None, None)
    assert message.startswith("Export 1: **3 pairs**") and download["visible"]
    assert zipfile.ZipFile(download["value"]).namelist() == ["README.md", "data/train-00000-of-00001.parquet"]
    assert title["value"].startswith("**First pairs of the export**")
    texts, chosen, rejected = previews[0::3], previews[1::3], previews[2::3]
    assert all(text["value"].endswith("(2 vs 0 votes)") for text in texts)
    assert all(Path(clip["value"]).read_bytes()[:4] == b"RIFF" for clip in chosen + rejected)


def test_expected_errors_log_one_line_and_no_traceback(studio):
    with pytest.raises(gr.Error) as refused:
        app.vote(studio, "ann", 1, {"A": 1})
    assert refused.value.print_exception is False and refused.value.__cause__ is None
    assert refused.value.__suppress_context__


def test_dataset_tab_outcomes_in_place(studio):
    overview, rows, title, *previews = app.show_dataset(studio, "cy", None, None)
    assert overview.startswith("**Not shown:**") and "'cy' is not an admin" in overview and rows == []
    assert not title["visible"] and not any(update["visible"] for update in previews)
    assert app.export_on_page(studio, "admin", None, None)[0].startswith("**Export failed:** no preference pairs")
    assert app.push_message(studio, "admin", None, None).startswith("**Push failed:** no Hub dataset configured")


def test_leaderboard_results_and_reveal_after_vote(studio, tmp_path):
    from dataclasses import replace

    studio.config = replace(studio.config, reveal_models=True, leaderboard_every=1)
    assert app.public_leaderboard(studio) == []
    for name in ("ann", "bo", "cy"):  # the task wants three annotators: the third vote completes it
        _, _, task = app.next_task(studio, name, None, None)
        for position in range(3):
            app.play_clip(studio, position, name, task, None, None)
        models = [studio.store.candidates()[clip_id].model for clip_id in stored_clip_ids(studio, name)]
        ranks = sorted(task.labels, key=lambda label: models[task.labels.index(label)])
        answer = app.vote(studio, name, task.task_id, {label: ranks.index(label) + 1 for label in task.labels},
                          comment="base first")
        if name != "cy":  # others may still be given these clips
            assert answer["models_hidden"].startswith("models stay hidden") and "models" not in answer
    assert answer["models"] == dict(zip(task.clip_ids, models))  # the reveal: the clip ids shown -> model
    rows = app.public_leaderboard(studio)
    assert [row["model"] for row in rows] == ["base", "dpo"] and rows[0]["comparisons"] == 3 * 2
    results, forest = app.show_results(studio)
    assert "| base |" in results and "From human rankings** (3 ranking(s))" in results
    assert forest == ""  # 6 comparisons, under the minimum (10) before the public results show numbers
    studio.config = replace(studio.config, min_comparisons=6)
    assert "base over dpo (6 comparisons)" in app.show_results(studio)[1]
    assert [r.comment for r in studio.store.rankings()] == ["base first"] * 3


def test_a_task_whose_clip_is_missing_is_withdrawn_and_the_annotator_gets_the_next(studio, caplog):
    """The attack: a clip file missing on disk made every Next task answer an error naming the server's file."""
    first, second = sorted(studio.store.task_clips())
    missing = Path(studio.store.candidates()[studio.store.task_clips()[first][0]].audio_path)
    missing.unlink()
    info, files, task = app.next_task(studio, "ann", None, None)
    assert task.task_id == second and len(files) == 3
    assert "withdrew task" in caplog.text and str(missing) in caplog.text  # the log names the file
    [withdrawn] = studio.store.withdrawn_tasks()
    assert withdrawn.task_id == first and "No such file or directory" in withdrawn.reason
    assert str(missing.parent) not in withdrawn.reason
    overview, *_ = app.show_dataset(studio, "admin", None, None)
    assert "**withdrawn tasks** (a clip could not be read; no longer handed out): 1" in overview
    assert f"task {first} (" in overview
    assert app.vote_from_form(studio, "skip", "ann", task, "", None, None).startswith("Vote")
    assert app.next_task(studio, "ann", None, None)[2] is None and app.next_task(studio, "bo", None, None)[2].task_id == second


def test_an_assigned_task_whose_clip_went_missing_gives_way_and_skip_needs_no_loaded_task(studio):
    _, _, task = app.next_task(studio, "ann", None, None)
    Path(studio.store.candidates()[studio.store.task_clips()[task.task_id][0]].audio_path).unlink()
    studio.annotation = AnnotationSession(studio.store, studio.secret, studio.clip_server.serve)  # a restart
    _, _, following = app.next_task(studio, "ann", None, None)
    assert following.task_id != task.task_id and [w.task_id for w in studio.store.withdrawn_tasks()] == [task.task_id]

    # The page lost its task (a reload): Skip still skips the task assigned, Vote asks for Next task.
    with pytest.raises(gr.Error, match="no task loaded: press Next task"):
        app.vote_from_form(studio, "rank", "ann", None, "", None, None)
    assert app.vote_from_form(studio, "skip", "ann", None, "", None, None).endswith("stored (skip).")
    assert studio.store.rankings()[-1].task_id == following.task_id and studio.store.rankings()[-1].skipped
    with pytest.raises(gr.Error, match="no task is assigned to you: press Next task"):
        app.vote_from_form(studio, "skip", "ann", None, "", None, None)
    shown = app.show_task(None, {"progress": ""})
    assert shown[-3]["interactive"] is True  # Skip (before the comment and the status) stays pressable


def test_file_errors_never_show_a_server_path(studio, monkeypatch):
    def unreadable(name, senders=()):
        raise PermissionError(13, "Permission denied", "/srv/secret/data/audio/ab/ab12.wav")

    monkeypatch.setattr(studio.annotation, "next_task", unreadable)
    with pytest.raises(gr.Error) as refused:
        app.next_task(studio, "ann", None, None)
    assert "/srv" not in refused.value.message and "Permission denied" in refused.value.message


def test_a_failing_copy_withdraws_nothing(studio, monkeypatch):
    def disk_full(source):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(studio.annotation, "serve", disk_full)
    with pytest.raises(gr.Error, match="No space left on device"):
        app.next_task(studio, "ann", None, None)
    assert studio.store.withdrawn_tasks() == []  # the clips are fine: the task waits for the disk


def test_the_dataset_tab_shows_with_a_clip_missing(studio):
    by_clip = vote_in_agreement(studio, ("ann", "bo"))  # three pairs, 2 votes to 0
    Path(studio.store.candidates()[by_clip[0]].audio_path).unlink()
    overview, rows, _, *previews = app.show_dataset(studio, "admin", None, None)
    assert "**votes**: 2" in overview and len(rows) == 2
    shown = [update["value"] for update in previews[1::3] + previews[2::3] if update["visible"]]
    assert len(shown) == 2 and all(Path(path).is_file() for path in shown)  # the one pair whose clips both play
