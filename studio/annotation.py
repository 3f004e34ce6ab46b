"""Blind ranking from the app: hand out tasks, log which clips were played, take votes.

The store (``annotate.Store``) owns tasks, assignments and votes. This module adds what a
web session needs on top: letters for the clips (A, B, C ... in the order shuffled for the
annotator), a log of plays, and the rule that a clip is judged only after it was heard.

A task whose clip files cannot be read is withdrawn from assignment (``Store.withdraw_task``,
logged with the file; the Dataset tab lists it) and the annotator gets the next one: a
missing file never blocks anybody, and no message names a server path.

The play log lives in memory, per (annotator, task): a restarted app forgets it and the
annotator plays the clips again. ``vote`` refuses a ranking or an all-bad vote until every
clip of the task was played (a skip needs no listening); the counts go into the store with
the vote (``play_counts``).
"""

from __future__ import annotations

import logging
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass

from collections.abc import Callable
from pathlib import Path

from annotate import InvalidVote, Store, Task
from annotate.store import MAX_TASK_CLIPS, MAX_TIME_SPENT_S
from annotate.validation import check_int

logger = logging.getLogger(__name__)

# One player per clip: the store never makes (nor assigns) a task with more.
MAX_SHOWN_CLIPS = MAX_TASK_CLIPS
LABELS = string.ascii_uppercase[:MAX_SHOWN_CLIPS]
VERDICTS = ("rank", "all_bad", "skip")

GUIDELINES = """**How to rank.** Play every clip (all of them, to the end if you can), then rank them:
1 = best. Judge how well each clip matches the prompt (every sound it names, in the order and
number it says), then audio quality. Equal ranks are ties; use them when you cannot hear a difference.
**All bad** when no clip is acceptable; **Skip** when you cannot judge (broken audio, unclear prompt).
The models behind the clips are hidden and their order is shuffled for you."""

SHORTCUTS = ("Keys: **a**-**h** play clip A-H · **1**-**8** rank the clip played last · **Enter** vote · "
             "**x** all bad · **s** skip")


@dataclass(frozen=True)
class ShownTask:
    """A task as the annotator sees it: prompt, lettered clips and what they have played."""

    task_id: int
    prompt: str
    clip_ids: list[str]  # in the order shown, labelled A, B, C ...
    audio_paths: list[str]
    plays: dict[str, int]

    @property
    def labels(self) -> list[str]:
        return list(LABELS[: len(self.clip_ids)])

    @property
    def all_played(self) -> bool:
        return all(self.plays.get(clip_id, 0) > 0 for clip_id in self.clip_ids)

    def as_dict(self) -> dict:
        """JSON for the API: what a scripted annotator needs to play and rank the clips."""
        return {
            "task_id": self.task_id,
            "prompt": self.prompt,
            "clips": [{"label": label, "clip_id": clip_id, "played": self.plays.get(clip_id, 0)}
                      for label, clip_id in zip(self.labels, self.clip_ids)],
        }


@dataclass(frozen=True)
class Progress:
    ranked_by_you: int  # your votes that were not skips
    skipped_by_you: int
    tasks_done: int  # tasks that reached their target number of annotators
    tasks_started: int  # tasks with at least one (non-skip) vote
    tasks: int
    target: int  # annotators wanted per task

    def as_markdown(self) -> str:
        skipped = f" (and skipped {self.skipped_by_you})" if self.skipped_by_you else ""
        return (f"You have ranked **{self.ranked_by_you}** task(s){skipped}. Of {self.tasks} tasks, "
                f"**{self.tasks_started}** have at least one ranking and **{self.tasks_done}** have the "
                f"{self.target} rankings each task is meant to get.")


