"""How long `--help` takes for each command line of the project (issue 32: under 0.5 s on an idle machine).

    python bench/cli_help.py                  # 5 runs of each, writes bench/results/cli_help.json
    python bench/cli_help.py --repeat 1 --out /tmp/cli_help.json

Each run is a fresh interpreter started from the repository root, as a user types the command;
the time is wall clock from start to exit. A command that does not exit 0 or prints no usage
line is reported as failed. The machine's load average is recorded beside the times: other
jobs on a shared machine slow every start-up alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "python app.py --help": ["app.py", "--help"],
    "python train_dpo.py --help": ["train_dpo.py", "--help"],
    "python train_grpo.py --help": ["train_grpo.py", "--help"],
    "python train_rounds.py --help": ["train_rounds.py", "--help"],
    "python -m preference.reward --help": ["-m", "preference.reward", "--help"],
    "python -m annotate --help": ["-m", "annotate", "--help"],
    "python -m autopairs.autorank --help": ["-m", "autopairs.autorank", "--help"],
}
GOAL_S = 0.5


def time_help(arguments: list[str]) -> tuple[float, bool]:
    """Seconds one `python ARGUMENTS` took, and whether it exited 0 with a usage line."""
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    return seconds, finished.returncode == 0 and finished.stdout.startswith("usage:")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_help.json", help="result file")
    args = parser.parse_args(argv)
    results = {}
    for name, arguments in COMMANDS.items():
        runs = [time_help(arguments) for _ in range(args.repeat)]
        seconds = [s for s, _ in runs]
        results[name] = {"median_s": round(statistics.median(seconds), 3), "max_s": round(max(seconds), 3),
                         "runs_s": [round(s, 3) for s in seconds], "ok": all(ok for _, ok in runs)}
        print(f"{name:40s} median {results[name]['median_s']:6.2f} s  max {results[name]['max_s']:6.2f} s"
              f"{'' if results[name]['ok'] else '  FAILED'}")
    report = {"goal_s": GOAL_S, "repeat": args.repeat, "python": platform.python_version(), "cpus": os.cpu_count(),
              "load_average_after": [round(load, 2) for load in os.getloadavg()], "commands": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
