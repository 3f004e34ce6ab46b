"""Undo of a vote (issue 20): a new row supersedes the vote, never a rewrite; everything that reads votes leaves
the undone one out; only its annotator, only their last vote, only within the window; backups keep it."""

from __future__ import annotations

import sqlite3
import time

import pytest

from annotate import InvalidVote, Store, VoteConflict
from annotate import store as store_module
from annotate.export import ScheduledPush, export_human_pairs, restore_from_hub
from annotate.gold import gold_accuracy
from annotate.schema import MIGRATIONS
from annotate.stats import dataset_stats
from annotate.verdict import compute_verdict
from tests.annotate_helpers import SAMPLE_RATE, make_tasks, tone, vote
from tests.local_hub import LocalHub

TOKEN = "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123"
REPO = "me/tango-prefs"


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(tmp_path / "data")
    make_tasks(store, 3)
    return store


def base_first(store: Store, annotator: str) -> int:
    """``annotator`` ranks the base clip of their next task first; returns the vote id."""
    task = store.next_task(annotator)
    models = store.candidates([clip.id for clip in task.candidates])
    return store.submit(annotator, task.id, {clip.id: 1 if models[clip.id].model == "base" else 2
                                             for clip in task.candidates})


def test_an_undo_supersedes_the_vote_with_a_new_row_and_the_task_comes_back(store):
    vote_id = vote(store, "ann")
    [cast] = store.rankings()
    before = store.counts()
    undone = store.undo_vote("ann", vote_id)
    assert undone.id == vote_id and undone.ranks == cast.ranks and undone.undone_at >= cast.created_at
    after = store.counts()
    # One new row; the vote and its entries are still there, unchanged.
    assert after["vote_undos"] == before["vote_undos"] + 1
    assert (after["rankings"], after["ranking_entries"]) == (before["rankings"], before["ranking_entries"])
    assert store.rankings() == [] and store.rankings(include_undone=True) == [undone]
    assert store.vote_of("ann", cast.task_id) is None
    assert dict((task, votes) for task, votes, _ in store.task_progress())[cast.task_id] == 0

    # The task is the annotator's again, in the order they saw; their new vote stands, the undone one stays undone.
    again = store.next_task("ann")
    assert again.id == cast.task_id and [clip.id for clip in again.candidates] == cast.shown_order
    revote = store.submit("ann", again.id, {clip.id: 1 for clip in again.candidates})
    assert revote != vote_id and [r.id for r in store.rankings()] == [revote]
    assert [r.undone_at is None for r in store.rankings(include_undone=True)] == [False, True]
    assert store.vote_of("ann", cast.task_id).id == revote
    with pytest.raises(VoteConflict):  # one standing vote per assignment, as before
        store.submit("ann", again.id, {clip.id: i + 1 for i, clip in enumerate(again.candidates)})


def test_undo_and_its_rows_are_insert_only_and_one_vote_stands_per_assignment(store):
    vote_id = vote(store, "ann")
    store.undo_vote("ann", vote_id)
    with sqlite3.connect(store.db_path) as db:
        for statement in ("DELETE FROM vote_undos", "UPDATE vote_undos SET created_at = 0",
                          "UPDATE rankings SET all_bad = 1", "DELETE FROM rankings"):
            with pytest.raises(sqlite3.IntegrityError, match="insert-only"):
                db.execute(statement)
    revote = vote(store, "ann")
    with sqlite3.connect(store.db_path) as db:  # the database itself refuses a second standing vote
        assignment = db.execute("SELECT assignment_id FROM rankings WHERE id = ?", (revote,)).fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError, match="one standing vote"):
            db.execute("INSERT INTO rankings (assignment_id, all_bad, skipped, created_at) VALUES (?, 0, 1, 0)",
                       (assignment,))


