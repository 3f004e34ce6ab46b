"""Data that survives: scheduled backups of the store to a dataset repo, and restoring them on start."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from annotate import Store
from annotate.export import (BackupRefused, PushError, ScheduledPush, ShrinkingBackup, export_human_pairs,
                             restore_from_hub)
from tests.annotate_helpers import make_tasks, vote
from tests.test_annotate_export import files_in
from tests.local_hub import LocalHub

TOKEN = "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123"
REPO = "me/tango-prefs"
ROOT = Path(__file__).resolve().parents[1]


def _votes(store: Store) -> list[tuple]:
    return [(r.id, r.task_id, r.annotator, r.ranks, r.skipped, r.comment) for r in store.rankings()]


def test_scheduled_push_backs_up_the_store_beside_the_export(tmp_path):
    store = Store(tmp_path / "data")
    make_tasks(store, 3)
    hub = LocalHub(tmp_path / "hub")
    export = tmp_path / "data" / "export"
    scheduler = ScheduledPush(export, REPO, every=60, token=TOKEN, api=hub, store=store,
                              before_push=lambda: export_human_pairs(store, export))
    try:
        deadline = time.monotonic() + 30
        while not hub.commits:  # the first push runs at start: no vote yet, but the clips are worth keeping
            assert time.monotonic() < deadline
            time.sleep(0.01)
        repo = hub.repo(REPO)
        assert (repo / "backup" / "annotate.sqlite").is_file() and not (repo / "data").exists()
        assert len(list((repo / "backup" / "audio").rglob("*.wav"))) == 6
        assert hub.commits[0]["delete_patterns"] == ["backup/*"]  # no export yet: remote data/ is left alone
        assert scheduler.trigger().result() is None  # nothing changed: no commit
        vote(store, "ann")
        assert scheduler.trigger().result() is not None
    finally:
        scheduler.stop()
    assert sorted(hub.commits[-1]["delete_patterns"]) == ["backup/*", "data/*"]
    assert (repo / "README.md").is_file() and list((repo / "data").glob("train-*.parquet"))
    restored = tmp_path / "restored"
    assert restore_from_hub(restored, REPO, token=TOKEN, api=hub) == 1
    assert _votes(Store(restored)) == _votes(store)
    assert Store(restored).integrity_check() == "ok"
    assert {c.sha256 for c in Store(restored).candidates().values()} == {c.sha256 for c in store.candidates().values()}
    assert all(Path(c.audio_path).is_file() for c in Store(restored).candidates().values())


APP = """
import sys, time
sys.path.insert(0, {root!r})
from annotate import Store
from annotate.export import ScheduledPush
from tests.annotate_helpers import make_tasks, vote
from tests.test_annotate_export import files_in
from tests.local_hub import LocalHub

store = Store({data!r})
make_tasks(store, 12)
scheduler = ScheduledPush({data!r} + "/export", "me/tango-prefs", every=60, token={token!r},
                          api=LocalHub({hub!r}), store=store)
for i in range(8):
    vote(store, f"annotator-{{i % 3}}", comment=f"vote {{i}}")
    print("acknowledged", flush=True)
scheduler.trigger().result()
print("pushed", flush=True)
for i in range(3):
    vote(store, "late-annotator")
