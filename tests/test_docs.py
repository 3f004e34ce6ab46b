"""The README is a front door (issue 30): at most 250 lines, the two commands (run the app, run the tests) in its
first 40, the test command the one CI runs, and every relative link in it and in docs/ resolves to a file."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_COMMAND = "pip install -r requirements.txt && python app.py --admins you"
TEST_COMMAND = ("apt-get update && apt-get install -y chromium && pip install -r requirements.txt "
                "-r requirements-test.txt && python -m pytest")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_is_short_and_opens_with_both_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert RUN_COMMAND in lines[:40] and TEST_COMMAND in lines[:40]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert any(line.endswith(TEST_COMMAND) for line in ci.splitlines())


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_resolves_to_a_file_in_the_repository(page):
    targets = [target for target in LINK.findall(page.read_text())
               if not re.match(r"[a-z]+:", target) and not target.startswith("#")]
    missing = [target for target in targets
               if not (page.parent / target.split("#")[0]).resolve().is_file()
               or REPO not in (page.parent / target.split("#")[0]).resolve().parents]
    assert not missing, f"{page.name}: links to nothing in the repository: {missing}"
