"""The annotation store: blind assignment, vote rules, idempotency, schema, and refusal of bad input."""

from __future__ import annotations

import io
import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from annotate import InvalidAudio, InvalidInput, InvalidVote, Store, UnusableStore, VoteConflict
from annotate.clips import decode_wav
from annotate.schema import MIGRATIONS
from tests.annotate_helpers import SAMPLE_RATE, make_tasks, tone, vote


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "data")


# ---------------------------------------------------------------- assignment and blindness

def test_task_shows_clips_blind_and_shuffled_per_annotator(store):
    make_tasks(store, 1, clips=4)
    orders = set()
    for i in range(12):
        task = store.next_task(f"annotator-{i}")
        assert task.prompt == "prompt 0"
        for clip in task.candidates:
            assert set(vars(clip)) == {"id", "audio_path"}  # no model, seed or settings
            assert Path(clip.audio_path).name.removesuffix(".wav") == store.candidates([clip.id])[clip.id].sha256
            assert "base" not in clip.id and "dpo" not in clip.id
        orders.add(tuple(c.id for c in task.candidates))
    assert len(orders) > 1, "every annotator saw the same order: the order is not shuffled"


def test_reasking_returns_the_same_open_assignment(store):
    make_tasks(store, 3, clips=3)
    first = store.next_task("alice")
    assert store.next_task("alice") == first
    assert Store(store.data_dir).next_task("alice") == first  # another process/connection too


