"""Gold tasks: rankings whose right answer is known, to tell careful annotators from random clickers.

For a sound-world prompt the renderer gives the truth: a gold task ranks a render of the
prompt (the correct first place) against renders of other prompts that share none of its
event types (correctly below it, tied among themselves). The store mixes gold tasks into
each annotator's queue (``Store(gold_share=...)``); they never reach the verdict or the
export.

Gold tasks must look like the others: they hold as many clips as the store's regular tasks,
and every render uses a seed drawn at random (stored with the clip, never shown), so nobody
can tell the truth by rendering the prompt with a public seed and comparing.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .pairs import ordered_pairs
from .store import Ranking, Store
from .validation import InvalidInput, check_float

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


def gold_task_of(store: Store) -> dict[str, int]:
    """Prompt -> the id of its gold task."""
    tasks = {}
    for task_id, answer in store.gold_answers().items():
        truth = next(clip_id for clip_id, rank in answer.items() if rank == 1)
        tasks[store.candidates([truth])[truth].prompt] = task_id
    return tasks


def add_gold_tasks(store: Store, prompts: Sequence[str], *, distractors: int | None = None, seed: int = 0) -> list[int]:
    """One gold task per sound-world prompt: its render first, ``distractors`` renders of other prompts tied below.

    ``distractors`` None: as many as make the task as large as the store's regular tasks
    (``regular_task_clips``). Every clip is rendered with a secret random seed. Distractor
    prompts are drawn (reproducibly, from ``seed`` and the prompt) among sampled sound-world
    prompts with no event type in common with the prompt. A prompt that has a gold task keeps
    it (idempotent). Raises ``soundworld.PromptError`` for a prompt outside the sound world.
    """
    from soundworld import parse, render, sample_prompt_specs

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
        answer = {}
        for i, (source, model) in enumerate([(prompt, GOLD_TRUTH_MODEL)] + [(o, distractor_model(o)) for o in others]):
            render_seed = secrets.randbelow(RENDER_SEEDS)
            waveform, rate, _ = render(source, render_seed)
            clip = store.add_candidate(prompt, waveform, sample_rate=rate, model=model, seed=render_seed,
                                       steps=GOLD_STEPS, guidance=GOLD_GUIDANCE)
            answer[clip.id] = 1 if i == 0 else 2
        task_ids.append(existing.setdefault(prompt, store.add_gold_task(answer)))
    return task_ids