print("late votes", flush=True)
time.sleep(600)
"""


def test_kill_delete_restart_loses_no_vote_acknowledged_before_the_last_push(tmp_path):
    """Bar: kill the app, delete its data folder, restart with the same Hub dataset: every vote acknowledged
    before the last push is back."""
    data, hub = str(tmp_path / "data"), str(tmp_path / "hub")
    script = APP.format(root=str(ROOT), data=data, hub=hub, token=TOKEN)
    app = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        while "late votes" not in lines:
            line = app.stdout.readline()
            assert line, f"the app died early: {lines}"
            lines.append(line.strip())
        before_kill = _votes(Store(data))
        os.kill(app.pid, signal.SIGKILL)
        app.wait(timeout=30)
    finally:
        if app.poll() is None:
            app.kill()
    assert lines.count("acknowledged") == 8 and len(before_kill) == 11

    shutil.rmtree(data)
    assert restore_from_hub(data, REPO, token=TOKEN, api=LocalHub(hub)) == 8
    restored = Store(data)
    assert _votes(restored) == before_kill[:8]  # every vote acknowledged before the push, comments included
    assert restored.integrity_check() == "ok"
    # The restored store keeps working: the late annotator gets their tasks again.
    assert vote(restored, "late-annotator") > 8


def test_restore_only_fills_an_empty_data_folder_and_never_guesses_on_errors(tmp_path):
    hub = LocalHub(tmp_path / "hub")
    assert restore_from_hub(tmp_path / "fresh", REPO, token=TOKEN, api=hub) is None  # no repo yet: a first start

    store = Store(tmp_path / "data")
    make_tasks(store, 1)
    vote(store, "ann")
    scheduler = ScheduledPush(tmp_path / "data" / "export", REPO, every=60, token=TOKEN, api=hub, store=store)
    scheduler.trigger().result()
    scheduler.stop()
    assert restore_from_hub(tmp_path / "data", REPO, token=TOKEN, api=hub) is None  # a store is there: untouched

    offline = LocalHub(tmp_path / "hub", fail_with=ConnectionError(f"Name or service not known ({TOKEN})"))
    with pytest.raises(PushError, match="Name or service") as raised:
        restore_from_hub(tmp_path / "empty", REPO, token=TOKEN, api=offline)
    assert TOKEN not in str(raised.value)
    assert not (tmp_path / "empty" / "annotate.sqlite").exists()  # the app must not start empty and overwrite


def backed_up(tmp_path: Path, votes: int = 5) -> tuple[LocalHub, Store]:
    """A store with ``votes`` votes and its backup pushed to the stand-in Hub."""
    store = Store(tmp_path / "data")
    make_tasks(store, votes)
    for _ in range(votes):
        vote(store, "ann")
    hub = LocalHub(tmp_path / "hub")
    scheduler = ScheduledPush(tmp_path / "data" / "export", REPO, every=60, token=TOKEN, api=hub, store=store)
    scheduler.trigger().result()
    scheduler.stop()
    return hub, store


def test_an_empty_store_is_restored_over_and_never_pushed_over_the_backup(tmp_path, caplog):
    """The attack: an empty annotate.sqlite (which `annotate stats` used to create) made the app skip the
    restore, and its first push replaced a 5-vote backup with an empty one."""
    hub, store = backed_up(tmp_path)
    restored = tmp_path / "restored"
    Store(restored)  # a store that holds nothing does not count as one
    assert restore_from_hub(restored, REPO, token=TOKEN, api=hub) == 5
    assert _votes(Store(restored)) == _votes(store)

    commits = len(hub.commits)
    empty = Store(tmp_path / "empty")
    scheduler = ScheduledPush(tmp_path / "empty" / "export", REPO, every=60, token=TOKEN, api=hub, store=empty)
    try:
        with pytest.raises(ShrinkingBackup, match=r"holds 5 vote\(s\) and 10 clip\(s\) this store lacks"):
            scheduler.trigger().result()
    finally:
        scheduler.stop()
    assert len(hub.commits) == commits and "--allow-shrinking-backup" in caplog.text  # the log says what to do

    allowed = ScheduledPush(tmp_path / "empty" / "export", REPO, every=60, token=TOKEN, api=hub, store=empty,
                            allow_shrinking_backup=True)
    try:
        allowed.trigger().result()
    finally:
        allowed.stop()
    assert len(hub.commits) == commits + 1  # replaced on purpose; the commit before still holds the old backup
    assert len(list(name for name in hub.commits[commits - 1]["files"] if name.endswith(".wav"))) == 10


def _damage(repo: Path, how: str) -> None:
    db, clips = repo / "backup" / "annotate.sqlite", sorted((repo / "backup" / "audio").rglob("*.wav"))
    raw = db.read_bytes()
    if how == "zero-byte":
        db.write_bytes(b"")
    elif how == "garbage":
        db.write_bytes(b"this is not a database " * 100)
    elif how == "truncated":
        db.write_bytes(raw[:len(raw) // 2])
    elif how == "corrupted pages":
        db.write_bytes(raw[:3 * 4096] + b"\x55" * 4096 + raw[4 * 4096:])
    elif how == "future schema":
        connection = sqlite3.connect(db)
        connection.execute("PRAGMA user_version = 99")
        connection.close()  # checkpointed into the file: a backup is the database file alone
    elif how == "no database":
        db.unlink()
    elif how == "missing clip":
        clips[0].unlink()
    elif how == "clip not its hash":
        clips[0].write_bytes(clips[0].read_bytes()[:-4] + b"\x00\x00\x80\x3f")


@pytest.mark.parametrize("how, reason", [
    ("zero-byte", "annotate.sqlite is an empty file"),
    ("garbage", "cannot read|file is not a database"),
    ("truncated", "cannot be read|damaged"),
    ("corrupted pages", "cannot be read|damaged"),
    ("future schema", "schema version 99; this code knows 1..[0-9]+: upgrade the app"),
    ("no database", "holds 10 file\\(s\\) but no annotate.sqlite"),
    ("missing clip", "1 of its 10 clips are missing"),
    ("clip not its hash", "does not hash to its name"),
])
def test_a_bad_backup_is_refused_and_the_data_folder_left_as_it_was(tmp_path, how, reason):
    hub, _ = backed_up(tmp_path)
    _damage(hub.repo(REPO), how)
    empty = tmp_path / "empty"
    Store(empty)
    before = files_in(empty)
    for data_dir in (tmp_path / "new", empty):
        with pytest.raises(BackupRefused, match=f"refusing the store backup in {REPO}: .*({reason})") as refused:
            restore_from_hub(data_dir, REPO, token=TOKEN, api=hub)
        assert "\n" not in str(refused.value)
    assert not (tmp_path / "new").exists() and files_in(empty) == before
    assert Store(empty).is_empty()
    assert not list(tmp_path.glob(".*.restore-*"))
