"""The README's "Closing the loop", run as written and timed line by line (issue 32: under 15 minutes on 2 cores).

    python bench/readme_loop.py                  # writes bench/results/readme_loop.json
    python bench/readme_loop.py --out /tmp/readme_loop.json

Each line of the README's block runs as typed, from the repository root, except that ``data`` and ``runs/...``
point into a temporary folder (the checkout stays clean). The people are scripted: while the first app serves,
three annotators rank every task through its API (/next_task, /played, /vote, as tests/test_app_loop.py does;
they vote without listening, so the apps run with TANGO_MIN_HEARD_FRACTION=0, as tests.app_helpers.AppProcess
starts them);
the first app is then stopped (the README's Ctrl+C); the last line's app generates once through /generate, which
must come back with the trained model in its DPO column.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.app_helpers import AppProcess, rank_everything  # noqa: E402

ANNOTATORS = ("ann", "ben", "cleo")
GOAL_S = 15 * 60


def readme_loop() -> list[list[str]]:
    """The commands of the README's "Closing the loop" block, each as argv (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index("## Closing the loop"):], re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def in_folder(argv: list[str], folder: Path) -> list[str]:
    """``argv`` with its ``data`` and ``runs/...`` paths moved into ``folder``."""
    return [str(folder / word) if word == "data" or word.startswith(("data/", "runs/")) else word for word in argv]


def run(argv: list[str]) -> float:
    """Seconds a non-app line took; it must succeed."""
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"{shlex.join(argv)} failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "readme_loop.json",
                        help="result file")
    args = parser.parse_args(argv)
    from gradio_client import Client

    pool, first_app, export, train, second_app = readme_loop()
    steps: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="readme-loop-") as folder:
        folder = Path(folder)
        started = time.perf_counter()
        steps["pool"] = run(in_folder(pool, folder))
        print(f"pool: {steps['pool']:.1f} s", flush=True)
        with AppProcess(*in_folder(first_app, folder)[2:], timeout_s=600) as app:
            steps["first app to first page"] = app.seconds_to_first_page
            voting = time.perf_counter()
            votes = sum(rank_everything(Client(app.url, verbose=False), name) for name in ANNOTATORS)
            steps[f"{votes} scripted votes"] = time.perf_counter() - voting
        print(f"app and {votes} votes: {steps['first app to first page'] + steps[f'{votes} scripted votes']:.1f} s",
              flush=True)
        steps["export"] = run(in_folder(export, folder))
        steps["train_dpo.py"] = run(in_folder(train, folder))
        print(f"export {steps['export']:.1f} s, train_dpo.py {steps['train_dpo.py']:.1f} s", flush=True)
        with AppProcess(*in_folder(second_app, folder)[2:], timeout_s=600) as app:
            steps["second app to first page"] = app.seconds_to_first_page
            generating = time.perf_counter()
            *_, details = Client(app.url, verbose=False).predict("two knocks then a hiss", 12, 3.0, 0, 1,
                                                                 api_name="/generate")
            steps["one generation, both columns"] = time.perf_counter() - generating
        dpo_column = details["columns"][1]
        if dpo_column["error"] is not None or not dpo_column["model"].endswith("runs/my-dpo"):
            sys.exit(f"the second app's DPO column did not serve the trained model: {dpo_column}")
        total = time.perf_counter() - started
    for name, seconds in steps.items():
        print(f"{name:32s} {seconds:7.1f} s")
    print(f"{'total':32s} {total:7.1f} s (goal {GOAL_S} s)")
    report = {"goal_s": GOAL_S, "total_s": round(total, 1), "steps_s": {k: round(v, 1) for k, v in steps.items()},
              "commands": [shlex.join(line) for line in (pool, first_app, export, train, second_app)],
              "python": platform.python_version(), "cpus": os.cpu_count(),
              "load_average_after": [round(load, 2) for load in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if total <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