def test_only_the_annotator_only_their_last_vote_only_once_and_nothing_written_when_refused(store):
    first = vote(store, "ann")
    last = vote(store, "ann")
    theirs = vote(store, "bo")
    before = store.counts()
    for annotator, vote_id, reason in (
        ("bo", last, "cast by another annotator: only the annotator who cast a vote can undo it"),
        ("nobody", last, "cast by another annotator"),
        ("ann", first, f"only your last vote can be undone: vote {first} is older than vote {last}"),
        ("ann", 999, "there is no vote 999"),
        ("ann", "1", "`vote_id` must be an integer"),
    ):
        with pytest.raises(InvalidVote, match=reason):
            store.undo_vote(annotator, vote_id)
    assert store.counts() == before
    store.undo_vote("ann", last)
    with pytest.raises(InvalidVote, match=f"vote {last} is undone already"):
        store.undo_vote("ann", last)
    with pytest.raises(InvalidVote, match="only your last vote"):  # one step back, not a history
        store.undo_vote("ann", first)
    assert store.undo_vote("bo", theirs).annotator == "bo"


def test_the_window_closes(tmp_path):
    store = Store(tmp_path / "data", undo_window_s=0.05)
    make_tasks(store, 1)
    vote_id = vote(store, "ann")
    time.sleep(0.1)
    with pytest.raises(InvalidVote, match=r"vote 1 was cast \d+ s ago; a vote can be undone within 0 s only"):
        store.undo_vote("ann", vote_id)
    assert store.counts()["vote_undos"] == 0 and store_module.UNDO_WINDOW_S == 60


def test_a_skip_can_be_undone_and_a_withdrawn_task_stays_withdrawn(store):
    skipped = vote(store, "ann", skip=True)
    task_id = store.rankings()[0].task_id
    store.undo_vote("ann", skipped)
    assert store.next_task("ann").id == task_id  # back, though skips never counted towards the target
    assert dict((t, votes) for t, votes, _ in store.task_progress())[task_id] == 0
    ranked = vote(store, "bo")
    bo_task = store.vote_of("bo", store.rankings()[-1].task_id).task_id
    store.withdraw_task(bo_task, "clip unreadable")
    store.undo_vote("bo", ranked)
    assert store.open_task_id("bo") is None  # not reopened: nobody gets a withdrawn task


def test_export_verdict_gold_accuracy_and_counts_ignore_undone_votes(store, tmp_path):
    # Three annotators prefer base; one more prefers dpo, then takes it back.
    for name in ("ann", "bo", "cy"):
        base_first(store, name)
    task = store.next_task("dee")
    models = store.candidates([clip.id for clip in task.candidates])
    undone = store.submit("dee", task.id, {c.id: 1 if models[c.id].model == "dpo" else 2 for c in task.candidates})
    store.undo_vote("dee", undone)

    verdict = compute_verdict(store, "human", n_boot=50)
    assert verdict.votes == 3 and verdict.rows[0]["model"] == "base" and verdict.rows[0]["win_rate"] == 1.0
    assert {r.task_id for r in store.rankings()} == {1} and task.id == 2  # the first task reached its target
    result = export_human_pairs(store, tmp_path / "export")
    assert result.summary.rows == 1  # the undone vote was the only one on its task: no pair of it
    assert "- rankings used: 3\n" in (tmp_path / "export" / "README.md").read_text()
    stats = dataset_stats(store)
    assert (stats["votes"], stats["undone"]) == (3, 1) and "dee" not in stats["annotators"]


def test_gold_accuracy_leaves_an_undone_gold_answer_out(tmp_path):
    store = Store(tmp_path / "data", gold_share=1.0)
    ids = [store.add_candidate("gold prompt", tone(300 + 200 * i), model=f"m{i}", seed=i, steps=1, guidance=0.0,
                               sample_rate=SAMPLE_RATE).id
           for i in range(2)]
    store.add_gold_task({ids[0]: 1, ids[1]: 2})
    task = store.next_task("ann")
    wrong = store.submit("ann", task.id, {ids[0]: 2, ids[1]: 1})
    assert gold_accuracy(store.rankings(), store.gold_answers())["ann"].correct == 0
    store.undo_vote("ann", wrong)
    assert gold_accuracy(store.rankings(), store.gold_answers()) == {}
    store.submit("ann", store.next_task("ann").id, {ids[0]: 1, ids[1]: 2})
    assert gold_accuracy(store.rankings(), store.gold_answers())["ann"].accuracy == 1.0


