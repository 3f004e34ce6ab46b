"""Judge score and seconds per clip of one model under each sampler and step count, same prompts and seeds.

    python bench/samplers.py --model tiny --prompts train --n 200 --seed 5 --out bench/results/samplers-tiny.json
    python bench/samplers.py --model tiny --only "DPM-Solver++ 10,DDPM (Tango's own) 100" --n 32   # timing a few on this machine

Rows (the app's sampler labels): DDPM 100 and 200 (Tango's own sampler and step counts), DDIM and DPM-Solver++ at 5, 10, 25 and 50 steps.
The default to ship is the fewest steps whose mean score is within ``--tolerance`` of the best row; choose it on
training-split prompts (``--prompts train``), never on the test or held-out splits. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline import load_pipeline  # noqa: E402
from soundworld import sample_prompts  # noqa: E402
from soundworld.evaluate import evaluate_pipeline, summarize  # noqa: E402
from studio.generation import with_sampler  # noqa: E402  the app's own sampler swap and labels

ROWS = [("DDPM (Tango's own)", 100), ("DDPM (Tango's own)", 200)] + [(name, steps) for name in ("DDIM", "DPM-Solver++") for steps in (5, 10, 25, 50)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="model spec")
    parser.add_argument("--prompts", default="train", help="sound-world split the prompts come from")
    parser.add_argument("--n", type=int, default=200, help="prompts (one clip each)")
    parser.add_argument("--seed", type=int, default=5, help="prompt and clip seed")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--batch", type=int, default=16, help="clips per pipeline call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default="", help='comma-separated rows, e.g. "DPM-Solver++ 10,DDIM 25"')
    parser.add_argument("--tolerance", type=float, default=0.01, help="score gap to the best row that still counts")
    parser.add_argument("--out", type=Path, help="JSON file")
    args = parser.parse_args(argv)

    pipe = load_pipeline(args.model, device=args.device, dtype=torch.float32)  # the numbers a CPU user gets
    pipe.set_progress_bar_config(disable=True)
    prompts = sample_prompts(args.prompts, args.n, args.seed)
    seeds = [args.seed * 100_003 + i for i in range(args.n)]
    rows = [row for row in ROWS if not args.only or f"{row[0]} {row[1]}" in args.only.split(",")]
    report = {"model": args.model, "prompts": args.prompts, "n": args.n, "seed": args.seed, "device": args.device,
              "guidance": args.guidance, "torch_threads": torch.get_num_threads(), "rows": []}
    for sampler, steps in rows:
        view = with_sampler(pipe, sampler)
        started = time.perf_counter()
        results, _ = evaluate_pipeline(view, prompts, seeds, steps=steps, guidance=args.guidance,
                                       batch_size=args.batch, progress=False)
        seconds = (time.perf_counter() - started) / args.n  # judging included: a few ms per clip
        summary = summarize(results)
        row = {"sampler": sampler, "steps": steps, "seconds_per_clip": round(seconds, 4),
               **{key: summary[key] for key in ("mean_score", "event_recall", "extra_events_per_clip",
                                                "count_accuracy", "order_accuracy")},
               "score_interval": summary["intervals"]["mean_score"]}
        report["rows"].append(row)
        print(f"{sampler:>13} {steps:>4} steps  score {row['mean_score']:.3f}  recall {row['event_recall']:.3f}  "
              f"{seconds:.3f} s/clip", flush=True)
    best = max(row["mean_score"] for row in report["rows"])
    good = [row for row in report["rows"] if row["mean_score"] >= best - args.tolerance]
    report["fewest_steps_within_tolerance"] = min(good, key=lambda row: (row["steps"], -row["mean_score"]))
    print("fewest steps within", args.tolerance, "of the best:", report["fewest_steps_within_tolerance"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
