"""The pictures the README and docs/ show, drawn from the results files (issue 30, item 2).

    python -m experiments.figures                    # every figure into docs/
    python experiments/figures.py --out /tmp/figures --only forest-tiny-dpo

Forest plots: each model minus ``tiny``, per measure, with its 95 % paired-bootstrap interval, one panel per split.
They read ``soundworld.evaluate`` reports written with ``--compare`` (their ``compared_to``), one file per model and
split, or the ``experiments/grpo_evaluation.py`` reports in ``bench/results/grpo/`` (that script draws its own with
:func:`forest_plot` too; none is there yet: see docs/results.md). A
difference is blue when its interval lies on the good side of 0, red when on the bad side, grey when it crosses 0.

Training curves: redrawn from the metrics file a training script wrote, by that script's own plotting function
(``train_grpo.plot_curves``, ``soundworld.train_tiny.plot_training_curves``). A figure whose results files are
missing is skipped, saying so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repository's packages

RESULTS = ROOT / "bench" / "results"
SPLITS = ("validation", "test", "heldout")
METRIC_LABELS = {"event_recall": "recall", "order_accuracy": "order", "count_accuracy": "count",
                 "mean_score": "score", "extra_events": "extra events / clip"}
LOWER_IS_BETTER = {"extra_events"}

# Forest plots: output name -> (title, {split: {model label: soundworld.evaluate report with compared_to}}).
FORESTS = {
    "forest-tiny-dpo": ("the shipped tiny-dpo at the default sampler", {
        "test": {"tiny-dpo": "shipped-default-eval/test-tiny-dpo.json"},
        "heldout": {"tiny-dpo": "shipped-default-eval/heldout-tiny-dpo.json"},
    }),
    "forest-order-pairs": ("DPO on order pairs (76 pairs; 168 for the last row)", {
        "validation": {"from tiny": "order-pairs/val-from-tiny.json",
                       "from tiny-dpo": "order-pairs/val-from-tiny-dpo.json",
                       "noisy half": "order-pairs/val-from-tiny-noisy-half.json",
                       "noisy half, 168 pairs": "order-pairs/168-pairs/val-from-tiny-noisy-half.json"},
        "test": {"from tiny": "order-pairs/test-from-tiny.json",
                 "from tiny-dpo": "order-pairs/test-from-tiny-dpo.json",
                 "noisy half": "order-pairs/test-from-tiny-noisy-half.json",
                 "noisy half, 168 pairs": "order-pairs/168-pairs/test-from-tiny-noisy-half.json"},
        "heldout": {"from tiny": "order-pairs/heldout-from-tiny.json",
                    "from tiny-dpo": "order-pairs/heldout-from-tiny-dpo.json",
                    "noisy half": "order-pairs/heldout-from-tiny-noisy-half.json",
                    "noisy half, 168 pairs": "order-pairs/168-pairs/heldout-from-tiny-noisy-half.json"},
    }),
}
# Training curves: output name -> (metrics file, "module:function" that drew them when the run wrote them).
CURVES = {
    "curves-grpo-cpu-judge": ("grpo/cpu-judge/train_metrics.json", "train_grpo:plot_curves"),
    "curves-tiny-design-maps": ("tiny-design/maps-training_metrics.json", "soundworld.train_tiny:plot_training_curves"),
}


def report_from_evaluations(files: dict[str, dict[str, Path]], title: str = "") -> dict:
    """A forest plot's report from ``soundworld.evaluate`` reports: ``files`` maps split -> model label -> a report
    made with ``--compare`` against the baseline. Returns ``grpo_evaluation``'s shape: models (baseline first),
    and per split ``n``, ``seed`` and ``compared`` (label -> metric -> difference and interval)."""
    report: dict = {"models": [], "title": title}
    for split, models in files.items():
        section: dict = {"compared": {}}
        for label, path in models.items():
            evaluation = json.loads(Path(path).read_text())
            compared = evaluation["compared_to"]
            if not report["models"]:
                report["models"].append(compared["model"])
            elif compared["model"] != report["models"][0]:
                raise ValueError(f"{path}: compared with {compared['model']!r}, not {report['models'][0]!r}")
            section.update(n=evaluation["n"], seed=evaluation["seed"])
            section["compared"][label] = {metric: compared[metric] for metric in METRIC_LABELS if compared.get(metric)}
            if label not in report["models"]:
                report["models"].append(label)
        report[split] = section
    return report


def forest_plot(report: dict, path: Path) -> None:
    """Each model minus the baseline (``report["models"][0]``), one panel per split present, one row per measure and
    model, with the 95 % interval. ``report`` is ``experiments/grpo_evaluation.py``'s (or
    :func:`report_from_evaluations`'s): per split ``n``, ``compared`` and a ``seed`` there or at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline, others = report["models"][0], report["models"][1:]
    splits = [split for split in SPLITS if split in report]
    rows_per_panel = max(sum(1 for model in others for metric in METRIC_LABELS
                             if report[split]["compared"].get(model, {}).get(metric)) for split in splits)
    figure, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 1.0 + 0.32 * rows_per_panel),
                                squeeze=False)
    for axis, split in zip(axes[0], splits):
        compared = report[split]["compared"]
        rows = [(f"{METRIC_LABELS[metric]}: {model}", metric, compared[model][metric])
                for metric in METRIC_LABELS for model in others if compared.get(model, {}).get(metric)]
        for y, (_, metric, row) in enumerate(reversed(rows)):
            low, high = row["interval"]
            better, worse = (high < 0, low > 0) if metric in LOWER_IS_BETTER else (low > 0, high < 0)
            colour = "#1f6feb" if better else ("#c0392b" if worse else "#666")
            axis.plot([low, high], [y, y], color=colour, lw=3)
            axis.plot(row["difference"], y, "o", color=colour)
        axis.set_yticks(range(len(rows)), [label for label, _, _ in reversed(rows)])
        axis.axvline(0, color="#888", ls="--")
        seed = report[split].get("seed", report.get("seed"))
        axis.set_title(f"minus {baseline}, {report[split]['n']} {split} prompts (seed {seed})")
        axis.set_xlabel("paired difference, 95 % interval")
    if report.get("title"):
        figure.suptitle(report["title"])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def training_curves(metrics: Path, drawer: str, path: Path) -> None:
    """Redraw a run's curves from its metrics file with the function that drew them (``module:function``)."""
    import importlib

    module, function = drawer.split(":")
    getattr(importlib.import_module(module), function)(json.loads(metrics.read_text()), path)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder the results files are read from")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="the folder the PNGs are written to")
    parser.add_argument("--only", nargs="+", choices=[*FORESTS, *CURVES], help="draw only these figures")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in args.only or [*FORESTS, *CURVES]:
        path = args.out / f"{name}.png"
        if name in FORESTS:
            title, files = FORESTS[name]
            needed = {split: {label: args.results / file for label, file in models.items()}
                      for split, models in files.items()}
            missing = [p for models in needed.values() for p in models.values() if not p.is_file()]
            if not missing:
                forest_plot(report_from_evaluations(needed, title), path)
        else:
            metrics, drawer = CURVES[name]
            missing = [] if (args.results / metrics).is_file() else [args.results / metrics]
            if not missing:
                training_curves(args.results / metrics, drawer, path)
        if missing:
            print(f"{name}: skipped, missing {', '.join(map(str, missing))}", file=sys.stderr)
            continue
        written.append(path)
        print(f"wrote {path}")
    if not args.only:
        for report in sorted(args.results.glob("grpo/*evaluation*.json")):  # experiments/grpo_evaluation.py's
            written.append(args.out / f"forest-grpo-{report.stem}.png")
            forest_plot(json.loads(report.read_text()), written[-1])
            print(f"wrote {written[-1]}")
    return written


if __name__ == "__main__":
    main()
