"""The pictures the README and docs/ show, drawn from the results files (issue 30, item 2).

    python -m experiments.figures                    # every figure into docs/
    python experiments/figures.py --out /tmp/figures --only forest-tiny-dpo

Forest plots: each model minus a baseline (``tiny`` mostly), per measure, with its 95 % paired-bootstrap interval,
one panel per split. They read ``soundworld.evaluate`` reports written with ``--compare`` (their ``compared_to``),
one file per model and split; or, with ``file.json#key/key`` naming where in a file, the summaries the experiment
scripts write (``<metric>_minus_<baseline>``: ``"+0.054 [+0.027, +0.082]"`` or ``{difference, interval}``; or,
under a key that ends ``minus <baseline>``, ``<metric>: [difference, [low, high]]``); or the
``experiments/grpo_evaluation.py`` reports in ``bench/results/grpo/`` (that script draws its own with
:func:`forest_plot` too; none is there yet: see docs/results.md). A panel's title gives its prompts' number and seed
only where every file behind it states them. A
difference is blue when its interval lies on the good side of 0, red when on the bad side, grey when it crosses 0.

Training curves: redrawn from the metrics file a training script wrote, by that script's own plotting function
(``train_grpo.plot_curves``, ``soundworld.train_tiny.plot_training_curves``). A figure whose results files are
missing is skipped, saying so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repository's packages

RESULTS = ROOT / "bench" / "results"
SPLITS = ("validation", "test", "heldout")
METRIC_LABELS = {"event_recall": "recall", "order_accuracy": "order", "count_accuracy": "count",
                 "mean_score": "score", "extra_events": "extra events / clip"}
LOWER_IS_BETTER = {"extra_events"}

# Forest plots: output name -> (title, baseline as the files name it, {split: {model label: source}}); a source is a
# soundworld.evaluate report with compared_to, or "file.json#key/key" for the paired differences inside a summary.
FORESTS = {
    "forest-tiny-dpo": ("the shipped tiny-dpo at the default sampler", "tiny", {
        "test": {"tiny-dpo": "shipped-default-eval/test-tiny-dpo.json"},
        "heldout": {"tiny-dpo": "shipped-default-eval/heldout-tiny-dpo.json"},
    }),
    "forest-order-pairs": ("DPO on order pairs (76 pairs; 168 for the last row)", "tiny", {
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
    "forest-order-levers": ("recipe levers on the 168 order pairs (levers-validation.json: 200 train-split prompts, "
                            "seed 987661)", "tiny", {
        "validation": {label: f"order-pairs/168-pairs/levers-validation.json#runs/{run}" for label, run in (
            ("SFT on the winners", "sft-from-tiny"), ("CRPO", "crpo-from-tiny"),
            ("CRPO from tiny-dpo", "crpo-from-tiny-dpo"), ("DPO, 16 pairs a step", "dpo-batch-16"),
            ("DPO beta 500", "dpo-beta-500"), ("DPO beta 100", "dpo-beta-100"), ("DPO min-SNR-5", "dpo-min-snr-5"))},
    }),
    "forest-dpo-strategies": ("Diffusion-DPO on self-generated pairs (beta 2000; paired differences stored for "
                              "validation only)", "tiny", {
        "validation": {"mixed, 79 pairs (tiny-dpo)": "dpo-strategies/val-mixed-dpo-b2000.json",
                       "all, 241 pairs": "dpo-strategies/val-all-dpo-b2000.json"},
    }),
    "forest-dpo-rounds": ("two rounds of DPO on re-encoded audio (previous sessions)", "tiny", {
        "heldout": {"round 1": "dpo-rounds/eval/dpo-r1-heldout.json",
                    "round 2": "dpo-rounds/eval/dpo-r2-heldout.json"},
        "test": {"round 2": "dpo-rounds/eval/dpo-r2-test.json"},
    }),
    "forest-completeness-pairs": ("pairs that contrast completeness (140 pairs), with order pairs (308), and in order "
                                  "against the worst (105)", "tiny", {
        "validation": {"shipped tiny-dpo": "order-pairs/completeness-pairs/val-shipped-tiny-dpo.json",
                       "from tiny": "order-pairs/completeness-pairs/summary.json#runs/from-tiny/val",
                       "CRPO from tiny": "order-pairs/completeness-pairs/summary.json#runs/crpo-from-tiny/val",
                       "from tiny-dpo": "order-pairs/completeness-pairs/summary.json#runs/from-tiny-dpo/val",
                       "+ order pairs, from tiny":
                           "order-pairs/completeness-pairs/with-order-pairs.json#runs/from-tiny/val",
                       "+ order pairs, from tiny-dpo":
                           "order-pairs/completeness-pairs/with-order-pairs.json#runs/from-tiny-dpo/val",
                       "in order vs worst, from tiny": "order-pairs/in-order-vs-worst/summary.json#runs/from-tiny/val",
                       "in order vs worst, from tiny-dpo":
                           "order-pairs/in-order-vs-worst/summary.json#runs/from-tiny-dpo/val"},
        "test": {"+ order pairs, from tiny": "order-pairs/completeness-pairs/with-order-pairs.json#runs/from-tiny/test",
                 "in order vs worst, from tiny-dpo":
                     "order-pairs/in-order-vs-worst/summary.json#runs/from-tiny-dpo/test"},
        "heldout": {"+ order pairs, from tiny":
                        "order-pairs/completeness-pairs/with-order-pairs.json#runs/from-tiny/heldout",
                    "in order vs worst, from tiny-dpo":
                        "order-pairs/in-order-vs-worst/summary.json#runs/from-tiny-dpo/heldout"},
    }),
    "forest-reordered-pairs": ("pairs that contrast order and nothing else (1,162 reordered pairs)", "tiny", {
        "validation": {"from tiny": "order-pairs/reordered/summary.json#runs/from-tiny/val",
                       "from tiny-dpo": "order-pairs/reordered/summary.json#runs/from-tiny-dpo/val"},
    }),
    "forest-reward-dpo": ("DPO on 100 pairs ranked by the judge, the learned model or at random (base: tiny)", "base", {
        split: {"judge": f"reward/dpo-judge-vs-reward.json#runs/judge/{split}",
                "learned model": f"reward/dpo-judge-vs-reward.json#runs/reward/{split}",
                "learned model over the event tagger": f"reward/dpo-tagger.json#runs/reward/{split}",
                "random picks": f"reward/dpo-judge-vs-reward.json#runs/random/{split}"}
        for split in ("test", "heldout")}),
    "forest-reward-dpo-versus-random": ("what ranking bought: each ranker's DPO run minus the random picks' run",
                                        "random", {
        split: {"judge": f"reward/dpo-versus-random.json#{split} judge minus random",
                "learned model": f"reward/dpo-versus-random.json#{split} reward minus random",
                "learned model over the event tagger": f"reward/dpo-tagger.json#runs/reward/{split}"}
        for split in ("test", "heldout")}),
}
# Training curves: output name -> (metrics file, "module:function" that drew them when the run wrote them).
CURVES = {
    "curves-grpo-cpu-judge": ("grpo/cpu-judge/train_metrics.json", "train_grpo:plot_curves"),
    "curves-tiny-design-maps": ("tiny-design/maps-training_metrics.json", "soundworld.train_tiny:plot_training_curves"),
}


def paired_differences(source: Path | str, baseline: str | None = None) -> tuple[str, dict, dict]:
    """One model's paired differences from ``source``: a ``soundworld.evaluate`` report made with ``--compare``, or
    ``file.json#key/key`` for a summary's ``<metric>_minus_<baseline>`` entries (a ``"+d [low, high]"`` string or
    ``{difference, interval}``), or, under a key ending ``minus <baseline>``, ``<metric>: [d, [low, high]]``.
    Returns (baseline, metric -> {difference, interval}, the ``n`` and ``seed`` the file states)."""
    path, _, where = str(source).partition("#")
    value = json.loads(Path(path).read_text())
    keys = where.split("/") if where else []
    for key in keys:
        value = value[key]
    if "compared_to" in value:
        compared = value["compared_to"]
        if baseline is not None and compared["model"] != baseline:
            raise ValueError(f"{source}: compared with {compared['model']!r}, not {baseline!r}")
        return compared["model"], {metric: compared[metric] for metric in METRIC_LABELS if compared.get(metric)}, \
            {key: value[key] for key in ("n", "seed") if key in value}
    if baseline is None:
        raise ValueError(f"{source}: no compared_to, so the baseline must be named")
    whole = bool(keys) and keys[-1].endswith(f"minus {baseline}")  # the key says what every metric is minus
    differences = {}
    for metric in METRIC_LABELS:
        entry = value.get(metric) if whole else value.get(f"{metric}_minus_{baseline}")
        if isinstance(entry, str) and entry != "-":  # dpo_experiment.difference: "+0.054 [+0.027, +0.082]"
            difference, low, high = map(float, re.fullmatch(r"\s*(\S+) \[(\S+), (\S+)\]\s*", entry).groups())
            entry = {"difference": difference, "interval": [low, high]}
        elif isinstance(entry, list):
            entry = {"difference": entry[0], "interval": list(entry[1])}
        if isinstance(entry, dict):
            differences[metric] = entry
    if not differences:
        raise ValueError(f"{source}: no paired difference against {baseline!r}")
    return baseline, differences, {}


def report_from_evaluations(files: dict[str, dict[str, Path | str]], title: str = "",
                            baseline: str | None = None) -> dict:
    """A forest plot's report: ``files`` maps split -> model label -> a source of :func:`paired_differences` (a
    ``soundworld.evaluate`` report made with ``--compare`` against the baseline, or ``file.json#key/key``).
    Returns ``grpo_evaluation``'s shape: models (baseline first), and per split ``compared`` (label -> metric ->
    difference and interval) and ``n`` and ``seed`` where every source of the split states the same."""
    report: dict = {"models": [baseline] if baseline else [], "title": title}
    for split, models in files.items():
        section: dict = {"compared": {}}
        stated = []
        for label, source in models.items():
            base, differences, settings = paired_differences(source, report["models"][0] if report["models"] else None)
            if not report["models"]:
                report["models"].append(base)
            section["compared"][label] = differences
            stated.append(settings)
            if label not in report["models"]:
                report["models"].append(label)
        for key in ("n", "seed"):
            values = {settings.get(key) for settings in stated}
            if len(values) == 1 and None not in values:
                section[key] = values.pop()
        report[split] = section
    return report


def forest_plot(report: dict, path: Path) -> None:
    """Each model minus the baseline (``report["models"][0]``), one panel per split present, one row per measure and
    model, with the 95 % interval. ``report`` is ``experiments/grpo_evaluation.py``'s (or
    :func:`report_from_evaluations`'s): per split ``n``, ``compared`` and a ``seed`` there or at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    baseline, others = report["models"][0], report["models"][1:]
    splits = [split for split in SPLITS if split in report]
    rows_per_panel = max(sum(1 for model in others for metric in METRIC_LABELS
                             if report[split]["compared"].get(model, {}).get(metric)) for split in splits)
    figure, axes = plt.subplots(1, len(splits), figsize=(max(8.0, 6.5 * len(splits)), 1.0 + 0.32 * rows_per_panel),
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
        axis.set_ylim(len(rows) - rows_per_panel - 0.5, len(rows) - 0.5)  # rows as tall in every panel, from the top
        axis.xaxis.set_major_locator(MaxNLocator(5))
        axis.axvline(0, color="#888", ls="--")
        seed, n = report[split].get("seed", report.get("seed")), report[split].get("n")
        axis.set_title(f"minus {baseline}, {f'{n} ' if n is not None else ''}{split} prompts"
                       + (f" (seed {seed})" if seed is not None else ""))
        axis.set_xlabel("paired difference, 95 % interval")
    if report.get("title"):
        figure.suptitle(textwrap.fill(report["title"], 70 * len(splits)))
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
            title, baseline, files = FORESTS[name]
            needed = {split: {label: f"{args.results / file}" for label, file in models.items()}
                      for split, models in files.items()}
            files_read = dict.fromkeys(Path(source.partition("#")[0]) for models in needed.values()
                                       for source in models.values())
            missing = [p for p in files_read if not p.is_file()]
            if not missing:
                forest_plot(report_from_evaluations(needed, title, baseline), path)
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
