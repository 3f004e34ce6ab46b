"""Tango 2's table in miniature on the embedded `tiny`: which pairs and which recipe make DPO follow prompts.

    python experiments/dpo_experiment.py --out runs/exp            # every stage; rerun to resume
    python experiments/dpo_experiment.py --out runs/exp --stage pairs

Stages (each skipped when its output exists, so a killed run continues):

1. ``pairs``: ``autopairs.autorank`` on ``--prompts`` fresh training-split prompts, K candidates
   each at the model's default steps, with all three strategies (inference, perturbed, temporal);
   every pair keeps its sampled latents.
2. ``subsets``: ``inference`` (the inference pairs only) and ``mixed`` (as many pairs, drawn from
   all three strategies): the same number of pairs and steps, only how the pairs were made differs;
   and ``all`` (every pair: what the generation budget buys).
3. ``sweep``: ``train_dpo.py`` runs, each validated on held-out *prompts* (DPO loss, implicit
   accuracy, margin per epoch): DPO on the mixed pairs for each β in ``BETAS`` at one low
   learning rate, then at the β with the best held-out accuracy the ``COMPARISONS``: inference
   vs mixed pairs (same number of pairs and steps), DPO vs CRPO.
4. ``validate``: the judge on ``--val-n`` training-split validation prompts for every run and the
   base: the only numbers the shipped model is chosen by.
5. ``evaluate``: the chosen run and the base on ``test`` and ``heldout`` (200 prompts each, a seed
   used for nothing else), paired differences with bootstrap intervals.

``OUT/summary.json`` and ``OUT/summary.md`` are rewritten after every stage.

The answer: bench/results/dpo-strategies/ (summary.json; the shipped models at today's sampler: bench/results/shipped-default-eval/); read in docs/results.md, "Diffusion-DPO on the tiny model".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VALIDATION_SEED = 987_654 + 7  # training-split validation prompts: no candidate seed comes near it
COMMON = ["--num_train_epochs", "4", "--train_batch_size", "4", "--lr_scheduler", "constant_with_warmup",
          "--lr_warmup_steps", "10", "--learning_rate", "1e-5", "--validation_fraction", "0.2",
          "--checkpointing_steps", "100000"]
BETAS = (2000, 500, 100)  # swept first, with DPO on the mixed pairs, at one low learning rate
# then, at the β whose held-out-prompt implicit accuracy is best: name -> (pairs subset, loss)
COMPARISONS = {"inference-dpo": ("inference", "dpo"), "mixed-crpo": ("mixed", "crpo"), "all-dpo": ("all", "dpo")}
METRICS = ("event_recall", "order_accuracy", "count_accuracy", "mean_score", "extra_events_per_clip")


def run(command: list[str], log: Path) -> None:
    """Run a stage's command with its output in ``log``; a failure stops the experiment with the log's tail."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if code:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({code}); the end of {log}:\n{tail}")
    print(f"  {time.perf_counter() - started:.0f} s: {' '.join(command[1:6])} ...", flush=True)