def test_snapshots_and_hub_backups_keep_the_undo(store, tmp_path):
    kept = vote(store, "ann")
    store.undo_vote("ann", vote(store, "ann"))
    copy = Store(store.snapshot(tmp_path / "copy"))
    assert [r.id for r in copy.rankings()] == [kept]
    assert copy.rankings(include_undone=True) == store.rankings(include_undone=True)

    hub = LocalHub(tmp_path / "hub")
    scheduler = ScheduledPush(tmp_path / "data" / "export", REPO, every=60, token=TOKEN, api=hub, store=store)
    try:
        scheduler.trigger().result()
    finally:
        scheduler.stop()
    assert restore_from_hub(tmp_path / "restored", REPO, token=TOKEN, api=hub) == 2  # rows, the undone one too
    restored = Store(tmp_path / "restored")
    assert [r.id for r in restored.rankings()] == [kept]
    assert restored.rankings(include_undone=True) == store.rankings(include_undone=True)
    assert restored.open_task_id("ann") == store.open_task_id("ann")  # the undone task is still theirs to redo


def test_a_store_of_the_previous_schema_migrates_with_its_votes(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:4])
    # the code of schema 4 read no scorer (schema 6)
    monkeypatch.setattr(store_module, "_CANDIDATE_SQL", store_module._CANDIDATE_SQL.replace("c.auto_scorer", "NULL"))
    # nor revealed tasks (schema 8)
    monkeypatch.setattr(store_module, "_NEXT_TASK_SQL", {
        informative: sql.replace("AND t.id NOT IN (SELECT task_id FROM revealed_tasks)", "").replace(
            "AND t.id NOT IN (SELECT task_id FROM task_senders WHERE sender IN (SELECT value FROM json_each(:senders)))",
            "")
        for informative, sql in store_module._NEXT_TASK_SQL.items()})
    old = Store(tmp_path / "data")
    make_tasks(old, 2)
    tasks = [old.next_task(name) for name in ("ann", "bo")]
    old.close()
    with sqlite3.connect(old.db_path) as db:  # votes as the previous code wrote them (it knew no undo)
        for assignment_id, (task, skipped) in enumerate(zip(tasks, (0, 1)), start=1):
            db.execute("INSERT INTO rankings (assignment_id, all_bad, skipped, created_at, comment) "
                       "VALUES (?, 0, ?, ?, 'old')", (assignment_id, skipped, time.time()))
            db.executemany("INSERT INTO ranking_entries (ranking_id, candidate_id, rank) VALUES (?, ?, ?)",
                           [(assignment_id, candidate, None if skipped else rank) for rank, (candidate,) in
                            enumerate(db.execute("SELECT candidate_id FROM task_candidates WHERE task_id = ?",
                                                 (task.id,)).fetchall(), start=1)])
        db.execute("DELETE FROM open_assignments")
    monkeypatch.undo()
    migrated = Store(tmp_path / "data")
    assert migrated.schema_version == len(MIGRATIONS) and migrated.integrity_check() == "ok"
    votes = migrated.rankings()
    assert [(r.id, r.annotator, r.skipped, r.comment) for r in votes] == [(1, "ann", False, "old"), (2, "bo", True, "old")]
    assert sorted(votes[0].ranks.values()) == [1, 2]
    with sqlite3.connect(migrated.db_path) as db:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        for statement in ("DELETE FROM rankings", "UPDATE ranking_entries SET rank = 3"):
            with pytest.raises(sqlite3.IntegrityError, match="insert-only"):
                db.execute(statement)
    migrated.undo_vote("bo", 2)
    assert [r.id for r in migrated.rankings()] == [1] and migrated.next_task("bo").id == tasks[1].id
