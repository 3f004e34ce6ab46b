"""Time generation for a model spec: seconds per clip, real-time factor, batched vs separate calls.

    python bench/generate.py --model tests/fixtures/tango-original-tiny --steps 10 --batch 4
    python bench/generate.py --model declare-lab/tango2 --steps 100 --batch 4 --device cuda

Prints a table and writes bench/results/generate-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline import load_pipeline  # noqa: E402

PROMPT = "A dog barks in the distance while rain falls"


def timed(fn, repeats: int) -> float:
    """Best of `repeats` wall-clock seconds (best, not mean: other processes only ever add time)."""
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4, help="K candidates per prompt")
    parser.add_argument("--length", type=float, default=None, help="seconds (default: the model's own)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="results JSON (default bench/results/generate-<model>.json)")
    args = parser.parse_args()

    load_start = time.perf_counter()
    pipe = load_pipeline(args.model, device=args.device)
    load_seconds = time.perf_counter() - load_start
    pipe.set_progress_bar_config(disable=True)
    length = args.length or pipe.default_audio_length_in_s
    call = dict(num_inference_steps=args.steps, audio_length_in_s=length)
    pipe(PROMPT, **{**call, "num_inference_steps": 1})  # warm-up: first-call allocations

    single = timed(lambda: pipe(PROMPT, **call, generator=torch.Generator().manual_seed(0)), args.repeats)
    separate = timed(
        lambda: [pipe(PROMPT, **call, generator=torch.Generator().manual_seed(i)) for i in range(args.batch)],
        args.repeats,
    )
    batched = timed(
        lambda: pipe(
            PROMPT, **call, num_waveforms_per_prompt=args.batch,
            generator=[torch.Generator().manual_seed(i) for i in range(args.batch)],
        ),
        args.repeats,
    )
    results = {
        "model": args.model,
        "device": str(pipe.device),
        "dtype": str(pipe.unet.dtype),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "steps": args.steps,
        "audio_length_in_s": length,
        "load_seconds": round(load_seconds, 3),
        "seconds_per_clip_single": round(single, 4),
        "real_time_factor_single": round(single / length, 4),
        "k": args.batch,
        "seconds_k_separate_calls": round(separate, 4),
        "seconds_k_batched": round(batched, 4),
        "seconds_per_clip_batched": round(batched / args.batch, 4),
        "batched_speedup": round(separate / batched, 3),
    }
    for key, value in results.items():
        print(f"{key:28s} {value}")
    safe_name = re.sub(r"[^\w.-]+", "_", args.model)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"generate-{safe_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