def write_subsets(pairs: list[Path], out: Path, seed: int) -> dict:
    """``inference`` and an equally large ``mixed`` subset of the pairs (of one or several autorank folders, e.g.
    generated in parallel on disjoint prompts), as dataset folders (parquet + card)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(f) for folder in pairs for f in sorted((folder / "data").glob("*.parquet"))])
    strategies = np.asarray(table.column("strategy").to_pylist())
    inference = np.flatnonzero(strategies == "inference")
    mixed = np.sort(np.random.default_rng(seed).permutation(len(strategies))[:len(inference)])
    counts = {}
    for name, rows in (("inference", inference), ("mixed", mixed), ("all", np.arange(len(strategies)))):
        folder = out / name
        (folder / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(rows), folder / "data" / "train-00000-of-00001.parquet")
        (folder / "README.md").write_text((pairs[0] / "README.md").read_text().split("\n---\n")[0] + "\n---\n\n"
                                          f"# {name} subset of {', '.join(map(str, pairs))}\n")
        counts[name] = dict(zip(*np.unique(strategies[rows], return_counts=True)))
        counts[name] = {k: int(v) for k, v in counts[name].items()}
    return counts


def evaluate(model: str, split: str, n: int, seed: int, out: Path, compare: Path | None = None) -> dict:
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "soundworld.evaluate", "--model", model, "--prompts", split, "--n", str(n),
                   "--seed", str(seed), "--out", str(out)] + (["--compare", str(compare)] if compare else [])
        run(command, out.with_suffix(".log"))
    return json.loads(out.read_text())


def difference(compared: dict, metric: str) -> str:
    """'+0.012 [-0.003, +0.027]': a paired difference and its 95 % bootstrap interval."""
    entry = compared.get(metric)
    if not entry:
        return "-"
    low, high = entry["interval"]
    return f"{entry['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"


def summarize(out: Path, summary: dict) -> None:
    """summary.json, and summary.md: validation per run (held-out-prompt pairs, judged prompts), the evaluation."""
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    compared = ("event_recall", "order_accuracy", "mean_score")
    lines = ["| run | pairs (train) | steps | held-out-prompt DPO loss | held-out-prompt accuracy | "
             + " | ".join(METRICS) + " | " + " | ".join(f"{m} minus base" for m in compared) + " |",
             "|---|---|---|---|---|" + "---|" * (len(METRICS) + len(compared))]
    for name, row in summary.get("validation", {}).items():
        cells = [row.get(m) for m in METRICS]
        report = out / "eval" / f"val-{name}.json"
        against = json.loads(report.read_text()).get("compared_to", {}) if report.is_file() else {}
        lines.append(f"| {name} | {row.get('pairs', '-')} ({row.get('train_pairs', '-')}) | {row.get('steps', '-')} | "
                     + " | ".join(f"{row[k]:.3f}" if isinstance(row.get(k), float) else "-"
                                  for k in ("val_loss", "val_implicit_acc")) + " | "
                     + " | ".join(f"{c:.3f}" if isinstance(c, float) else "-" for c in cells) + " | "
                     + " | ".join(difference(against, m) for m in compared) + " |")
    for split, against in summary.get("evaluation", {}).items():
        lines += ["", f"{summary['chosen']} minus base, {split} split: "
                  + ", ".join(f"{m} {difference(against, m)}" for m in ("event_recall", "order_accuracy",
                                                                        "count_accuracy", "mean_score"))]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny", help="the base model")
    parser.add_argument("--prompts", type=int, default=200, help="training-split prompts the pairs come from")
    parser.add_argument("--k", type=int, default=3, help="candidates per prompt and per perturbed prompt")
    parser.add_argument("--seed", type=int, default=4242, help="prompts and candidate seeds")
    parser.add_argument("--val-n", type=int, default=200, help="training-split validation prompts judged per run")
    parser.add_argument("--eval-n", type=int, default=200, help="test and heldout prompts of the final evaluation")
    parser.add_argument("--eval-seed", type=int, default=31337, help="evaluation seed, used for nothing else")
    parser.add_argument("--stage", choices=["pairs", "subsets", "sweep", "validate", "evaluate"], default=None,
                        help="stop after this stage")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}

    pairs = sorted(p for p in out.glob("pairs-*") if (p / "README.md").is_file())
    if not pairs:
        pairs = [out / "pairs-all"]
        started = time.perf_counter()
        run([sys.executable, "-m", "autopairs.autorank", "--model", args.model, "--prompts", "train", "--n",
             str(args.prompts), "--k", str(args.k), "--seed", str(args.seed), "--batch-size", "4",
             "--strategies", "inference,perturbed,temporal", "--out", str(pairs[0])], out / "autorank.log")
        summary["pairs_seconds"] = time.perf_counter() - started
    if args.stage == "pairs":
        return 0
    if "subsets" not in summary:
        summary["subsets"] = write_subsets(pairs, out, args.seed)
        summarize(out, summary)
    if args.stage == "subsets":
        return 0
    def train(name: str, subset: str, flags: list[str]) -> None:
        folder = out / "runs" / name
        if not (folder / "train_metrics.json").is_file():
            run([sys.executable, "train_dpo.py", "--pretrained_model", args.model, "--dataset", str(out / subset),
                 "--output_dir", str(folder), "--seed", "0", *COMMON, *flags], out / f"train-{name}.log")
        metrics = json.loads((folder / "train_metrics.json").read_text())
        summary.setdefault("validation", {})[name] = {
            "subset": subset, "flags": flags, "pairs": metrics["pairs"], "train_pairs": metrics["train_pairs"],
            "steps": metrics["steps"], "stored_latent_pairs": metrics["stored_latent_pairs"],
            "train_implicit_acc": metrics.get("implicit_acc"),
            "validation_curve": [{k: r.get(k) for k in ("epoch", "val_loss", "val_implicit_acc", "val_reward_margin")}
                                 for r in metrics["validation"]],
            **{k: v for k, v in metrics["validation"][-1].items() if k.startswith("val_")}}
        summarize(out, summary)

    for beta in BETAS:
        train(f"mixed-dpo-b{beta}", "mixed", ["--loss", "dpo", "--beta_dpo", str(beta)])
    beta = max(BETAS, key=lambda b: summary["validation"][f"mixed-dpo-b{b}"]["val_implicit_acc"])
    summary["beta"] = beta
    for name, (subset, loss) in COMPARISONS.items():
        train(f"{name}-b{beta}", subset, ["--loss", loss, "--beta_dpo", str(beta)])
    if args.stage == "sweep":
        return 0
    base_val = evaluate(args.model, "train", args.val_n, VALIDATION_SEED, out / "eval" / "val-base.json")
    summary.setdefault("validation", {}).setdefault("base", {}).update({m: base_val.get(m) for m in METRICS})
    # The β sweep is read on held-out-prompt pairs; the judge scores the sweep's first β and the comparisons.
    judged = [f"mixed-dpo-b{BETAS[0]}"] + [f"{name}-b{beta}" for name in COMPARISONS]
    for name in judged:
        report = evaluate(str(out / "runs" / name), "train", args.val_n, VALIDATION_SEED,
                          out / "eval" / f"val-{name}.json", out / "eval" / "val-base.json")
        summary["validation"][name].update({m: report.get(m) for m in METRICS})
        summarize(out, summary)
    if args.stage == "validate":
        return 0
    chosen = max(judged, key=lambda name: summary["validation"][name]["mean_score"])
    summary["chosen"] = chosen
    for split in ("test", "heldout"):
        base = out / "eval" / f"{split}-base.json"
        evaluate(args.model, split, args.eval_n, args.eval_seed, base)
        report = evaluate(str(out / "runs" / chosen), split, args.eval_n, args.eval_seed,
                          out / "eval" / f"{split}-{chosen}.json", base)
        summary.setdefault("evaluation", {})[split] = report["compared_to"]
        summarize(out, summary)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
