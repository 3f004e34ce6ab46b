"""Reliability of the annotation backend under concurrency and kills (processes, not threads:
processes are how SQLite is really shared, and SIGKILL is how a Space really dies)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from datasets import load_dataset

from annotate import Store
from preference_data.dataset import write_preference_dataset
from tests.annotate_helpers import make_tasks, preference_row, vote

ROOT = Path(__file__).resolve().parent.parent
WRITERS = 50
VOTES_PER_WRITER = 200


def _annotate(data_dir: str, name: str, votes: int, results) -> None:
    store = Store(data_dir)
    results.put((name, [vote(store, name) for _ in range(votes)]))


def test_50_concurrent_writer_processes_store_10000_votes_exactly_once(tmp_path):
    store = Store(tmp_path)
    make_tasks(store, VOTES_PER_WRITER)  # every writer ranks every task once
    context = mp.get_context("fork")
    results = context.Queue()
    writers = [context.Process(target=_annotate, args=(str(tmp_path), f"writer-{i:02d}", VOTES_PER_WRITER, results))
               for i in range(WRITERS)]
    for writer in writers:
        writer.start()
    reported = dict(results.get(timeout=120) for _ in writers)
    for writer in writers:
        writer.join(timeout=30)
        assert writer.exitcode == 0

    vote_ids = [vote_id for ids in reported.values() for vote_id in ids]
    assert len(vote_ids) == WRITERS * VOTES_PER_WRITER == 10_000
    assert len(set(vote_ids)) == len(vote_ids)
    rankings = store.rankings()
    assert sorted(r.id for r in rankings) == sorted(vote_ids)
    assert len({(r.annotator, r.task_id) for r in rankings}) == 10_000  # no task twice for anyone
    assert all(sorted(r.ranks.values()) == [1, 2] for r in rankings)
    assert store.counts()["ranking_entries"] == 20_000
    assert sum(votes for _, votes, _ in store.task_progress()) == 10_000
    assert store.integrity_check() == "ok"


WRITER_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from annotate import Store
    data_dir, name, report_path, pause_at = sys.argv[1:]
    store = Store(data_dir)
    report = os.open(report_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    reported = 0

    def pause_inside_a_vote(statement):
        # Runs as each statement starts: this one is inside the vote's open transaction.
        if statement.startswith("INSERT INTO ranking_entries") and reported == int(pause_at):
            os.write(report, b"paused\\n")
            time.sleep(600)

    store._connection().set_trace_callback(pause_inside_a_vote)
    while (task := store.next_task(name)) is not None:
        vote_id = store.submit(name, task.id, {c.id: i + 1 for i, c in enumerate(task.candidates)})
        os.write(report, f"{task.id} {vote_id}\\n".encode())  # only after submit returned: committed
        reported += 1
""")


def _start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _check_after_kill(data_dir: Path, report: Path) -> Store:
    """The database is sound, and holds every vote a writer reported committed, whole."""
    store = Store(data_dir)
    assert store.integrity_check() == "ok"
    stored = {r.id: r for r in store.rankings()}
    committed = [tuple(map(int, line.split())) for line in _lines(report) if line != "paused"]
    assert committed, "the writers never reported a vote"
    for task_id, vote_id in committed:
        assert stored[vote_id].task_id == task_id
    assert all(set(r.ranks) == set(r.shown_order) for r in stored.values())  # no half-written vote
    assert sum(votes for _, votes, _ in store.task_progress()) == len(stored)  # counters agree
    return store


@pytest.mark.parametrize("kill_after_votes", [3, 41])
def test_writers_killed_at_a_random_moment_lose_no_committed_vote(tmp_path, kill_after_votes):
    make_tasks(Store(tmp_path), 300)
    report = tmp_path / "committed.txt"
    writers = [_start(WRITER_SCRIPT, str(tmp_path), f"writer-{i}", str(report), "-1") for i in range(3)]
    _wait_for(lambda: len(_lines(report)) >= kill_after_votes)
    for writer in writers:
        os.kill(writer.pid, signal.SIGKILL)
    for writer in writers:
        assert writer.wait(timeout=30) == -signal.SIGKILL

    store = _check_after_kill(tmp_path, report)
    for i in range(3):  # the store keeps working: the killed writers' open assignments come back
        vote(store, f"writer-{i}")


def test_a_writer_killed_inside_a_vote_transaction_leaves_no_trace_of_it(tmp_path):
    make_tasks(Store(tmp_path), 20)
    report = tmp_path / "committed.txt"
    writer = _start(WRITER_SCRIPT, str(tmp_path), "writer", str(report), "5")
    _wait_for(lambda: "paused" in _lines(report))
    os.kill(writer.pid, signal.SIGKILL)
    assert writer.wait(timeout=30) == -signal.SIGKILL

    store = _check_after_kill(tmp_path, report)
    assert len(store.rankings()) == 5  # the sixth vote's half-done transaction is gone
    # The killed writer held the write lock: it died with the process, so writing goes on at once.
    started = time.monotonic()
    vote(store, "writer")
    vote(store, "someone-else")
    assert time.monotonic() - started < 5
    assert len(store.rankings()) == 7


EXPORT_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from preference_data.dataset import write_preference_dataset
    from tests.annotate_helpers import preference_row
    out_dir, marker = sys.argv[1:]

    def slow_rows():
        for i in range(1000):
            if i == 70:  # past the first row group: parquet bytes are on disk
                Path(marker).touch()
            if i >= 70:
                time.sleep(0.01)
            yield preference_row(i)

    write_preference_dataset(slow_rows(), out_dir, how_made="killed midway")
""")


def _load(folder: Path, cache: Path):
    return load_dataset(str(folder), split="train", cache_dir=str(cache))


def test_an_export_killed_midway_keeps_the_previous_export_and_a_rerun_succeeds(tmp_path):
    out_dir = tmp_path / "export"
    previous = write_preference_dataset((preference_row(i) for i in range(10)), out_dir, how_made="first export")
    card = (out_dir / "README.md").read_text()

    marker = tmp_path / "writing"
    exporter = _start(EXPORT_SCRIPT, str(out_dir), str(marker))
    _wait_for(marker.exists)
    os.kill(exporter.pid, signal.SIGKILL)
    assert exporter.wait(timeout=30) == -signal.SIGKILL
    assert list(tmp_path.glob(".export.building/data/*.parquet")), "the kill did not land mid-write"

    assert (out_dir / "README.md").read_text() == card
    intact = _load(out_dir, tmp_path / "cache-1")
    assert len(intact) == previous.rows == 10 and intact[0]["prompt"] == "prompt 0"

    rerun = write_preference_dataset((preference_row(i) for i in range(25)), out_dir, how_made="rerun")
    assert rerun.rows == 25 and len(_load(out_dir, tmp_path / "cache-2")) == 25
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == [".export.lock"]
