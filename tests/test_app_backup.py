"""Bar: kill the app, delete its data folder, restart it with the same --hub-dataset: every vote
acknowledged before the last push is back. The Hub is a local stand-in (tests/local_hub.py),
installed in the app's process before it starts."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradio_client import Client

from annotate import Store
from tests.annotate_helpers import make_tasks
from tests.app_helpers import REPO, AppProcess
from tests.local_hub import LocalHub

REPO_ID = "me/tango-prefs"
# python -c: replace HfApi by the stand-in, then run app.py's main with the flags that follow.
LAUNCH = """
import sys
sys.path.insert(0, {repo!r})
import annotate.export
from tests.local_hub import LocalHub
annotate.export.HfApi = lambda *args, **kwargs: LocalHub({hub!r})
import app
app.main(sys.argv[1:])
"""


def backed_up_votes(hub: Path) -> int:
    """Votes in the backup the stand-in Hub holds now (read from a copy: the app may push meanwhile)."""
    backup = LocalHub(hub).repo(REPO_ID) / "backup" / "annotate.sqlite"
    if not backup.exists():
        return 0
    with tempfile.TemporaryDirectory() as copy:
        shutil.copy(backup, Path(copy) / "annotate.sqlite")
        return len(Store(copy).rankings())


def vote_through_the_api(url: str, names: list[str]) -> None:
    client = Client(url, verbose=False)
    for name in names:
        task, _ = client.predict(name, api_name="/next_task")
        for clip in task["clips"]:
            client.predict(name, task["task_id"], clip["label"], api_name="/played")
        client.predict(name, task["task_id"], {c["label"]: i for i, c in enumerate(task["clips"], 1)},
                       api_name="/vote")


def test_kill_the_app_delete_its_data_restart_and_every_pushed_vote_is_back(tmp_path):
    data, hub = tmp_path / "data", tmp_path / "hub"
    make_tasks(Store(data), 3)
    flags = ["--data-dir", str(data), "--hub-dataset", REPO_ID, "--push-every", "0.1",  # every 6 s
             "--base-model", "./no-model", "--dpo-model", "./no-model",  # no model needed to rank stored clips
             "--leaderboard-every", "1"]  # the public results count every vote here
    program = ("-c", LAUNCH.format(repo=str(REPO), hub=str(hub)))
    env = {"HF_TOKEN": "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123"}

    app = AppProcess(*flags, program=program, env=env, timeout_s=300)
    try:
        vote_through_the_api(app.url, ["ann", "bob"])
        acknowledged = [(r.annotator, r.ranks) for r in Store(data).rankings()]
        deadline = time.monotonic() + 120
        while backed_up_votes(hub) < 2:  # the next scheduled push carries both votes
            assert time.monotonic() < deadline, app.log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        app.process.kill()  # no shutdown: no last push at exit
        app.process.wait()

    shutil.rmtree(data)
    again = AppProcess(*flags, program=program, env=env, timeout_s=300)
    try:
        assert [(r.annotator, r.ranks) for r in Store(data).rankings()] == acknowledged and len(acknowledged) == 2
        assert "restored 2 votes" in again.log.read_text()
        rows = Client(again.url, verbose=False).predict(api_name="/leaderboard")
        assert {row["model"] for row in rows} == {"base", "dpo"}
    finally:
        again.stop()


def test_a_refused_backup_stops_the_start_with_one_line_and_leaves_the_data_folder_alone(tmp_path):
    """A backup of a newer schema (or damaged, or missing clips) is refused at start: one error line, no
    traceback, nothing written to the data folder."""
    store = Store(tmp_path / "made")
    make_tasks(store, 1)
    backup = LocalHub(tmp_path / "hub").repo(REPO_ID) / "backup"
    store.snapshot(backup)
    connection = sqlite3.connect(backup / "annotate.sqlite")
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    data = tmp_path / "data"
    started = subprocess.run(
        [sys.executable, "-c", LAUNCH.format(repo=str(REPO), hub=str(tmp_path / "hub")), "--data-dir", str(data),
         "--hub-dataset", REPO_ID, "--push-every", "5", "--base-model", "./no-model", "--dpo-model", "./no-model"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_TOKEN": "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123"})
    assert started.returncode == 1 and "Traceback" not in started.stderr
    assert started.stderr.splitlines()[-1].startswith(
        f"error: refusing the store backup in {REPO_ID}: its annotate.sqlite has schema version 99")
    assert not data.exists()