class AnnotationSession:
    """Tasks, plays and votes for every annotator of one app (thread-safe)."""

    def __init__(self, store: Store, serve: Callable[[str], str] = str):
        """``serve`` turns a clip's stored path into the path handed to the browser (``ClipServer.serve``:
        a copy under a random name, outside the data folder)."""
        self.store = store
        self.serve = serve
        self._lock = threading.Lock()
        self._shown: dict[tuple[str, int], list[str]] = {}
        self._served: dict[tuple[str, int], list[str]] = {}
        self._plays: dict[tuple[str, int], Counter] = {}
        self._handed_out_at: dict[tuple[str, int], float] = {}

    def next_task(self, annotator: str) -> ShownTask | None:
        """The annotator's open task (same order as before) or a new one; None when none is left."""
        while (task := self.store.next_task(annotator)) is not None:
            if len(task.candidates) > MAX_SHOWN_CLIPS:
                # Assigned by an older version that allowed larger tasks: skip it for them, never show it.
                logger.warning("skipping task %d for %r: %d clips, this app shows at most %d",
                               task.id, annotator, len(task.candidates), MAX_SHOWN_CLIPS)
                self.store.submit(annotator, task.id, skip=True)
                continue
            served = self._served_copies(annotator, task)
            if served is None:
                continue  # withdrawn: the next one
            key = (annotator, task.id)
            with self._lock:
                self._shown[key] = [clip.id for clip in task.candidates]
                self._served[key] = served
                plays = dict(self._plays.setdefault(key, Counter()))
                self._handed_out_at.setdefault(key, time.monotonic())
            return ShownTask(task.id, task.prompt, [c.id for c in task.candidates], served, plays)
        return None

    def _served_copies(self, annotator: str, task: Task) -> list[str] | None:
        """The task's clips as served to this annotator (copied again if a copy went); None if a clip cannot be
        read: the task is then withdrawn for everyone, and the log names the file."""
        with self._lock:
            served = self._served.get((annotator, task.id))
        if served is not None and all(Path(path).exists() for path in served):
            return served
        served = []
        for clip in task.candidates:
            try:
                served.append(self.serve(clip.audio_path))
            except OSError as err:
                if err.filename != clip.audio_path:  # the copy failed (a full disk ...), not the clip: try again later
                    raise
                reason = f"clip {clip.id} cannot be read: {err.strerror or type(err).__name__}"
                logger.error("withdrew task %d from assignment: %s (%s)", task.id, reason, clip.audio_path)
                self.store.withdraw_task(task.id, reason)
                return None
        return served

    def skip_open_task(self, annotator: str) -> int:
        """Skip the annotator's open task, whether or not their page shows it (reloaded, or a Next task that
        failed); return the vote id."""
        task_id = self.store.open_task_id(annotator)
        if task_id is None:
            raise InvalidVote("no task is assigned to you: press Next task")
        return self.vote(annotator, task_id, None, "skip")

    def _shown_clips(self, annotator: str, task_id: object) -> tuple[tuple[str, int], list[str]]:
        task_id = check_int(task_id, "task_id", minimum=1, error=InvalidVote)
        key = (annotator, task_id)
        shown = self._shown.get(key)
        if shown is None:
            raise InvalidVote(f"task {task_id} is not open for {annotator!r}: ask for the next task first")
        return key, shown

    def record_play(self, annotator: str, task_id: int, clip: str) -> dict[str, int]:
        """Count one play of a clip (by clip id or letter); return the task's play counts."""
        with self._lock:
            key, shown = self._shown_clips(annotator, task_id)
            clip_id = self._clip_id(clip, shown)
            self._plays[key][clip_id] += 1
            return dict(self._plays[key])

    @staticmethod
    def _clip_id(clip: object, shown: list[str]) -> str:
        if isinstance(clip, str) and clip in shown:
            return clip
        if isinstance(clip, str) and clip.upper() in LABELS[: len(shown)]:
            return shown[LABELS.index(clip.upper())]
        raise InvalidVote(f"`clip` must be one of this task's clip ids or letters {', '.join(LABELS[:len(shown)])}, "
                          f"got {str(clip)[:60]!r}")

    def vote(self, annotator: str, task_id: int, ranking: dict[str, int] | None, verdict: str = "rank",
             comment: str | None = None) -> int:
        """Store a vote and return its id; refuse (``InvalidVote``, nothing written) what is not valid.

        ``ranking`` maps clip ids (or letters) to dense ranks, 1 = best, ties allowed; it must be
        empty for ``verdict`` ``all_bad`` or ``skip``. Ranking and all-bad need every clip played.
        ``comment`` is optional free text kept with the vote.
        """
        if verdict not in VERDICTS:
            raise InvalidVote(f"`verdict` must be one of {', '.join(VERDICTS)}, got {str(verdict)[:40]!r}")
        if verdict == "skip" and not ranking:
            task_id = check_int(task_id, "task_id", minimum=1, error=InvalidVote)
            with self._lock:
                known = (annotator, task_id) in self._shown
            if not known:  # e.g. after an app restart: a skip needs no plays, the store knows the assignment
                return self.store.submit(annotator, task_id, skip=True)
        with self._lock:
            key, shown = self._shown_clips(annotator, task_id)
            plays = dict(self._plays[key])
            started = self._handed_out_at[key]
            if ranking and not isinstance(ranking, dict):
                raise InvalidVote(f"`ranking` must map clip ids or letters to ranks, got {str(ranking)[:60]!r}")
            by_id = {self._clip_id(clip, shown): rank for clip, rank in (ranking or {}).items()}
            if ranking and len(by_id) != len(ranking):
                raise InvalidVote("`ranking` names the same clip twice (once by id, once by letter)")
        unplayed = [label for label, clip_id in zip(LABELS, shown) if not plays.get(clip_id)]
        if verdict != "skip" and unplayed:
            raise InvalidVote(f"play every clip before voting: not played yet: {', '.join(unplayed)}")
        vote_id = self.store.submit(
            annotator, key[1], by_id or None, all_bad=verdict == "all_bad", skip=verdict == "skip",
            time_spent_s=min(time.monotonic() - started, MAX_TIME_SPENT_S), play_counts=plays, comment=comment,
        )
        with self._lock:
            for table in (self._shown, self._served, self._plays, self._handed_out_at):
                table.pop(key, None)
        return vote_id

    def progress(self, annotator: str) -> Progress:
        """Your votes, and how far the (model) tasks are from their target number of annotators."""
        yours = [r for r in self.store.rankings() if r.annotator == annotator]
        tasks = self.store.task_progress()
        return Progress(
            ranked_by_you=sum(not r.skipped for r in yours),
            skipped_by_you=sum(r.skipped for r in yours),
            tasks_done=sum(votes >= target for _, votes, target in tasks),
            tasks_started=sum(votes > 0 for _, votes, _ in tasks),
            tasks=len(tasks),
            target=max((target for _, _, target in tasks), default=self.store.target_overlap),
        )

    def reveal(self, annotator: str, task: ShownTask) -> dict[str, str]:
        """Letter -> model behind the clip, for a task this annotator has voted on (never before)."""
        models = self.store.reveal(annotator, task.task_id)
        return {label: models[clip_id] for label, clip_id in zip(task.labels, task.clip_ids)}
