"""What an anonymous visitor costs the app (issue 31, item 6): memory and disk for 300 new names asking for a task,
and other visitors' /leaderboard while 16 clients send 1 MB /vote bodies.

    python bench/campaign_costs.py            # writes bench/results/campaign_costs.json

The app runs as ``python app.py`` in a subprocess on 127.0.0.1 (its memory is measured alone, from /proc), over a
store of 50 four-clip tasks of 3.84 s clips, with ``--max-served-mb 32`` so that the bound on served copies is
reached. Each /next_task is a new name in a new gradio session (the HTTP call API: ``POST /gradio_api/call/...``).
Goals: memory grows by under 20 MB over the 300 calls; served copies and gradio's cache stay within the bound;
/leaderboard answers in under 0.5 s while the 1 MB bodies come in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotate import Store  # noqa: E402
from tests.app_helpers import AppProcess  # noqa: E402

CLIP_S = 3.84


def make_store(folder: Path, tasks: int) -> None:
    store = Store(folder)
    rng = np.random.default_rng(0)
    for t in range(tasks):
        ids = [store.add_candidate(f"prompt {t}", (0.1 * rng.standard_normal(int(CLIP_S * 16000))).astype(np.float32),
                                   model=("base", "dpo")[j % 2], seed=j, steps=10, guidance=3.0,
                                   sample_rate=16000).id for j in range(4)]
        store.add_task(ids)


def call(client: httpx.Client, name: str, data: list) -> list:
    """One call through gradio's HTTP call API (a new session each time), its output."""
    event = client.post(f"/gradio_api/call/{name}", json={"data": data})
    event.raise_for_status()
    answer = client.get(f"/gradio_api/call/{name}/{event.json()['event_id']}")
    lines = answer.text.strip().splitlines()
    if not lines or lines[-2:-1] != ["event: complete"]:
        raise RuntimeError(f"/{name} failed: {answer.text[-300:]}")
    return json.loads(lines[-1][len("data: "):])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def timed_leaderboard(client: httpx.Client) -> float:
    started = time.perf_counter()
    call(client, "leaderboard", [])
    return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="anonymous /next_task calls, each a new name")
    parser.add_argument("--senders", type=int, default=16, help="clients sending 1 MB /vote bodies at once")
    parser.add_argument("--max-served-mb", type=int, default=32, help="the app's bound on served copies")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "campaign_costs.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="campaign-costs-"))
    make_store(work / "data", 50)
    temp, cache = work / "tmp", work / "gradio"
    temp.mkdir()
    env = {"TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    with AppProcess("--data-dir", str(work / "data"), "--max-served-mb", str(args.max_served_mb),
                    "--leaderboard-every", "1", env=env) as served:
        client = httpx.Client(base_url=served.url, timeout=60)
        for i in range(30):  # warm up: imports, caches, the first sessions
            call(client, "next_task", [f"warm{i}"])
        time.sleep(1)
        before = rss_mb(served.process.pid)
        started = time.perf_counter()
        for i in range(args.calls):
            call(client, "next_task", [f"visitor{i}"])
        calls_s = time.perf_counter() - started
        time.sleep(1)
        after = rss_mb(served.process.pid)
        served_copies = folder_mb(next(temp.glob("tango-studio-*")) / "served")
        gradio_cache = folder_mb(cache)

        idle = [timed_leaderboard(client) for _ in range(10)]
        # just under the 1 MiB every request could send before the per-endpoint limits (the attack's ~1 MB votes)
        body = json.dumps({"data": ["x", 1, {"A": 1, "B": 2}, "rank", "x" * 1_000_000]}).encode()
        stop, refusals = threading.Event(), []

        def send_large_votes():
            with httpx.Client(base_url=served.url, timeout=60) as sender:
                while not stop.is_set():
                    started = time.perf_counter()
                    answer = sender.post("/gradio_api/call/vote", content=body,
                                         headers={"content-type": "application/json"})
                    refusals.append((answer.status_code, time.perf_counter() - started))

        senders = [threading.Thread(target=send_large_votes) for _ in range(args.senders)]
        for thread in senders:
            thread.start()
        time.sleep(1)
        loaded = [timed_leaderboard(client) for _ in range(20)]
        stop.set()
        for thread in senders:
            thread.join()

    result = {
        "anonymous_next_task_calls": args.calls,
        "calls_per_s": round(args.calls / calls_s, 1),
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "rss_growth_mb": round(after - before, 1),
        "max_served_mb": args.max_served_mb,
        "served_copies_mb": round(served_copies, 1),
        "gradio_cache_mb": round(gradio_cache, 1),
        "leaderboard_idle_median_s": round(statistics.median(idle), 3),
        "leaderboard_under_large_votes_median_s": round(statistics.median(loaded), 3),
        "leaderboard_under_large_votes_max_s": round(max(loaded), 3),
        "large_vote_bodies_sent": len(refusals),
        "large_vote_statuses": sorted({status for status, _ in refusals}),
        "large_vote_refusal_median_s": round(statistics.median(s for _, s in refusals), 4),
        "goals": {"rss_growth_mb_below": 20, "leaderboard_under_large_votes_max_s_below": 0.5},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with a training job)",
    }
    result["goals_met"] = (result["rss_growth_mb"] < 20 and result["leaderboard_under_large_votes_max_s"] < 0.5
                           and served_copies <= args.max_served_mb and gradio_cache <= args.max_served_mb + 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
