"""The experiment scripts' pictures: what a reader of the results looks at, drawn from a results file."""

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comparison(difference: float) -> dict:
    return {"difference": difference, "interval": [difference - 0.02, difference + 0.02], "p_not_better": 0.5}


def test_the_grpo_evaluation_draws_its_forest_plot_and_spectrograms_from_a_report(tmp_path):
    evaluation = load_script("grpo_evaluation")
    compared = {name: comparison(0.05) for name in ("event_recall", "order_accuracy", "count_accuracy",
                                                    "mean_score", "extra_events")}
    report = {"models": ["tiny", "tuned"], "seed": 7,
              **{split: {"n": 3, "compared": {"tuned": compared}} for split in evaluation.SPLITS}}
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(report))
    evaluation.forest_plot(json.loads(path.read_text()), tmp_path / "forest.png")
    assert (tmp_path / "forest.png").stat().st_size > 10_000
    rng = np.random.default_rng(0)
    clips = {model: {"a beep": (rng.normal(size=16000).astype(np.float32), ["beep"])} for model in report["models"]}
    evaluation.spectrograms(clips, 16000, tmp_path / "spectrograms.png")
    assert (tmp_path / "spectrograms.png").stat().st_size > 10_000


def test_a_research_script_moved_from_bench_still_runs_at_its_old_path_and_says_where_it_went():
    import subprocess
    import sys

    forwards = [path for path in (ROOT / "bench").glob("*.py") if "run_moved(__file__)" in path.read_text()]
    assert len(forwards) >= 11 and all((ROOT / "experiments" / path.name).is_file() for path in forwards)
    finished = subprocess.run([sys.executable, "bench/order_failures.py", "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 0 and finished.stdout.startswith("usage: order_failures.py")
    assert finished.stderr.strip() == ("bench/order_failures.py moved to experiments/order_failures.py; "
                                       "this path goes in the next release")
