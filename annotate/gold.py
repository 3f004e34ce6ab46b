"""Gold tasks: rankings whose right answer is known, to tell careful annotators from random clickers.

For a sound-world prompt the renderer gives the truth: a gold task ranks a render of the
prompt (the correct first place) against renders of other prompts that share none of its
event types (correctly below it, tied among themselves). The store mixes gold tasks into
each annotator's queue (``Store(gold_share=...)``); they never reach the verdict or the
export.

Gold tasks must look like the others: they hold as many clips as the store's regular tasks,
their clips last as long as the regular clips, every render uses a seed drawn at random
(stored with the clip, never shown), so nobody can tell the truth by rendering the prompt
with a public seed and comparing, and every render goes through the pool's model's own
decoder path (``through``: its VAE and vocoder, ``pipeline.audio.round_trip``), so that a
gold clip has the noise floor and level statistics of a generated one. A bare render is
94-98 % exact zeros where a generated clip has none: told apart without listening.

A gold vote is *correct* when every strict preference of the answer is matched strictly
(the truth above each distractor; how the distractors are ordered among themselves does
not matter). An all-bad vote on a gold task is wrong (the truth was acceptable); a skip
is no answer. An owner-set ``min_accuracy`` leaves out every vote of an annotator whose
gold accuracy is below it, once they answered at least ``min_answers`` gold tasks.
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .pairs import ordered_pairs
from .store import Ranking, Store
from .validation import InvalidInput, check_float

Decoder = Callable[[list[np.ndarray]], list[np.ndarray]]  # 16 kHz clips -> the same clips through a model's decoder

GOLD_TRUTH_MODEL = "gold: render of this prompt"
GOLD_STEPS, GOLD_GUIDANCE = 1, 0.0  # renders have no denoising settings; one fixed value keeps them one task
MIN_GOLD_ANSWERS = 3
DISTRACTOR_POOL = 400  # sampled prompts to draw distractors from
REGULAR_TASK_CLIPS = 4  # what a pool makes by default (two models, two clips each): gold tasks' size in an empty store
RENDER_SEEDS = 2**31  # render seeds are drawn at random below this


def distractor_model(other_prompt: str) -> str:
    """The model name a distractor is stored under: says which prompt it renders."""
    return f"gold: render of {other_prompt!r}"


@dataclass(frozen=True)
class GoldScore:
    annotator: str
    answered: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.answered if self.answered else None


@dataclass(frozen=True)
class TrustReport:
    """Who was left out of the votes used, and why."""

    min_accuracy: float | None
    scores: dict[str, GoldScore]
    left_out_annotators: tuple[str, ...]
    left_out_votes: int
    flagged: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # annotate.hygiene's flags, by annotator


def is_correct(ranking: Ranking, answer: Mapping[str, int]) -> bool:
    """Does this gold vote keep every strict preference of ``answer``?"""
    if ranking.all_bad or ranking.skipped:
        return False
    return all(ranking.ranks[better] < ranking.ranks[worse] for better, worse in ordered_pairs(answer))


def gold_accuracy(rankings: Iterable[Ranking], answers: Mapping[int, Mapping[str, int]]) -> dict[str, GoldScore]:
    """Per annotator who answered a gold task (skips are no answer): answered, correct."""
    answered: dict[str, list[bool]] = {}
    for ranking in rankings:
        if ranking.task_id in answers and not ranking.skipped:
            answered.setdefault(ranking.annotator, []).append(is_correct(ranking, answers[ranking.task_id]))
    return {name: GoldScore(name, len(marks), sum(marks)) for name, marks in sorted(answered.items())}


def trusted_rankings(rankings: Sequence[Ranking], answers: Mapping[int, Mapping[str, int]],
                     min_accuracy: float | None, min_answers: int = MIN_GOLD_ANSWERS) -> tuple[list[Ranking], TrustReport]:
    """The rankings without those of annotators whose gold accuracy is below ``min_accuracy``.

    Annotators with fewer than ``min_answers`` gold answers are kept (too little evidence);
    ``min_accuracy=None`` keeps everyone; otherwise it must be within 0..1.
    """
    if min_accuracy is not None and not 0 <= check_float(min_accuracy, "min_gold_accuracy") <= 1:
        raise InvalidInput(f"`min_gold_accuracy` must be within 0..1, got {min_accuracy}")
    scores = gold_accuracy(rankings, answers)
    flagged = tuple(sorted(
        name for name, score in scores.items()
        if min_accuracy is not None and score.answered >= min_answers and score.accuracy < min_accuracy
    ))
    kept = [r for r in rankings if r.annotator not in flagged]
    return kept, TrustReport(min_accuracy, scores, flagged, len(rankings) - len(kept))


def regular_task_clips(store: Store) -> int:
    """How many clips the store's regular (non-gold) tasks hold most often; ``REGULAR_TASK_CLIPS`` with none."""
    gold = store.gold_answers()
    sizes = Counter(len(clips) for task_id, clips in store.task_clips().items() if task_id not in gold)
    return sizes.most_common(1)[0][0] if sizes else REGULAR_TASK_CLIPS


