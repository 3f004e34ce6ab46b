"""Order pairs: can DPO teach the order of events when every pair contrasts it?

    python experiments/order_dpo.py --pairs runs/order/pairs-0 runs/order/pairs-1 --out runs/order

The pairs come from ``autopairs.autorank`` on multi-event training-split prompts (then / followed by / before / after /
three events) with 8 candidates each and a narrow band (``--min-chosen-score 0.75 --min-margin 0.25
--max-margin 0.5``): by the judge's score (recall x 0.5 for a wrong order / (1 + extra events)) the winner has its
events in order and nothing extra, and the loser is the worst clip 0.25-0.5 below it, mostly the same events in
the wrong order. DPO (β 2000, lr 1e-5, 2 epochs: held-out-prompt loss rose after the first in the earlier runs)
starts from ``tiny``, from the shipped ``tiny-dpo`` (a second round on top of its recall gain), and from ``tiny``
with training timesteps drawn from the noisy half only (``--timestep_range 500 1000``: where the layout is set); the
recipe levers (``RUNS``: SFT on the winners, CRPO, 16 pairs a step, β 500 and 100, min-SNR, and for reordered pairs
each pair with its mirror on the same noise) run with ``--runs``. Any
autorank folders serve as ``--pairs`` (the completeness pairs of the README too). Each
run is judged on 200 training-split validation prompts (``dpo_experiment.VALIDATION_SEED``), and on ``test`` and
``heldout`` prompts (``--eval-seed``), paired against ``tiny``. Stages resume; writes ``OUT/summary.json``.

The answer: bench/results/order-pairs/ (summary.json per folder); read in docs/results.md, "Pairs that contrast order" and the sections after it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dpo_experiment import COMMON, METRICS, VALIDATION_SEED, difference, evaluate, run, write_subsets  # noqa: E402

# name -> (model it starts from, extra train_dpo.py flags)
RUNS = {"from-tiny": ("tiny", []), "from-tiny-dpo": ("tiny-dpo", []),
        "from-tiny-noisy-half": ("tiny", ["--timestep_range", "500", "1000"]),
        # the winners alone (best-of-8 distillation), and DPO anchored on them (CRPO, λ relative to β)
        "sft-from-tiny": ("tiny", ["--loss", "sft", "--learning_rate", "5e-5"]),
        "crpo-from-tiny": ("tiny", ["--loss", "crpo"]),
        "crpo-from-tiny-dpo": ("tiny-dpo", ["--loss", "crpo"]),
        # as many steps as from-tiny, 4x the pairs per step: less noise in each update
        "dpo-batch-16": ("tiny", ["--gradient_accumulation_steps", "4", "--num_train_epochs", "8"]),
        "dpo-beta-500": ("tiny", ["--beta_dpo", "500"]), "dpo-beta-100": ("tiny", ["--beta_dpo", "100"]),
        "dpo-min-snr-5": ("tiny", ["--snr_gamma", "5"]),
        # reordered pairs (experiments/reordered_pairs.py): each pair with its mirror, on the same noise
        "mirror-batches-from-tiny": ("tiny", ["--mirror_batches"]),
        "mirror-batches-from-tiny-dpo": ("tiny-dpo", ["--mirror_batches"]),
        # ... and one DPO term per pair and its mirror, on their summed margins: the stated order's effect alone
        "mirror-margin-from-tiny": ("tiny", ["--mirror_margin"])}
# the DPO experiment's recipe with 2 epochs instead of 4 (argparse keeps the last value of a repeated flag)
RECIPE = [*COMMON, "--num_train_epochs", "2", "--loss", "dpo", "--beta_dpo", "2000"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, nargs="+", required=True, help="autorank dataset folders")
    parser.add_argument("--out", type=Path, default=Path("runs/order"))
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--eval-seed", type=int, default=424_242)
    parser.add_argument("--splits", default="val,test,heldout")
    parser.add_argument("--runs", default=",".join(RUNS), help="which of the runs")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.runs.split(",")) - set(RUNS))
    if unknown:
        parser.error(f"--runs: unknown {', '.join(unknown)}; the runs are {', '.join(RUNS)}")
    runs = {name: RUNS[name] for name in args.runs.split(",")}
    counts = write_subsets(args.pairs, args.out / "merged", seed=0)["all"]
    dataset = args.out / "merged" / "all"
    # runs and splits of earlier calls stay in the summary: one call may add a run, another its test split
    path = args.out / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    summary["pairs"] = counts
    seeds = {"val": VALIDATION_SEED, "test": args.eval_seed, "heldout": args.eval_seed}
    for name, (start, flags) in runs.items():
        tuned = args.out / f"dpo-{name}"
        if not (tuned / "model_index.json").is_file():
            run([sys.executable, "train_dpo.py", "--pretrained_model", start, "--dataset", str(dataset),
                 "--output_dir", str(tuned), *RECIPE, *flags], args.out / f"train-{name}.log")
        metrics = json.loads((tuned / "train_metrics.json").read_text())
        summary["runs"].setdefault(name, {}).update({"train_pairs": metrics["train_pairs"], "held_out_prompts": [
            {key: check[key] for key in ("epoch", "val_loss", "val_implicit_acc")} for check in metrics["validation"]]})
    for split in args.splits.split(","):
        prompts = "train" if split == "val" else split
        base = args.out / "eval" / f"{split}-tiny.json"
        evaluate("tiny", prompts, args.eval_n, seeds[split], base)
        for name in runs:
            report = evaluate(str(args.out / f"dpo-{name}"), prompts, args.eval_n, seeds[split],
                              args.out / "eval" / f"{split}-{name}.json", compare=base)
            summary["runs"][name][split] = {
                **{metric: report.get(metric) for metric in METRICS},
                **{f"{metric}_minus_tiny": difference(report["compared_to"], metric) for metric in METRICS}}
            print(f"{split:>8} {name:>20}: " + "  ".join(
                f"{metric} {summary['runs'][name][split][metric + '_minus_tiny']}"
                for metric in ("event_recall", "order_accuracy", "mean_score")), flush=True)
        path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


if __name__ == "__main__":
    main()
