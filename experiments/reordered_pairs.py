"""Reordered pairs: one clip per multi-event prompt, cut at its silences and put in another order.

    python experiments/reordered_pairs.py --model tiny --n 800 --seed 70000 --out runs/reordered/pairs-0
    python experiments/order_dpo.py --pairs runs/reordered/pairs-0 --out runs/reordered --runs from-tiny

How the pairs are made is ``autopairs.reorder``'s docstring. Prompts: fresh multi-event ``train``-split prompts
(then / followed by / before / after / three events); neither they nor a mirrored prompt is one of the 200
validation prompts that ``experiments/order_dpo.py`` judges on. Writes the dataset (``train_dpo.py`` trains on its stored latents) and
``OUT/reorder.json``: clips, how many could be cut, how many cut clips the judge heard as intended, mirrored pairs,
pairs per hour.

The answer: bench/results/order-pairs/reordered/; read in docs/results.md, "Pairs that contrast order and nothing else".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from preference_data.dataset import write_preference_dataset  # noqa: E402
from annotate.pool import PipelineGenerator  # noqa: E402
from autopairs.reorder import ReorderReport, reordered_pairs  # noqa: E402
from dpo_experiment import VALIDATION_SEED  # noqa: E402
from soundworld.grammar import sample_prompt_specs, sample_prompts  # noqa: E402


VALIDATION_PROMPTS = frozenset(sample_prompts("train", 200, VALIDATION_SEED))


def multi_event_prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct multi-event training-split prompts, none of them a validation prompt."""
    chosen: dict[str, None] = {}
    draw = 4 * n
    while len(chosen) < n:
        for spec in sample_prompt_specs("train", draw, seed):
            if len(spec.events) > 1 and spec.text not in VALIDATION_PROMPTS:
                chosen.setdefault(spec.text)
        draw *= 2
    return list(chosen)[:n]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--n", type=int, default=800, help="prompts, one clip each")
    parser.add_argument("--seed", type=int, default=70_000, help="prompt sampling and clip seeds")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-mirror", action="store_true", help="leave out the mirrored pairs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    report, started = ReorderReport(), time.monotonic()
    rows = reordered_pairs(multi_event_prompts(args.n, args.seed), PipelineGenerator(args.model), model=args.model,
                           seed=args.seed, batch_size=args.batch_size, mirrored=not args.no_mirror,
                           exclude=VALIDATION_PROMPTS, report=report)
    summary = write_preference_dataset(rows, args.out, how_made=(
        f"`{args.model}` sampled one clip per multi-event prompt (seeds from {args.seed}); clips the judge could cut "
        "at the silences between their events were put in another order (autopairs.reorder)"))
    hours = (time.monotonic() - started) / 3600
    result = {**vars(report), "pairs": summary.rows, "hours": round(hours, 3),
              "pairs_per_hour": round(summary.rows / hours, 1), "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "reorder.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
