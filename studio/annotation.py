"""Blind ranking from the app: hand out tasks, log which clips were played, take votes.

The store (``annotate.Store``) owns tasks, assignments and votes. This module adds what a
web session needs on top: letters for the clips (A, B, C ... in the order shuffled for the
annotator) and clip ids of the annotator's own (``AnnotationSession.public_clip_id``), a log
of plays, and the rule that a clip is judged only after it was heard.

A task whose clip files cannot be read is withdrawn from assignment (``Store.withdraw_task``,
logged with the file; the Dataset tab lists it) and the annotator gets the next one: a
missing file never blocks anybody, and no message names a server path.

The play log lives in memory, per (annotator, task): a restarted app forgets it and the
annotator plays the clips again. ``vote`` refuses a ranking or an all-bad vote until every
clip of the task was played (a skip needs no listening); the counts go into the store with
the vote (``play_counts``).

A two-clip task is voted in the arena's A/B form: A is better, B is better, tie, both bad.
Each answer is a ranking of the two clips (``AB_RANKINGS``; both bad is an all-bad vote),
so it goes through the same checks and the same ``Store.submit`` as any ranking.

An annotator may undo their last vote within the store's window (``undo_last_vote``), unless
the models behind its clips were shown to them after it (``--reveal-models``): a vote made
knowing them would no longer be blind.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass

from collections.abc import Callable
from pathlib import Path

from annotate import InvalidVote, Ranking, Store, Task
from annotate.gold import GoldScore, gold_accuracy
from annotate.store import MAX_TASK_CLIPS, MAX_TIME_SPENT_S, RevealWithheld, reveals_models
from annotate.validation import check_int, check_ranking

from .serving import NotAClip

logger = logging.getLogger(__name__)

# One player per clip: the store never makes (nor assigns) a task with more.
MAX_SHOWN_CLIPS = MAX_TASK_CLIPS
LABELS = string.ascii_uppercase[:MAX_SHOWN_CLIPS]
# The A/B form's answers as rankings of clips A and B (1 = better, equal = tie); "both bad" is the all_bad verdict.
AB_RANKINGS = {"a_better": {"A": 1, "B": 2}, "b_better": {"A": 2, "B": 1}, "tie": {"A": 1, "B": 1}}
VERDICT_NAMES = {"rank": "rank", "all_bad": "all bad", "skip": "skip",
                 "a_better": "A is better", "b_better": "B is better", "tie": "tie"}
VERDICTS = tuple(VERDICT_NAMES)
RANKING_VERDICTS = ("rank", *AB_RANKINGS)  # the verdicts that rank the clips (and earn a reveal)

GUIDELINES = """**How to rank.** Play every clip (all of them, to the end if you can), then rank them:
1 = best. Judge how well each clip matches the prompt (every sound it names, in the order and
number it says), then audio quality. Equal ranks are ties; use them when you cannot hear a difference.
**All bad** when no clip is acceptable; **Skip** when you cannot judge (broken audio, unclear prompt).
A task of two clips asks which is better: **A is better**, **B is better**, **Tie** or **Both bad**.
The models behind the clips are hidden and their order is shuffled for you. **Undo last vote** takes your
last vote back within a minute; the task then comes back to you."""

GOLD_SHOWN_EVERY = 5  # the gold accuracy an annotator sees moves only in steps of this many answers

SHORTCUTS = ("Keys: **a**-**h** play clip A-H · **1**-**8** rank the clip played last · **Enter** vote · "
             "**x** all bad · **s** skip. Two clips: **←** A is better · **→** B is better · **t** tie · "
             "**x** both bad")


@dataclass(frozen=True)
class ShownTask:
    """A task as the annotator sees it: prompt, lettered clips and what they have played."""

    task_id: int
    prompt: str
    clip_ids: list[str]  # this annotator's ids for the clips (``public_clip_id``), in the order shown: A, B, C ...
    audio_paths: list[str]
    plays: dict[str, int]

    @property
    def labels(self) -> list[str]:
        return list(LABELS[: len(self.clip_ids)])

    @property
    def all_played(self) -> bool:
        return all(self.plays.get(clip_id, 0) > 0 for clip_id in self.clip_ids)

    @property
    def is_pair(self) -> bool:
        """Two clips: voted in the A/B form."""
        return len(self.clip_ids) == 2

    def revealed(self, models: dict[str, str]) -> str:
        """The models behind the clips (``AnnotationSession.reveal``) in the annotator's letters:
        "**A** was `m`, ..."."""
        return ", ".join(f"**{label}** was `{models[clip_id]}`" for label, clip_id in zip(self.labels, self.clip_ids))

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
    ranked_by_you: int  # your standing votes that were not skips
    skipped_by_you: int
    tasks_done: int  # tasks that reached their target number of annotators
    tasks_started: int  # tasks with at least one (non-skip) vote
    tasks: int
    target: int  # annotators wanted per task
    gold: GoldScore | None = None  # your gold-task answers, where the owner shows them (--show-gold-accuracy)

    def as_markdown(self) -> str:
        skipped = f" (and skipped {self.skipped_by_you})" if self.skipped_by_you else ""
        text = (f"You have ranked **{self.ranked_by_you}** task(s){skipped}. Of {self.tasks} tasks, "
                f"**{self.tasks_started}** have at least one ranking and **{self.tasks_done}** have the "
                f"{self.target} rankings each task is meant to get.")
        if self.gold is None:
            return text
        if not self.gold.answered:
            return (text + " Your accuracy on check tasks (their answer is known): shown once you have answered "
                    f"{GOLD_SHOWN_EVERY}.")
        return (text + f" Your accuracy on check tasks (their answer is known): **{self.gold.accuracy:.0%}** "
                f"({self.gold.correct} of {self.gold.answered} right; updated every {GOLD_SHOWN_EVERY} answers).")


def heard_seconds(play_log: list[tuple[float, str]], clips: list[str], voted_at: float) -> dict[str, float]:
    """Clip -> the seconds it could have been heard, from the times its plays started (``play_log``: (when, clip)):
    the page plays one clip at a time, so a play lasts at most until the next play starts or the vote. An upper
    bound (pauses are not reported): the server cannot be told that a clip was heard longer than it was."""
    heard = dict.fromkeys(clips, 0.0)
    ordered = sorted(play_log)
    for (started, clip), ended in zip(ordered, [when for when, _ in ordered[1:]] + [voted_at]):
        heard[clip] += max(0.0, min(ended, voted_at) - started)
    return {clip: round(seconds, 3) for clip, seconds in heard.items()}


def shown_gold_score(annotator: str, votes: list[Ranking], answers: dict, settled_before: float) -> GoldScore:
    """The gold accuracy an annotator is shown: over their gold answers cast before ``settled_before`` (past the
    undo window), in whole steps of ``GOLD_SHOWN_EVERY``, so that the number never changes right after a vote and
    never by one answer: it cannot point at the task that was a check task, nor at its answer."""
    settled = [r for r in votes if r.task_id in answers and not r.skipped and r.created_at < settled_before]
    shown = settled[:len(settled) - len(settled) % GOLD_SHOWN_EVERY]
    return gold_accuracy(shown, answers).get(annotator, GoldScore(annotator, 0, 0))


class AnnotationSession:
    """Tasks, plays and votes for every annotator of one app (thread-safe).

    The clip ids an annotator sees are theirs alone: ``HMAC(secret, annotator, task, stored clip id)``
    (``public_clip_id``), so what one annotator learns about a clip (a reveal, a shared note) says
    nothing about any other annotator's clips; the store's own ids never leave this class, and
    refusals name clips by their letters.
    """

    def __init__(self, store: Store, secret: bytes, serve: Callable[[str], str] = str,
                 clock: Callable[[], float] = time.monotonic):
        """``secret`` keys the public clip ids (``studio.secret``); ``serve`` turns a clip's stored path into
        the path handed to the browser (``ClipServer.serve``: a copy under a random name, outside the data folder);
        ``clock`` times plays and votes (tests pass their own)."""
        self.store = store
        self.secret = secret
        self.serve = serve
        self.clock = clock
        self._lock = threading.Lock()
        self._shown: dict[tuple[str, int], list[str]] = {}  # the store's clip ids, in the order shown
        self._served: dict[tuple[str, int], list[str]] = {}
        self._plays: dict[tuple[str, int], Counter] = {}
        self._play_log: dict[tuple[str, int], list[tuple[float, str]]] = {}  # (when, stored clip id) per play
        self._handed_out_at: dict[tuple[str, int], float] = {}

    def public_clip_id(self, annotator: str, task_id: int, clip_id: str) -> str:
        """The id ``annotator`` sees for the stored clip ``clip_id`` of task ``task_id``."""
        message = json.dumps(["clip", annotator, task_id, clip_id]).encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:16]

    def next_task(self, annotator: str, senders: list[str] = ()) -> ShownTask | None:
        """The annotator's open task (same order as before) or a new one, never one ``senders`` (who asks:
        ``Studio.sender_tokens``) sent from the Demo; None when none is left. A withdrawn task whose clips are back
        is handed out again."""
        self.store.reinstate_readable()
        while (task := self.store.next_task(annotator, senders)) is not None:
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
            shown = [clip.id for clip in task.candidates]
            with self._lock:
                self._shown[key] = shown
                self._served[key] = served
                self._plays.setdefault(key, Counter())
                self._handed_out_at.setdefault(key, self.clock())
                plays = self._public_counts(annotator, task.id, shown, self._plays[key])
            return ShownTask(task.id, task.prompt, [self.public_clip_id(annotator, task.id, c) for c in shown],
                             served, plays)
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
                if not isinstance(err, NotAClip) and err.filename != clip.audio_path:
                    # the copy failed (a full disk ...), not the clip: try again later
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

    def _public_counts(self, annotator: str, task_id: int, shown: list[str], plays: Counter) -> dict[str, int]:
        return {self.public_clip_id(annotator, task_id, clip_id): plays[clip_id] for clip_id in shown if plays[clip_id]}

    def _open(self, annotator: str, task_id: object) -> tuple[tuple[str, int], list[str] | None]:
        """(annotator, task id) and the stored clip ids shown, None when the task is not open in this session."""
        task_id = check_int(task_id, "task_id", minimum=1, error=InvalidVote)
        return (annotator, task_id), self._shown.get((annotator, task_id))

    @staticmethod
    def _not_open(annotator: str, task_id: int) -> InvalidVote:
        return InvalidVote(f"task {task_id} is not open for {annotator!r}: ask for the next task first")

    def record_play(self, annotator: str, task_id: int, clip: str) -> dict[str, int]:
        """Count one play of a clip (by its public id or letter); return the task's play counts by public id."""
        with self._lock:
            key, shown = self._open(annotator, task_id)
            if shown is None:
                raise self._not_open(*key)
            letter = self._letter(clip, key, shown, "clip")
            self._plays[key][shown[LABELS.index(letter)]] += 1
            self._play_log.setdefault(key, []).append((self.clock(), shown[LABELS.index(letter)]))
            return self._public_counts(*key, shown, self._plays[key])

    def _letter(self, clip: object, key: tuple[str, int], shown: list[str], argument: str) -> str:
        """The letter of a clip named by its letter or its public id; ``InvalidVote`` naming the letters otherwise."""
        letters = LABELS[:len(shown)]
        if isinstance(clip, str):
            if clip.upper() in letters:
                return clip.upper()
            for letter, clip_id in zip(letters, shown):
                if hmac.compare_digest(clip.encode(), self.public_clip_id(*key, clip_id).encode()):
                    return letter
        raise InvalidVote(f"`{argument}` must name one of this task's clips by its letter ({', '.join(letters)}) or "
                          f"its clip id, got {str(clip)[:60]!r}")

    def _ranking(self, ranking: object, key: tuple[str, int], shown: list[str]) -> dict[str, int] | None:
        """Stored clip id -> rank for a ranking keyed by letters or public ids, checked in the annotator's terms
        (letters); None for no ranking."""
        if not ranking:
            return None
        if not isinstance(ranking, dict):
            raise InvalidVote(f"`ranking` must map clip letters or ids to ranks, got {str(ranking)[:60]!r}")
        by_letter = {}
        for clip, rank in ranking.items():
            letter = self._letter(clip, key, shown, "ranking")
            if letter in by_letter:
                raise InvalidVote(f"`ranking` names clip {letter} twice (once by id, once by letter)")
            by_letter[letter] = rank
        ranks = check_ranking(list(by_letter.items()), list(LABELS[:len(shown)]))
        return {shown[LABELS.index(letter)]: rank for letter, rank in ranks.items()}

    @staticmethod
    def _ab_ranking(verdict: str, ranking: object, clips: int) -> object:
        """The ranking an A/B answer stands for (``AB_RANKINGS``); any other verdict's ranking as given."""
        if verdict not in AB_RANKINGS:
            return ranking
        if ranking:
            raise InvalidVote(f"`ranking` must be empty with `verdict` {verdict!r}: the verdict says how A and B rank")
        if clips != 2:
            raise InvalidVote(f"`verdict` {verdict!r} is for two-clip tasks; this one has {clips} clips: rank them "
                              "(`verdict` 'rank')")
        return AB_RANKINGS[verdict]

    def vote(self, annotator: str, task_id: int, ranking: dict[str, int] | None, verdict: str = "rank",
             comment: str | None = None) -> int:
        """Store a vote and return its id; refuse (``InvalidVote``, nothing written) what is not valid.

        ``ranking`` maps clip letters (or public ids) to dense ranks, 1 = best, ties allowed; it must be
        empty for ``verdict`` ``all_bad`` or ``skip``, and for the A/B answers of a two-clip task
        (``a_better``, ``b_better``, ``tie``: ``AB_RANKINGS``). Every verdict but skip needs every clip played.
        ``comment`` is optional free text kept with the vote. The same vote sent again (its answer lost)
        gets the stored vote's id back; a different one is refused (``VoteConflict``).
        """
        if verdict not in VERDICTS:
            raise InvalidVote(f"`verdict` must be one of {', '.join(VERDICTS)}, got {str(verdict)[:40]!r}")
        with self._lock:
            key, shown = self._open(annotator, task_id)
            plays = dict(self._plays.get(key, {}))
            play_log = list(self._play_log.get(key, []))
            started = self._handed_out_at.get(key)
        if shown is None:  # voted already, or open in the store only (e.g. after an app restart)
            stored = self.store.vote_of(*key)
            if stored is not None:
                ranking = self._ab_ranking(verdict, ranking, len(stored.shown_order))
                return self.store.submit(*key, self._ranking(ranking, key, stored.shown_order),
                                         all_bad=verdict == "all_bad", skip=verdict == "skip")
            if verdict == "skip" and not ranking:  # a skip needs no plays: the store knows the assignment
                return self.store.submit(*key, skip=True)
            raise self._not_open(*key)
        by_id = self._ranking(self._ab_ranking(verdict, ranking, len(shown)), key, shown)
        unplayed = [label for label, clip_id in zip(LABELS, shown) if not plays.get(clip_id)]
        if verdict != "skip" and unplayed:
            raise InvalidVote(f"play every clip before voting: not played yet: {', '.join(unplayed)}")
        now = self.clock()
        vote_id = self.store.submit(
            *key, by_id, all_bad=verdict == "all_bad", skip=verdict == "skip",
            time_spent_s=min(now - started, MAX_TIME_SPENT_S), play_counts=plays, comment=comment,
            heard_s=heard_seconds(play_log, shown, now),
        )
        with self._lock:
            for table in (self._shown, self._served, self._plays, self._play_log, self._handed_out_at):
                table.pop(key, None)
        return vote_id

    def undo_last_vote(self, annotator: str, reveal_models: bool = False) -> Ranking:
        """Take back the annotator's last vote (``Store.undo_vote``: theirs, within the window) and return it; its
        task is theirs to vote again, every clip played anew. With ``reveal_models`` a vote that showed them the
        models (``reveals_models``) stays: voting again knowing the models would not be blind; so does a vote on a
        gold task. A vote the public results already count leaves them only with the next batch
        (``published_rankings``), so no undo changes them by one vote."""
        last = self.store.last_vote(annotator)
        if last is None:
            raise InvalidVote("you have no vote to undo")
        if last.task_id in self.store.gold_answers():
            raise InvalidVote(f"vote {last.id} stays: a vote on a check task (its answer is known) cannot be undone, "
                              "so that your accuracy on them is your first answer")
        if reveal_models and reveals_models(last):
            raise InvalidVote(f"vote {last.id} showed you the models behind its clips, so it stays: "
                              "a vote made knowing them would not be blind")
        return self.store.undo_vote(annotator, last.id)

    def progress(self, annotator: str, show_gold: bool = False) -> Progress:
        """Your votes (and with ``show_gold`` your gold-task accuracy, ``shown_gold_score``), and how far the (model)
        tasks are from their target number of annotators. Undone votes count nowhere."""
        yours = [r for r in self.store.rankings() if r.annotator == annotator]
        tasks = self.store.task_progress()
        gold = None
        if show_gold:
            gold = shown_gold_score(annotator, yours, self.store.gold_answers(), time.time() - self.store.undo_window_s)
        return Progress(
            ranked_by_you=sum(not r.skipped for r in yours),
            skipped_by_you=sum(r.skipped for r in yours),
            tasks_done=sum(votes >= target for _, votes, target in tasks),
            tasks_started=sum(votes > 0 for _, votes, _ in tasks),
            tasks=len(tasks),
            target=max((target for _, _, target in tasks), default=self.store.target_overlap),
            gold=gold,
        )

    def reveal(self, annotator: str, task_id: int) -> dict[str, str]:
        """Public clip id -> the model behind it, in the order shown, once this annotator has ranked the task
        after playing every clip (``Store.reveal``): never before, nor after a skip or an all-bad vote."""
        return {self.public_clip_id(annotator, task_id, clip_id): model
                for clip_id, model in self.store.reveal(annotator, task_id).items()}

    def uncounted(self, annotator: str, task_id: int) -> str | None:
        """Why the annotator's vote on the task counts nowhere (its clips were not heard long enough:
        ``Ranking.counts``), in their words; None when it counts."""
        vote = self.store.vote_of(annotator, task_id)
        if vote is None or vote.heard is not False:
            return None
        return (f"It does not count: every clip must play for at least {self.store.min_heard_fraction:.0%} of its "
                "length before the vote.")

    def reveal_if_private(self, annotator: str, task_id: int) -> tuple[dict[str, str] | None, str | None]:
        """After a ranking: (``reveal``'s models, None), or (None, why they stay hidden) where the vote does not
        count or another annotator may still be given these clips (``Store.reveal``)."""
        try:
            return self.reveal(annotator, task_id), None
        except RevealWithheld as err:
            return None, str(err)
        except InvalidVote:
            return None, "models stay hidden: this vote does not count (its clips were not heard long enough)"
