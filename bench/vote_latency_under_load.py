"""Vote latency while the generation queue is full of maximum requests (issue 13's bar: p99 < 200 ms,
and a further generation request is answered "busy" at once).

    python bench/vote_latency_under_load.py --votes 200    # writes bench/results/vote_latency_under_load.json

The app runs in this process on a free port with the embedded models; one client per
annotator votes through the HTTP API (next task, play every clip, vote) while the running
generation and the full queue behind it hold the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

import app  # noqa: E402
from studio import Studio, StudioConfig  # noqa: E402
from tests.annotate_helpers import make_tasks  # noqa: E402
from tests.app_helpers import free_port  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--votes", type=int, default=200, help="votes to time")
    parser.add_argument("--queue", type=int, default=4, help="--generate-queue of the app")
    parser.add_argument("--generate-threads", type=int, default=0, help="--generate-threads of the app (0: all cores "
                                                                        "but one on a CPU)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vote_latency_under_load.json")
    args = parser.parse_args(argv)

    config = StudioConfig(data_dir=Path(tempfile.mkdtemp()), device="cpu", port=free_port(),
                          generate_queue=args.queue, generate_per_minute=1000,
                          generate_threads=args.generate_threads)
    studio = Studio(config)
    make_tasks(studio.store, args.votes, clips=2)
    demo = app.build_app(studio)
    app.launch(studio, demo, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{config.port}/"
    biggest = ("a siren then two knocks", config.max_steps, 3.0, 0, config.max_candidates)
    jobs = [Client(url, verbose=False).submit(*biggest, api_name="/generate") for _ in range(args.queue + 1)]
    time.sleep(3)  # every job admitted: one running, the queue full
    late_visitor = Client(url, verbose=False)
    started = time.perf_counter()
    try:
        late_visitor.predict(*biggest, api_name="/generate")
        busy = None
    except AppError as err:
        busy = str(err)
    busy_s = time.perf_counter() - started

    client = Client(url, verbose=False)
    latencies = []
    for i in range(args.votes):
        name = f"bench{i}"
        task, _ = client.predict(name, api_name="/next_task")
        for clip in task["clips"]:
            client.predict(name, task["task_id"], clip["label"], api_name="/played")
        started = time.perf_counter()
        client.predict(name, task["task_id"], {"A": 1, "B": 2}, api_name="/vote")
        latencies.append(time.perf_counter() - started)
    still_generating = sum(not job.done() for job in jobs)
    latencies.sort()
    result = {
        "votes": len(latencies),
        "vote_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "vote_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
        "vote_max_ms": round(latencies[-1] * 1000, 1),
        "generations_running_or_queued_at_end": still_generating,
        "extra_generation_answer": busy,
        "extra_generation_answer_s": round(busy_s, 3),
        "max_request": {"steps": config.max_steps, "candidates": config.max_candidates, "queue": args.queue},
        "generation_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "machine": platform.platform(),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    demo.close()
    return result


if __name__ == "__main__":
    main()
    import os

    os._exit(0)  # the queued generations are abandoned, not awaited
