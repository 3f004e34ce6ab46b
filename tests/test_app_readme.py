"""The API example of docs/app.md, run as written against `python app.py --admins you --leaderboard-every 1
--min-comparisons 1` (the embedded models) with a pool made by the README's own command; and what a second app on
the same port says."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from annotate import Store
from tests.app_helpers import REPO, AppProcess


def readme_block(after: str, language: str, page: str = "README.md") -> str:
    """The first ``language`` block after the heading ``after`` in ``page`` (the README or a docs/ page), as written."""
    text = (REPO / page).read_text()
    section = text[text.index(after):]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("readme") / "data"
    prompts = data.parent / "prompts.txt"
    prompts.write_text("two knocks\n")
    [pool_line] = [line for line in readme_block("## Closing the loop", "bash").splitlines()
                   if line.startswith("python -m annotate pool")]
    command = pool_line.replace("--data-dir data", f"--data-dir {data}").replace("prompts.txt", str(prompts))
    subprocess.run([sys.executable, *command.split()[1:]], cwd=REPO, check=True, capture_output=True, timeout=600)
    with AppProcess("--data-dir", str(data), "--admins", "you", "--leaderboard-every", "1", "--min-comparisons", "1",
                    timeout_s=300) as app:
        yield app, data


def test_the_documented_api_example_runs_as_written(served, capsys):
    app, data = served
    code = readme_block("## API (gradio_client)", "python", page="docs/app.md")
    assert "http://127.0.0.1:7860/" in code
    exec(compile(code.replace("http://127.0.0.1:7860/", app.url), "docs/app.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'model': 'tiny-dpo'" in out and "'win_rate_interval'" in out and "'bt_score'" in out
    assert "'too_few_votes': False" in out
    assert "'pairs': 6" in out  # one 4-clip ranking: every two clips ranked differently
    [vote] = Store(data).rankings()
    assert vote.annotator == "alice" and sorted(vote.ranks.values()) == [1, 2, 3, 4]


def test_refusals_log_no_traceback_and_a_second_app_names_the_busy_port(served):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    app, data = served
    client = Client(app.url, verbose=False)
    with pytest.raises(AppError, match="unknown word 'dog'"):
        client.predict("a dog barks in the rain", 2, 3.0, 0, 1, api_name="/generate")
    with pytest.raises(AppError, match="ask for the next task first"):
        client.predict("nobody", 99, {"A": 1}, api_name="/vote")
    log = app.log.read_text()
    assert "unknown word 'dog'" in log and "Traceback" not in log and "UserWarning" not in log

    second = subprocess.run([sys.executable, "app.py", "--port", str(app.port), "--data-dir", str(data)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode != 0
    assert f"port {app.port} on 127.0.0.1 is in use" in second.stderr and f"--port {app.port + 1}" in second.stderr
    assert "Traceback" not in second.stderr
