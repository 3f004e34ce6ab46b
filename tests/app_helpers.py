"""Helpers for the app tests (this module holds no tests): a small random-weight pipeline with the
embedded tiny models' architecture, and the app served in a subprocess."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
# The tiny recipe's architecture at toy width: same components (T5 tokenizer and encoder,
# UNet with a time-position input, VAE, Griffin-Lim vocoder, DPM-Solver++), a few MB.
SMALL_KNOBS = ["--unet_channels=32,32,32", "--text_dim=32", "--vocab_size=120"]


def build_test_pipeline(folder: Path, seed: int) -> Path:
    """Save a random-weight tiny-architecture TangoPipeline (diffusers format) to ``folder``."""
    import torch

    from soundworld import sample_prompts, train_tiny

    config = train_tiny.apply_overrides(SMALL_KNOBS)
    torch.manual_seed(seed)
    tokenizer = train_tiny.make_tokenizer(config, sample_prompts("train", 300, seed=0), folder.parent / f"{folder.name}-work")
    pipe = train_tiny.make_pipeline(tokenizer, train_tiny.make_text_encoder(config, tokenizer),
                                    train_tiny.make_unet(config), train_tiny.make_vae(config))
    pipe.register_to_config(default_num_inference_steps=4)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def agreed_ranking(task: dict, files: list[str]) -> dict[str, int]:
    """A ranking of a /next_task answer that every annotator gives alike, though each sees the clips in
    another order and under other ids: by the clips' bytes (letter -> rank, 1..n)."""
    digests = [hashlib.sha256(Path(file).read_bytes()).hexdigest() for file in files]
    return {clip["label"]: sorted(digests).index(digest) + 1 for clip, digest in zip(task["clips"], digests)}


def rank_everything(client, name: str) -> int:
    """Play and rank every task the annotator ``name`` can get through the app's API (a gradio_client ``Client``),
    as every scripted annotator does alike (``agreed_ranking``); returns the number of votes."""
    votes = 0
    while True:
        task, files = client.predict(name, api_name="/next_task")
        if task["task_id"] is None:
            return votes
        for clip in task["clips"]:
            client.predict(name, task["task_id"], clip["clip_id"], api_name="/played")
        client.predict(name, task["task_id"], agreed_ranking(task, files), api_name="/vote")
        votes += 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppProcess:
    """``python app.py --port P ...`` in a subprocess; ``url`` once the first page answers."""

    def __init__(self, *args: str, timeout_s: float = 120.0, env: dict | None = None,
                 program: tuple[str, ...] = ("app.py",)):
        """``program``: what python runs, e.g. ``("-c", code)`` for an app with a stand-in installed first."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"app-{self.port}.log"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, *program, "--port", str(self.port), *args], cwd=REPO,
            # The scripted annotators vote as soon as they played every clip: their votes count only with the
            # listening rule off (how long clips were heard is test_app_campaign's).
            stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "TANGO_MIN_HEARD_FRACTION": "0", **(env or {})},
        )
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > timeout_s:
                self.stop()
                raise TimeoutError(f"app.py did not serve within {timeout_s} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.25)
        self.seconds_to_first_page = time.perf_counter() - started

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> AppProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