def test_the_order_shown_is_recorded_with_the_vote(store):
    make_tasks(store, 1, clips=4)
    task = store.next_task("alice")
    store.submit("alice", task.id, {c.id: 1 + i // 2 for i, c in enumerate(task.candidates)}, time_spent_s=12.5,
                 play_counts={task.candidates[0].id: 3})
    [ranking] = store.rankings()
    assert ranking.shown_order == [c.id for c in task.candidates]
    assert ranking.ranks == {c.id: 1 + i // 2 for i, c in enumerate(task.candidates)}
    assert ranking.play_counts[task.candidates[0].id] == 3 and ranking.time_spent_s == 12.5


def test_never_repeats_a_task_voted_or_skipped(store):
    make_tasks(store, 3)
    seen = [vote(store, "alice"), vote(store, "alice", skip=True), vote(store, "alice", all_bad=True)]
    assert len(set(seen)) == 3
    assert store.next_task("alice") is None
    assert {r.task_id for r in store.rankings()} == {1, 2, 3}


def test_tasks_short_of_target_overlap_come_first_and_fill_up(tmp_path):
    store = Store(tmp_path, target_overlap=2)
    make_tasks(store, 3)
    assert [store.next_task(name).id for name in ("a", "b", "c", "d", "e", "f")] == [1, 1, 2, 2, 3, 3]
    # Every task is at its target: a newcomer still gets work (more overlap is still useful).
    assert store.next_task("g").id == 1


def test_skips_do_not_count_towards_overlap(tmp_path):
    store = Store(tmp_path, target_overlap=1)
    make_tasks(store, 2)
    vote(store, "a", skip=True)
    assert store.next_task("b").id == 1


def test_abandoned_assignments_stop_holding_their_task(tmp_path):
    store = Store(tmp_path, target_overlap=1, assignment_ttl_s=0.0)
    make_tasks(store, 2)
    assert store.next_task("a").id == 1  # a leaves without voting
    assert store.next_task("b").id == 1  # a's stale assignment no longer fills the task


def test_informative_first_prefers_the_closest_automatic_scores(tmp_path):
    store = Store(tmp_path, informative_first=True)
    make_tasks(store, 3)
    spreads = {1: 0.9, 2: 0.05, 3: 0.4}
    for task_id, spread in spreads.items():
        first, second = [c for c in store.candidates().values() if c.prompt == f"prompt {task_id - 1}"]
        store.set_auto_score(first.id, 0.5)
        store.set_auto_score(second.id, 0.5 + spread)
    assert [store.next_task(name).id for name in ("a", "b", "c")] == [2, 2, 2]
    assert Store(tmp_path, informative_first=False).next_task("d").id == 1


def test_a_withdrawn_task_is_never_assigned_again_and_closes_its_open_assignments(store):
    first, second = make_tasks(store, 2)
    assert store.next_task("ann").id == first and store.open_task_id("ann") == first
    store.withdraw_task(first, "clip x cannot be read: No such file or directory")
    store.withdraw_task(first, "again")  # once withdrawn, stays as it was
    assert store.open_task_id("ann") is None and store.open_task_id("nobody") is None
    assert store.next_task("ann").id == second and store.next_task("bob").id == second
    [withdrawn] = store.withdrawn_tasks()
    assert (withdrawn.task_id, withdrawn.prompt, withdrawn.reason) == (first, "prompt 0", "clip x cannot be read: "
                                                                       "No such file or directory")
    assert [task_id for task_id, _, _ in store.task_progress()] == [second]
    with pytest.raises(InvalidInput, match="unknown `task_id` 99"):
        store.withdraw_task(99, "no such task")
    with sqlite3.connect(store.db_path) as db, pytest.raises(sqlite3.IntegrityError, match="insert-only"):
        db.execute("UPDATE withdrawn_tasks SET reason = 'rewritten'")  # its clips back, a row goes (reinstate_readable)


def test_reveal_only_after_a_ranking_of_clips_all_played(store):
    """Issue 19: a skip, an all-bad vote or a ranking without every clip played cost no judgement: they reveal
    nothing (a skip used to hand out the clip-to-model map)."""
    make_tasks(store, 1)
    votes = {"skip": {"skip": True}, "all-bad": {"all_bad": True, "play_counts": "all"},
             "half-heard": {"ranking": True, "play_counts": "first"}, "ranked": {"ranking": True, "play_counts": "all"}}
    for name, vote in votes.items():
        task = store.next_task(name)
        with pytest.raises(InvalidVote, match="models stay hidden"):
            store.reveal(name, task.id)
        ids = [c.id for c in task.candidates]
        plays = {"all": dict.fromkeys(ids, 1), "first": {ids[0]: 1}}.get(vote.get("play_counts"))
        ranking = {clip_id: i + 1 for i, clip_id in enumerate(ids)} if vote.get("ranking") else None
        store.submit(name, task.id, ranking, skip=vote.get("skip", False), all_bad=vote.get("all_bad", False),
                     play_counts=plays)
        if name != "ranked":
            with pytest.raises(InvalidVote, match="models stay hidden"):
                store.reveal(name, task.id)
    revealed = store.reveal("ranked", task.id)
    assert list(revealed) == ids and sorted(revealed.values()) == ["base", "dpo"]  # in the order shown
    assert store.vote_of("ranked", task.id).ranks == ranking and store.vote_of("nobody", task.id) is None


def test_threads_can_share_one_store(store):
    make_tasks(store, 10)
    errors = []

    def annotate(name):
        try:
            while store.next_task(name) is not None:
                vote(store, name)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=annotate, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.counts()["rankings"] == 80


# ---------------------------------------------------------------- votes: ties, idempotency, insert-only

@pytest.mark.parametrize("ranks", [(1, 1, 2), (1, 2, 3), (1, 1, 1), (2, 1, 2), (3, 2, 1)])
def test_dense_ranks_with_ties_are_valid(store, ranks):
    make_tasks(store, 1, clips=3)
    vote(store, "alice", ranks)
    assert sorted(store.rankings()[0].ranks.values()) == sorted(ranks)


def test_identical_resubmit_is_idempotent_and_a_different_one_conflicts(store):
    make_tasks(store, 1, clips=3)
    task = store.next_task("alice")
    ranking = {c.id: i + 1 for i, c in enumerate(task.candidates)}
    vote_id = store.submit("alice", task.id, ranking, time_spent_s=5.0)
    before = store.counts()
    assert store.submit("alice", task.id, list(ranking.items()), time_spent_s=7.0) == vote_id  # a retry
    assert store.counts() == before
    with pytest.raises(VoteConflict):
        store.submit("alice", task.id, {c.id: 1 for c in task.candidates})
    with pytest.raises(VoteConflict):
        store.submit("alice", task.id, skip=True)
    assert store.counts() == before


def test_votes_are_insert_only_in_the_database(store):
    make_tasks(store, 1)
    vote(store, "alice")
    with sqlite3.connect(store.db_path) as db:
        for statement in ("UPDATE rankings SET all_bad = 1", "DELETE FROM rankings",
                          "UPDATE ranking_entries SET rank = 2", "DELETE FROM assignments"):
            with pytest.raises(sqlite3.IntegrityError, match="insert-only"):
                db.execute(statement)


# ---------------------------------------------------------------- clips

def test_clips_are_content_addressed_and_idempotent(store):
    audio = tone(440)
    first = store.add_candidate("p", audio, model="m", seed=0, steps=10, guidance=3.0, sample_rate=SAMPLE_RATE)
    again = store.add_candidate("p", audio, model="m", seed=0, steps=10, guidance=3.0, sample_rate=SAMPLE_RATE)
    other = store.add_candidate("p", audio, model="m", seed=1, steps=10, guidance=3.0, sample_rate=SAMPLE_RATE)
    assert again == first and other.id != first.id and other.audio_path == first.audio_path
    assert len(list(store.audio_dir.rglob("*.wav"))) == 1
    samples, rate = decode_wav(Path(first.audio_path).read_bytes())
    assert rate == SAMPLE_RATE and np.array_equal(samples, audio)  # lossless


def test_a_stereo_file_is_mixed_down_to_mono(store, tmp_path):
    left, right = tone(300), tone(500)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    clip = store.add_candidate("p", path, model="m", seed=0, steps=10, guidance=3.0)
    samples, _ = decode_wav(Path(clip.audio_path).read_bytes())
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-7)


# ---------------------------------------------------------------- schema

def test_schema_is_versioned_and_migrated_once(store):
    assert store.schema_version == len(MIGRATIONS)
    make_tasks(store, 1)
    reopened = Store(store.data_dir)
    assert reopened.schema_version == len(MIGRATIONS) and reopened.counts()["tasks"] == 1
    with sqlite3.connect(store.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(UnusableStore, match="schema version"):
        Store(store.data_dir)


def test_a_file_that_is_not_a_database_is_refused_as_such(tmp_path):
    (tmp_path / "annotate.sqlite").write_bytes(b"not a database, but long enough to have a header: " * 4)
    with pytest.raises(UnusableStore, match="is not a usable annotation store: file is not a database"):
        Store(tmp_path)


def test_an_empty_store_removes_itself_and_one_with_data_stays(tmp_path):
    empty = Store(tmp_path / "empty")
    assert empty.is_empty() and empty.remove_if_empty()
    assert list((tmp_path / "empty").iterdir()) == []
    store = Store(tmp_path / "data")
    make_tasks(store, 1)
    assert not store.is_empty() and not store.remove_if_empty() and store.counts()["tasks"] == 1


# ---------------------------------------------------------------- names are names

@pytest.mark.parametrize("name", ["../../etc/passwd", "/tmp/x", "C:\\Windows", "Robert'); DROP TABLE rankings;--",
                                  "名前", "a" * 64])
def test_unusual_but_printable_names_are_just_names(store, name):
    make_tasks(store, 1)
    before = sorted(p.relative_to(store.data_dir) for p in store.data_dir.rglob("*"))
    vote(store, name)
    assert store.rankings()[0].annotator == name
    after = sorted(p.relative_to(store.data_dir) for p in store.data_dir.rglob("*"))
    assert before == after  # no file named after the annotator, anywhere


# ---------------------------------------------------------------- bad input: clear error, nothing written

def _wav_bytes(samples, rate=SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _candidate(**overrides):
    arguments = dict(model="m", seed=0, steps=10, guidance=3.0, sample_rate=SAMPLE_RATE) | overrides
    prompt, audio = arguments.pop("prompt", "a prompt"), arguments.pop("audio", tone(440))
    return lambda store, ctx: store.add_candidate(prompt, audio, **arguments)


def _submit(ranking=None, annotator="alice", task="alice", plays=None, **flags):
    """Submit as ``annotator`` on the task assigned to ``task``; ``ranking`` and ``plays`` may be
    functions of the clips shown."""
    def call(store, ctx):
        shown = ctx[task].candidates
        built = ranking(shown) if callable(ranking) else ranking
        play_counts = plays(shown) if plays else None
        return store.submit(annotator, ctx[task].id, built, play_counts=play_counts, **flags)
    return call


def _full(shown):
    return {c.id: i + 1 for i, c in enumerate(shown)}


BAD_INPUT = {
    # votes
    "unknown task": (InvalidVote, lambda store, ctx: store.submit("alice", 999, {"x": 1})),
    "task id beyond 64 bits": (InvalidVote, lambda store, ctx: store.submit("alice", 2**64, {"x": 1})),
    "task id not an int": (InvalidVote, lambda store, ctx: store.submit("alice", "1", {"x": 1})),
    "task id is a bool": (InvalidVote, lambda store, ctx: store.submit("alice", True, {"x": 1})),
    "unknown annotator": (InvalidVote, _submit(_full, annotator="mallory")),
    "someone else's task": (InvalidVote, _submit(_full, task="bob")),
    "ranking too short": (InvalidVote, _submit(lambda shown: {c.id: i + 1 for i, c in enumerate(shown[:-1])})),
    "ranking names a clip not shown": (InvalidVote, _submit(lambda shown: _full(shown) | {"feedbeefcafe0000": 4})),
    "empty ranking": (InvalidVote, _submit({})),
    "no ranking at all": (InvalidVote, _submit(None)),
    "duplicate clip": (InvalidVote, _submit(lambda shown: [(shown[0].id, 1), (shown[0].id, 2), (shown[1].id, 3)])),
    "non-integer rank": (InvalidVote, _submit(lambda shown: {c.id: float(i + 1) for i, c in enumerate(shown)})),
    "string rank": (InvalidVote, _submit(lambda shown: {c.id: str(i + 1) for i, c in enumerate(shown)})),
    "bool rank": (InvalidVote, _submit(lambda shown: {c.id: True for c in shown})),
    "rank 0": (InvalidVote, _submit(lambda shown: {c.id: i for i, c in enumerate(shown)})),
    "negative rank": (InvalidVote, _submit(lambda shown: {c.id: -1 - i for i, c in enumerate(shown)})),
    "gap in ranks": (InvalidVote, _submit(lambda shown: {c.id: 1 + 2 * i for i, c in enumerate(shown)})),
    "ranking is a string": (InvalidVote, _submit("1,2,3")),
    "skip with a ranking": (InvalidVote, _submit(_full, skip=True)),
    "skip and all bad": (InvalidVote, _submit(None, skip=True, all_bad=True)),
    "flag not a bool": (InvalidVote, _submit(None, skip="yes")),
    "negative time spent": (InvalidVote, _submit(_full, time_spent_s=-1.0)),
    "NaN time spent": (InvalidVote, _submit(_full, time_spent_s=math.nan)),
    "play count for a clip not shown": (InvalidVote, _submit(_full, plays=lambda shown: {"feedbeefcafe0000": 1})),
    "negative play count": (InvalidVote, _submit(_full, plays=lambda shown: {shown[0].id: -1})),
    "absurd play count": (InvalidVote, _submit(_full, plays=lambda shown: {shown[0].id: 10**9})),
    # annotator names
    "empty name": (InvalidInput, lambda store, ctx: store.next_task("")),
    "blank name": (InvalidInput, lambda store, ctx: store.next_task("   ")),
    "name with surrounding spaces": (InvalidInput, lambda store, ctx: store.next_task(" alice")),
    "name with a newline": (InvalidInput, lambda store, ctx: store.next_task("alice\nbob")),
    "name with a NUL": (InvalidInput, lambda store, ctx: store.next_task("alice\x00")),
    "name with a zero-width space": (InvalidInput, lambda store, ctx: store.next_task("al\u200bice")),
    "name with a bidi override": (InvalidInput, lambda store, ctx: store.next_task("\u202eecila")),
    "huge name": (InvalidInput, lambda store, ctx: store.next_task("x" * 10_000_000)),
    "name not a string": (InvalidInput, lambda store, ctx: store.next_task(42)),
    "huge name on submit": (InvalidInput, lambda store, ctx: store.submit("x" * 100_000, ctx["alice"].id, {"x": 1})),
    # clips
    "missing audio file": (InvalidAudio, _candidate(audio="/nonexistent/clip.wav")),
    "corrupt audio bytes": (InvalidAudio, _candidate(audio=b"RIFF\x00\x00\x00\x00WAVEnot really audio")),
    "truncated wav": (InvalidAudio, _candidate(audio=_wav_bytes(tone(440))[:30])),
    "wrong sample rate file": (InvalidAudio, _candidate(audio=_wav_bytes(tone(440, rate=44100), 44100), sample_rate=None)),
    "wrong sample rate array": (InvalidAudio, _candidate(sample_rate=22050)),
    "array without a sample rate": (InvalidAudio, _candidate(sample_rate=None)),
    "NaN audio": (InvalidAudio, _candidate(audio=np.array([0.0, math.nan, 0.1], dtype=np.float32))),
    "infinite audio": (InvalidAudio, _candidate(audio=np.array([0.0, math.inf], dtype=np.float32))),
    "empty audio": (InvalidAudio, _candidate(audio=np.zeros(0, dtype=np.float32))),
    "2-D array": (InvalidAudio, _candidate(audio=np.zeros((2, 160), dtype=np.float32))),
    "too long audio": (InvalidAudio, _candidate(audio=np.zeros(61 * SAMPLE_RATE, dtype=np.float32))),
    "audio of the wrong type": (InvalidAudio, _candidate(audio=[0.0, 0.1])),
    "empty prompt": (InvalidInput, _candidate(prompt="")),
    "huge prompt": (InvalidInput, _candidate(prompt="a dog " * 100_000)),
    "prompt with a control character": (InvalidInput, _candidate(prompt="a dog\x1b[31m barks")),
    "empty model": (InvalidInput, _candidate(model="")),
    "negative seed": (InvalidInput, _candidate(seed=-1)),
    "seed beyond 64 bits": (InvalidInput, _candidate(seed=2**70)),
    "zero steps": (InvalidInput, _candidate(steps=0)),
    "NaN guidance": (InvalidInput, _candidate(guidance=math.nan)),
    # tasks
    "task with one clip": (InvalidInput, lambda store, ctx: store.add_task([ctx["clips"][0]])),
    "task with a duplicate clip": (InvalidInput, lambda store, ctx: store.add_task([ctx["clips"][0]] * 2)),
    "task with an unknown clip": (InvalidInput, lambda store, ctx: store.add_task([ctx["clips"][0], "nope"])),
    "task mixing prompts": (InvalidInput, lambda store, ctx: store.add_task([ctx["clips"][0], ctx["other_prompt_clip"]])),
    "auto score for an unknown clip": (InvalidInput, lambda store, ctx: store.set_auto_score("nope", 0.5)),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_refused_clearly_and_writes_nothing(tmp_path, case):
    error, call = BAD_INPUT[case]
    store = Store(tmp_path, target_overlap=1)  # alice and bob get different tasks
    make_tasks(store, 3, clips=3)
    ctx = {"alice": store.next_task("alice"), "bob": store.next_task("bob")}
    ctx["clips"] = [c.id for c in store.candidates().values() if c.prompt == "prompt 0"]
    ctx["other_prompt_clip"] = next(c.id for c in store.candidates().values() if c.prompt == "prompt 1")
    counts = store.counts()
    files = sorted(store.data_dir.rglob("*.wav"))

    with pytest.raises(error) as raised:
        call(store, ctx)

    message = str(raised.value)
    assert message and len(message) < 500, "errors must be clear and bounded (never echo a huge input)"
    assert store.counts() == counts
    assert sorted(store.data_dir.rglob("*.wav")) == files
    assert not list(store.data_dir.rglob("*.tmp"))
    assert store.integrity_check() == "ok"
