"""Closing the loop on the tiny test models: pool -> ranked by scripted annotators through the app's
API -> exported by an admin -> train_dpo.py -> the app serves the trained model as its DPO column."""

import time

from gradio_client import Client

import train_dpo
from annotate import Store
from annotate.pool import build_pool
from tests.app_helpers import AppProcess, rank_everything

PROMPTS = ["a beep then a hiss", "two knocks", "a siren after a click", "a hum then a buzz"]
ANNOTATORS = ["ann", "ben", "cleo"]


def test_generate_rank_export_train_and_serve_the_result(app_models, tmp_path):
    base, dpo = map(str, app_models)
    data = tmp_path / "data"
    build_pool(Store(data), PROMPTS, [base, dpo], k=1, steps=2, progress=False)

    with AppProcess("--base-model", base, "--dpo-model", dpo, "--data-dir", str(data), "--admins", "ann",
                    "--device", "cpu") as served:
        print(f"\npython app.py: first page after {served.seconds_to_first_page:.1f} s")
        assert sum(rank_everything(Client(served.url, verbose=False), name) for name in ANNOTATORS) == 12
        export = Client(served.url, verbose=False).predict("ann", api_name="/export")
    assert export["pairs"] == len(PROMPTS)  # one 2-clip task per prompt, all three agree

    out = tmp_path / "trained"
    assert train_dpo.main(["--pretrained_model", base, "--dataset", export["folder"], "--output_dir", str(out),
                           "--max_train_steps", "2", "--train_batch_size", "2", "--learning_rate", "1e-4",
                           "--seed", "0"]) == 0

    with AppProcess("--base-model", base, "--dpo-model", str(out), "--data-dir", str(data), "--device", "cpu") as served:
        started = time.perf_counter()
        base_clips, dpo_clips, details = Client(served.url, verbose=False).predict(
            "a beep then a hiss", 2, 3.0, 0, 1, api_name="/generate")
        print(f"both columns, 2 steps, 1 clip each: {time.perf_counter() - started:.2f} s")
    assert len(base_clips) == len(dpo_clips) == 1
    assert details["columns"][1]["model"] == str(out) and details["columns"][1]["error"] is None
