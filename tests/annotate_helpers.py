"""Shared helpers for the annotate tests (this module holds no tests).

``SineGenerator`` is the test double for the pipeline: deterministic tones whose pitch
depends on the model, prompt and seed, so every clip is distinct and reproducible.
"""

from __future__ import annotations

import zlib

import numpy as np

from annotate import Store
from annotate.clips import SAMPLE_RATE


def tone(frequency: float, seconds: float = 0.1, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


class SineGenerator:
    """Stands in for ``PipelineGenerator``: records its calls, returns one tone per clip."""

    sampling_rate = SAMPLE_RATE
    default_steps = 7

    def __init__(self, model: str, seconds: float = 0.1):
        self.model, self.seconds, self.calls = model, seconds, []

    def __call__(self, prompts, seeds, steps, guidance):
        self.calls.append((list(prompts), list(seeds), steps, guidance))
        return np.stack([tone(100 + zlib.crc32(f"{self.model}|{prompt}|{seed}".encode()) % 4000, self.seconds)
                         for prompt, seed in zip(prompts, seeds)])


def make_tasks(store: Store, tasks: int, clips: int = 2, models=("base", "dpo"),
               target_overlap: int | None = None) -> list[int]:
    """``tasks`` prompts with ``clips`` distinct tones each (models alternating), one task per prompt (wanting
    ``target_overlap`` annotators; None: the store's default)."""
    task_ids = []
    for p in range(tasks):
        ids = [
            store.add_candidate(f"prompt {p}", tone(110 + 13 * p + 37 * j), model=models[j % len(models)],
                                seed=j, steps=10, guidance=3.0, sample_rate=SAMPLE_RATE).id
            for j in range(clips)
        ]
        task_ids.append(store.add_task(ids, target_overlap=target_overlap))
    return task_ids


def vote(store: Store, annotator: str, ranks_by_position=None, **flags) -> int:
    """Ask for a task and rank its clips as shown (or by ``ranks_by_position``); return the vote id.

    ``flags`` go to ``submit`` (``skip``/``all_bad`` replace the ranking; ``comment``)."""
    task = store.next_task(annotator)
    assert task is not None, f"no task left for {annotator}"
    ranks = ranks_by_position or range(1, len(task.candidates) + 1)
    verdict_only = flags.get("skip") or flags.get("all_bad")
    ranking = None if verdict_only else {clip.id: rank for clip, rank in zip(task.candidates, ranks)}
    return store.submit(annotator, task.id, ranking, **flags)


def add_rendered_gold(store: Store, prompts, **options) -> list[int]:
    """``add_gold_tasks`` with the clips as rendered, through no model's decoder, at the sound world's clip length
    (these tests' tones are shorter than a prompt's events): for tests of gold bookkeeping; test_app_campaign
    checks the real decoder path."""
    from annotate.gold import add_gold_tasks
    from soundworld import CLIP_SECONDS

    return add_gold_tasks(store, prompts, through=list, duration_s=CLIP_SECONDS, **options)


def preference_row(i: int, strategy: str = "inference"):
    """A distinct, valid dataset row made of two tones (for the dataset writer's tests)."""
    from annotate.clips import encode_wav
    from preference_data.dataset import PreferenceRow

    return PreferenceRow(
        prompt=f"prompt {i}", chosen_wav=encode_wav(tone(200 + i)), rejected_wav=encode_wav(tone(900 + i)),
        strategy=strategy, ranker="judge", chosen_model="tiny-dpo", rejected_model="tiny", chosen_seed=i, rejected_seed=i + 1,
        num_inference_steps=100, guidance_scale=3.0, votes_for=1, votes_against=0, annotators=1,
    )
