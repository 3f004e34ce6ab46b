"""Why order accuracy is low: how multi-event clips fail, and whether the wording of the order is the obstacle.

    python experiments/order_failures.py --reports runs/order/eval/test-tiny.json     # failures of judged clips
    python experiments/order_failures.py --probe 96 --model tiny                      # + the rewording probe

1. For each ``soundworld.evaluate`` report, every clip of a prompt with two or more event types is one of: *in
   order*; *missing* (a prompted type never heard, so order cannot be right); *permuted* (every type heard once
   each, in another order); *interleaved* (every type heard, one of them again after another type). Per
   construction (then, followed by, before, after, three events).
2. ``--probe N``: N multi-event training-split prompts in the constructions that do not say the events in their
   temporal order or say it less plainly (before, after, followed by, three events), each generated once as written
   and once rewritten as "A then B" (the same events in the same temporal order, the construction the model
   follows best), same seed, both judged against the original prompt. If the rewrite gains little, the model's
   obstacle is rendering every event, not reading the order words.

Writes ``--out`` (JSON) and prints the tables.

The answer: bench/results/order-pairs/order-failures.json; read in docs/results.md, "Why order does not move".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from soundworld import judge  # noqa: E402
from soundworld.grammar import compose, sample_prompt_specs  # noqa: E402
from soundworld.judge import heard_order  # noqa: E402

FAILURES = ("in order", "missing", "permuted", "interleaved")
REWORDED = ("before", "after", "followed_by", "three_event")


def failure(clip: dict) -> str:
    """How a judged multi-event clip (a ``JudgeResult`` dict) fares on order."""
    if clip["order_correct"]:
        return "in order"
    prompted = [name for name, _ in clip["expected"]]
    runs = heard_order([name for name, _ in clip["detected"]], prompted)
    if set(runs) != set(prompted):
        return "missing"
    return "permuted" if len(runs) == len(prompted) else "interleaved"


def failures(report: dict) -> dict:
    """Counts of each failure, overall and per construction, over the report's multi-event clips."""
    by_construction = defaultdict(Counter)
    for clip in report["clips"]:
        if clip["order_correct"] is not None:
            by_construction[clip["construction"]][failure(clip)] += 1
    overall = sum(by_construction.values(), Counter())
    return {"clips": sum(overall.values()), "overall": {name: overall[name] for name in FAILURES},
            "by_construction": {c: {name: counts[name] for name in FAILURES} for c, counts in by_construction.items()}}


def rewording_probe(model: str, n: int, seed: int) -> dict:
    """Order accuracy and mean score of clips of the prompts as written and as "A then B", per construction."""
    from annotate.pool import PipelineGenerator

    generate = PipelineGenerator(model)
    specs = [s for s in sample_prompt_specs("train", 8 * n, seed) if s.construction in REWORDED][:n]
    rng = np.random.default_rng(seed)
    written = [spec.text for spec in specs]
    reworded = [compose(list(spec.events), "three_event" if len(spec.events) == 3 else "then", rng) for spec in specs]
    seeds = [seed + i for i in range(len(specs))]
    judged = {}
    for name, prompts in (("as written", written), ("as 'A then B'", reworded)):
        results = []
        for start in range(0, len(prompts), 16):
            made = generate(prompts[start:start + 16], seeds[start:start + 16], generate.default_steps, 3.0)
            results += [judge(w, generate.sampling_rate, p) for w, p in zip(made.waveforms, written[start:start + 16])]
        judged[name] = results
    table = {}
    for construction in (*REWORDED, "all"):
        rows = [i for i, s in enumerate(specs) if construction in ("all", s.construction)]
        table[construction] = {"prompts": len(rows), **{
            name: {"order_accuracy": round(float(np.mean([bool(r[i].order_correct) for i in rows])), 3),
                   "mean_score": round(float(np.mean([r[i].score for i in rows])), 3)} for name, r in judged.items()}}
    return {"model": model, "seed": seed, "examples": list(zip(written[:3], reworded[:3])), "by_construction": table}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=Path, nargs="*", default=[], help="soundworld.evaluate reports")
    parser.add_argument("--probe", type=int, default=0, help="prompts of the rewording probe (0: none)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "order-pairs" / "order-failures.json")
    args = parser.parse_args(argv)
    results = {"failures": {}}
    for path in args.reports:
        report = json.loads(path.read_text())
        if "clips" not in report:
            parser.error(f"{path} holds no per-clip results (a summary only)")
        results["failures"][str(path)] = counted = failures(report)
        print(f"{path}: {counted['clips']} multi-event clips: " + ", ".join(
            f"{name} {counted['overall'][name]}" for name in FAILURES))
        for construction, counts in counted["by_construction"].items():
            print(f"  {construction:<12} " + "  ".join(f"{name} {counts[name]:>2}" for name in FAILURES))
    if args.probe:
        results["rewording_probe"] = probe = rewording_probe(args.model, args.probe, args.seed)
        for construction, row in probe["by_construction"].items():
            print(f"{construction:<12} {row['prompts']:>3} prompts: " + "; ".join(
                f"{name}: order {row[name]['order_accuracy']:.3f}, score {row[name]['mean_score']:.3f}"
                for name in ("as written", "as 'A then B'")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