def regular_clip_seconds(store: Store) -> float | None:
    """How long the store's regular (non-gold) clips last most often; None with none."""
    gold = store.gold_answers()
    gold_clips = {clip_id for task_id in gold for clip_id in gold[task_id]}
    lengths = Counter(round(clip.duration_s, 2) for clip_id, clip in store.candidates().items()
                      if clip_id not in gold_clips)
    return lengths.most_common(1)[0][0] if lengths else None


def gold_task_of(store: Store) -> dict[str, int]:
    """Prompt -> the id of its gold task."""
    tasks = {}
    for task_id, answer in store.gold_answers().items():
        truth = next(clip_id for clip_id, rank in answer.items() if rank == 1)
        tasks[store.candidates([truth])[truth].prompt] = task_id
    return tasks


def add_gold_tasks(store: Store, prompts: Sequence[str], *, through: Decoder, duration_s: float | None = None,
                   distractors: int | None = None, seed: int = 0) -> list[int]:
    """One gold task per sound-world prompt: its render first, ``distractors`` renders of other prompts tied below.

    ``through`` passes the renders through the decoder path of the model whose clips the gold tasks sit among
    (``functools.partial(pipeline.audio.round_trip, pipe)``). ``duration_s``: each clip's length; None: as long
    as the store's regular clips last most often (``regular_clip_seconds``), else the sound world's clip length.
    ``distractors`` None: as many as make the task as large as the store's regular tasks
    (``regular_task_clips``). Every clip is rendered with a secret random seed. Distractor
    prompts are drawn (reproducibly, from ``seed`` and the prompt) among sampled sound-world
    prompts with no event type in common with the prompt. A prompt that has a gold task keeps
    it (idempotent). Raises ``soundworld.PromptError`` for a prompt outside the sound world.
    """
    from soundworld import CLIP_SECONDS, SAMPLE_RATE, parse, render, sample_prompt_specs

    duration_s = duration_s or regular_clip_seconds(store) or CLIP_SECONDS
    if distractors is None:
        distractors = regular_task_clips(store) - 1
    if distractors < 1:
        raise ValueError(f"`distractors` must be >= 1, got {distractors}")
    pool = sample_prompt_specs("train", DISTRACTOR_POOL, seed)
    existing = gold_task_of(store)
    task_ids = []
    for prompt in prompts:
        types = set(parse(prompt).types)
        if prompt in existing:
            task_ids.append(existing[prompt])
            continue
        unrelated = sorted({spec.text for spec in pool if not types & set(spec.types)})
        others = random.Random(f"{seed}\x00{prompt}").sample(unrelated, distractors)
        sources = [(prompt, GOLD_TRUTH_MODEL)] + [(o, distractor_model(o)) for o in others]
        render_seeds = [secrets.randbelow(RENDER_SEEDS) for _ in sources]
        decoded = through([render(source, render_seed, duration_s)[0]
                           for (source, _), render_seed in zip(sources, render_seeds)])
        answer = {}
        for i, ((_, model), render_seed, waveform) in enumerate(zip(sources, render_seeds, decoded)):
            clip = store.add_candidate(prompt, waveform, sample_rate=SAMPLE_RATE, model=model, seed=render_seed,
                                       steps=GOLD_STEPS, guidance=GOLD_GUIDANCE)
            answer[clip.id] = 1 if i == 0 else 2
        task_ids.append(existing.setdefault(prompt, store.add_gold_task(answer)))
    return task_ids
