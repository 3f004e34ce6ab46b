"""Annotation store latency: next-task p95 and vote-write p99 with 50 concurrent annotators.

    python bench/annotate_latency.py                       # 50 annotator processes, 40 votes each, 200 ms mean think time
    python bench/annotate_latency.py --think-ms 0          # saturation: every process votes as fast as it can

Each annotator is its own process with its own Store (processes are how SQLite is really
shared: the Space's worker threads behave no better). An annotator asks for a task, "listens"
for an exponentially distributed think time, ranks the clips and submits. A human takes
tens of seconds per 4-clip task, so 200 ms is a load ~100x heavier than 50 real annotators.
Goals: next_task p95 < 50 ms, submit p99 < 20 ms. Prints the numbers and writes
bench/results/annotate_latency.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from annotate import Store  # noqa: E402
from preference_data.files import write_atomic  # noqa: E402

GOAL_NEXT_TASK_P95_MS = 50.0
GOAL_SUBMIT_P99_MS = 20.0


def fill_store(data_dir: str, tasks: int, clips_per_task: int) -> None:
    """``tasks`` prompts, each with ``clips_per_task`` short distinct tones as one task."""
    store = Store(data_dir)
    t = np.arange(1600, dtype=np.float32) / 16000
    for p in range(tasks):
        ids = [
            store.add_candidate(f"prompt {p}", np.sin(2 * np.pi * (110 + 7 * p + 31 * j) * t), model=f"model-{j % 2}",
                                seed=j, steps=10, guidance=3.0, sample_rate=16000).id
            for j in range(clips_per_task)
        ]
        store.add_task(ids)


def annotator(data_dir: str, index: int, votes: int, think_ms: float, start: mp.Event, results: mp.Queue) -> None:
    """One annotator: ask, think, rank randomly, submit; report both latencies in seconds."""
    store, rng, name = Store(data_dir), random.Random(index), f"annotator-{index:02d}"
    next_task_s, submit_s = [], []
    start.wait()
    for _ in range(votes):
        t0 = time.perf_counter()
        task = store.next_task(name)
        next_task_s.append(time.perf_counter() - t0)
        if task is None:
            break
        if think_ms:
            time.sleep(rng.expovariate(1000.0 / think_ms))
        ranks = list(range(1, len(task.candidates) + 1))
        rng.shuffle(ranks)
        t0 = time.perf_counter()
        store.submit(name, task.id, {clip.id: rank for clip, rank in zip(task.candidates, ranks)})
        submit_s.append(time.perf_counter() - t0)
    results.put((next_task_s, submit_s))


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 95, 99)} | {"max": round(float(values.max()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=50, help="concurrent annotator processes")
    parser.add_argument("--votes", type=int, default=40, help="votes per annotator")
    parser.add_argument("--clips", type=int, default=4, help="clips per task")
    parser.add_argument("--think-ms", type=float, default=200.0, help="mean think time between next_task and submit")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "annotate_latency.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="annotate-bench-") as data_dir:
        fill_store(data_dir, tasks=args.votes, clips_per_task=args.clips)
        context = mp.get_context("fork")
        start, results = context.Event(), context.Queue()
        workers = [context.Process(target=annotator, args=(data_dir, i, args.votes, args.think_ms, start, results))
                   for i in range(args.annotators)]
        for worker in workers:
            worker.start()
        load_before = os.getloadavg()[0]
        began = time.perf_counter()
        start.set()
        collected = [results.get() for _ in workers]
        elapsed = time.perf_counter() - began
        for worker in workers:
            worker.join()
        stored = Store(data_dir).counts()["rankings"]

    next_task_s = [x for got, _ in collected for x in got]
    submit_s = [x for _, got in collected for x in got]
    report = {
        "config": {key: value for key, value in vars(args).items() if key != "out"},
        "machine": {"cpus": os.cpu_count(), "load_avg_1min_before": round(load_before, 2), "python": platform.python_version()},
        "votes_stored": stored,
        "elapsed_s": round(elapsed, 2),
        "votes_per_s": round(len(submit_s) / elapsed, 1),
        "next_task_ms": percentiles_ms(next_task_s),
        "submit_ms": percentiles_ms(submit_s),
    }
    report["goals"] = {
        "next_task_p95_lt_50ms": report["next_task_ms"]["p95"] < GOAL_NEXT_TASK_P95_MS,
        "submit_p99_lt_20ms": report["submit_ms"]["p99"] < GOAL_SUBMIT_P99_MS,
    }
    print(json.dumps(report, indent=2))
    write_atomic(Path(args.out), (json.dumps(report, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
