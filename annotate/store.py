"""The annotation store: prompts, candidate clips, tasks, annotators and their rankings.

One SQLite database in WAL mode (``<data_dir>/annotate.sqlite``) plus content-addressed
clips (``<data_dir>/audio/``). Why SQLite: the votes of a Space need no server, survive
process kills, and WAL lets annotators read while one of them writes.

Guarantees:

- every write is one transaction (``BEGIN IMMEDIATE``); writers queue on an OS lock,
  with ``busy_timeout`` behind it;
- a vote reported stored survives a killed process and a power loss: vote transactions
  commit with ``synchronous=FULL`` (the WAL is fsynced). Other writes (assignments,
  registrations, clips' rows) use ``NORMAL``, which survives a killed process; a power
  loss may forget the last of them, which costs nothing (an assignment is re-issued);
- votes are insert-only: triggers refuse UPDATE/DELETE on assignments, rankings and
  their entries, so a vote can never be rewritten, only added; an undo (``undo_vote``) is
  a new row that supersedes the vote;
- every input is checked before the transaction writes; a refused call raises an
  ``InvalidInput`` (a ``ValueError``) and leaves the database and the audio folder as
  they were;
- blind ranking: annotators only ever see a random public clip id (the app serves the
  audio under a random name), in an order shuffled for them from a secret random source
  and stored with the assignment (a reload shows the same order); the model, seed
  and settings behind a clip stay in the store until they have ranked the task,
  every clip played (``reveal``).

Ranking semantics: ``ranking`` maps each clip id shown to a rank, 1 = best. Ranks are
*dense*: positive integers whose distinct values are exactly 1..max, so equal ranks are
ties (``{a: 1, b: 1, c: 2}`` is valid; ``{a: 1, b: 3}`` has a gap and is refused).
``skip`` (cannot judge) and ``all_bad`` (none is acceptable) replace a ranking.

Assignment policy (``next_task``): an annotator's open assignment is returned again
(same clip order) until they vote or skip; otherwise they get a task they have never
seen, preferring tasks still short of ``target_overlap`` annotators (counting votes and
fresh open assignments; skips do not count), then - with ``informative_first`` - tasks
whose clips' automatic scores are closest, then the task closest to its target (so
tasks finish and agreement can be measured early), then the oldest.

Gold tasks (``add_gold_task``) have a known correct ranking and measure annotators, not
models. They are mixed in: while fewer than ``gold_share`` of the tasks an annotator was
given are gold, their next new task is a gold one they have not seen (if any is left).
Gold tasks never count as "tasks at target" and never reach the verdict or the export.

Each vote may carry a free-text ``comment`` (kept with the vote, never compared).

Undo (``undo_vote``): an annotator may take back their last vote within ``undo_window_s``
(``UNDO_WINDOW_S``). The vote stays in the database, superseded by a row of ``vote_undos``;
``rankings()`` and ``vote_of`` no longer return it, so the export, the verdict, gold
accuracy and every count leave it out, and the task is open to that annotator again (same
clip order) until they vote anew.

Listening (``submit(heard_s=...)``): where the caller timed how long each clip could have been heard, a vote
with a clip heard for less than ``min_heard_fraction`` of its length is stored with ``heard`` false and counts
nowhere (``Ranking.counts``): not towards its task's target, the verdict, the export or a reveal.

Reveals (``reveal``) are given only where nobody else can be given the same clips again, and retire the task.

A task whose clips cannot be read (a file missing or unreadable) is withdrawn
(``withdraw_task``): it is not assigned again until its clips are back (``reinstate_readable``), open
assignments of it are closed, and it no longer counts among the tasks to do; ``withdrawn_tasks`` lists them
with the reason.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from preference_data.files import link_or_copy, write_atomic
from preference_data.latents import latent_from_bytes, latent_to_bytes

from .clips import SAMPLE_RATE, clip_path, load_clip, write_clip
from .schema import MIGRATIONS
from .validation import (
    MAX_PROMPT_CHARS,
    MAX_SPEC_CHARS,
    InvalidInput,
    InvalidVote,
    VoteConflict,
    check_float,
    check_int,
    check_name,
    check_comment,
    check_play_counts,
    check_ranking,
    check_text,
    preview,
    ranking_pairs,
)

logger = logging.getLogger(__name__)

DB_NAME = "annotate.sqlite"
EXPORT_DIR = "export"  # the data folder's own export folder (the app's Export writes there)
MAX_TASK_CLIPS = 8  # what one screen can rank (the app shows A..H); larger tasks are never assigned
MAX_TIME_SPENT_S = 24 * 3600.0
UNDO_WINDOW_S = 60.0  # how long after a vote its annotator may take it back: a slip is noticed at once
# A vote counts only if each of its clips could have been heard for at least this share of its length. Half, not
# all: a listener who stops once every sound the prompt names was heard, or skips back, keeps their vote; a
# script still has to spend half of every clip's real time on every task.
MIN_HEARD_FRACTION = 0.5


REVEAL_WITHHELD = ("models stay hidden: other annotators may still be given these clips (they are named to whoever "
                   "casts the last vote a task needs, when no other task uses its clips)")


class RevealWithheld(InvalidVote):
    """A reveal that would let another annotator know the models behind clips they may still be given."""


class UnusableStore(ValueError):
    """The database cannot be used: not an SQLite database, damaged, or of a schema newer than this code."""


@dataclass(frozen=True)
class ShownClip:
    """A clip as an annotator gets it: an opaque id and a file to play, nothing else."""

    id: str
    audio_path: str


@dataclass(frozen=True)
class Task:
    """One prompt and its clips, in the order shown to the annotator who asked."""

    id: int
    prompt: str
    candidates: list[ShownClip]


@dataclass(frozen=True)
class Candidate:
    """A clip with everything known about it (admin/export side; never sent to annotators)."""

    id: str
    prompt: str
    model: str
    seed: int
    steps: int
    guidance: float
    sha256: str
    audio_path: str
    duration_s: float
    sample_rate: int
    auto_score: float | None
    latent_fingerprint: str | None = None  # the clip's sampled latent is stored beside its audio
    auto_scorer: str | None = None  # the `identity` of the ranker that gave auto_score

    @property
    def latent_path(self) -> str | None:
        """Where the latent this clip was decoded from is stored (``None``: not known)."""
        return None if self.latent_fingerprint is None else str(latent_path(self.audio_path))

    def read_latent(self) -> np.ndarray | None:
        """The stored latent, or ``None`` when there is none or it cannot be read (the audio still can)."""
        try:
            return None if self.latent_path is None else latent_from_bytes(Path(self.latent_path).read_bytes())
        except (OSError, ValueError):
            return None


def latent_path(audio_path: str | os.PathLike) -> Path:
    """``<sha>.latent.npy`` beside the clip's ``<sha>.wav``."""
    return Path(audio_path).with_suffix(".latent.npy")


@dataclass(frozen=True)
class Ranking:
    """One stored vote: clip id -> rank (None for skip/all-bad votes)."""

    id: int
    task_id: int
    annotator: str
    ranks: dict[str, int | None]
    all_bad: bool
    skipped: bool
    shown_order: list[str]
    play_counts: dict[str, int | None]
    time_spent_s: float | None
    created_at: float
    comment: str | None = None
    undone_at: float | None = None  # when its annotator took it back (``Store.undo_vote``); None: it stands
    heard: bool | None = None  # every clip heard long enough (``Store.min_heard_fraction``); None: not measured

    @property
    def counts(self) -> bool:
        """Whether the vote counts (towards a task's target, the verdict and the export): it stands, and its clips
        were heard long enough where that was measured."""
        return self.undone_at is None and self.heard is not False


def reveals_models(vote: Ranking) -> bool:
    """Whether this vote earns its annotator the models behind the clips: a ranking (not a skip or an all-bad
    vote, which cost no judgement) that counts, made with every clip played."""
    return (vote.counts and not (vote.skipped or vote.all_bad)
            and all(vote.play_counts.get(clip_id) for clip_id in vote.shown_order))


@dataclass(frozen=True)
class WithdrawnTask:
    """A task taken out of assignment, and why (for the admins)."""

    task_id: int
    prompt: str
    reason: str
    created_at: float


@dataclass(frozen=True)
class ExportRecord:
    """A finished export: where it went, how many pairs from how many rankings, and their agreement."""

    id: int
    out_dir: str
    strategy: str
    pairs: int
    rankings: int
    alpha: float | None
    fingerprint: str
    created_at: float


class Store:
    """Annotation data under ``data_dir``; safe to share between threads and processes.

    Args:
        data_dir: folder holding the database and the clips (created if missing).
        target_overlap: annotators wanted per task (new tasks get it), for agreement.
        informative_first: hand out tasks whose clips' automatic scores are closest first.
        gold_share: the share of each annotator's tasks that are gold tasks, while any are left.
        assignment_ttl_s: an open assignment older than this stops counting towards its
            task's overlap (its owner left), so the task goes to someone else too.
        undo_window_s: how long after a vote its annotator may undo it.
        min_heard_fraction: a vote whose clips were heard for less than this share of their length (where the
            caller measured it: ``submit(heard_s=...)``) is stored but does not count.
        busy_timeout_s: how long a write waits for the lock before giving up.
    """

    @classmethod
    def existing(cls, data_dir: str | Path) -> "Store":
        """The store in ``data_dir``, for the commands that only read one: none there is refused, creating nothing."""
        if not (Path(data_dir) / DB_NAME).is_file():
            raise InvalidInput(f"no annotation store in {data_dir} (no {DB_NAME}): make tasks first with "
                               f"`python -m annotate pool`, or point --data-dir at the app's data folder")
        return cls(data_dir)

    def __init__(
        self,
        data_dir: str | os.PathLike = "data",
        *,
        target_overlap: int = 3,
        informative_first: bool = False,
        gold_share: float = 0.2,
        assignment_ttl_s: float = 1800.0,
        undo_window_s: float = UNDO_WINDOW_S,
        min_heard_fraction: float = MIN_HEARD_FRACTION,
        busy_timeout_s: float = 30.0,
    ):
        self.data_dir = Path(data_dir)
        self.audio_dir = self.data_dir / "audio"
        self.db_path = self.data_dir / DB_NAME
        self.target_overlap = check_int(target_overlap, "target_overlap", minimum=1)
        self.informative_first = bool(informative_first)
        self.gold_share = check_float(gold_share, "gold_share")
        if not 0 <= self.gold_share <= 1:
            raise InvalidInput(f"`gold_share` must be within 0..1, got {self.gold_share}")
        self.assignment_ttl_s = float(assignment_ttl_s)
        self.undo_window_s = float(undo_window_s)
        self.min_heard_fraction = check_float(min_heard_fraction, "min_heard_fraction")
        if not 0 <= self.min_heard_fraction <= 1:
            raise InvalidInput(f"`min_heard_fraction` must be within 0..1, got {self.min_heard_fraction}")
        self.busy_timeout_s = float(busy_timeout_s)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            self._migrate()
        except sqlite3.OperationalError:  # locked, I/O: the database may be fine
            raise
        except sqlite3.DatabaseError as err:
            raise UnusableStore(f"{self.db_path} is not a usable annotation store: {err}") from None

    # ------------------------------------------------------------------ connections

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (a forked child opens its own: connections must not cross a fork)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=self.busy_timeout_s)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            self._local.conn, self._local.pid = conn, os.getpid()
            self._local.write_lock = open(self.db_path.with_suffix(".writelock"), "a")
        return conn

    @contextmanager
    def _write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of the block's statements commit together, or none.

        ``durable`` commits with ``synchronous=FULL`` (survives power loss), else ``NORMAL``
        (survives a killed process; a fsync per commit costs 0.2-4 ms on a busy disk).

        Writers first queue on an ``flock``: the kernel wakes the next one the moment the
        lock is free, where SQLite's busy handler polls with sleeps of up to 100 ms and
        lets unlucky writers starve for seconds under load. ``BEGIN IMMEDIATE`` and
        ``busy_timeout`` still guard against writers that bypass the lock.
        """
        conn = self._connection()
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        fcntl.flock(self._local.write_lock, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # some errors (disk full, I/O) already rolled it back
                    conn.execute("ROLLBACK")
                raise
        finally:
            fcntl.flock(self._local.write_lock, fcntl.LOCK_UN)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement of the block sees the same snapshot."""
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
            self._local.write_lock.close()
        self._local.conn = None

    def _migrate(self) -> None:
        conn = self._connection()
        # Off while migrating: a migration may drop and rebuild a table others reference (the pragma only
        # takes effect outside a transaction); every reference is checked before the migration commits.
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > len(MIGRATIONS):
                    raise UnusableStore(
                        f"{self.db_path} has schema version {version}; this code knows up to {len(MIGRATIONS)}: upgrade it"
                    )
                for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in statements:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {number}")
                    logger.info("migrated %s to schema version %d", self.db_path, number)
                broken = db.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise UnusableStore(f"{self.db_path} has rows naming rows that do not exist: {broken[:3]}")
        finally:
            conn.execute("PRAGMA foreign_keys = ON")

    @property
    def schema_version(self) -> int:
        return self._connection().execute("PRAGMA user_version").fetchone()[0]

    # ------------------------------------------------------------------ prompts, clips, tasks

    @staticmethod
    def _prompt_id(db: sqlite3.Connection, text: str) -> int:
        db.execute("INSERT INTO prompts (text, created_at) VALUES (?, ?) ON CONFLICT (text) DO NOTHING", (text, time.time()))
        return db.execute("SELECT id FROM prompts WHERE text = ?", (text,)).fetchone()[0]

    def add_candidate(
        self,
        prompt: str,
        audio: str | os.PathLike | bytes | np.ndarray,
        *,
        model: str,
        seed: int,
        steps: int,
        guidance: float,
        sample_rate: int | None = None,
        auto_score: float | None = None,
        latent: np.ndarray | None = None,
        latent_fingerprint: str | None = None,
    ) -> Candidate:
        """Validate and store one generated clip; return it.

        ``audio`` is a path, file bytes or a 1-D array (with ``sample_rate``); see
        ``annotate.clips`` for what is accepted. ``latent`` (with its ``latent_fingerprint``):
        the latent the model decoded into this clip, kept beside it so that DPO can train on
        what was ranked. ``auto_score`` is stored without a scorer, so the app's automatic ranker
        replaces it with its own (``autopairs.autorank.score_unscored``). Idempotent on (prompt,
        model, seed, steps, guidance): a clip already stored under that key is returned unchanged.
        """
        prompt = check_text(prompt, "prompt", MAX_PROMPT_CHARS)
        model = check_text(model, "model", MAX_SPEC_CHARS)
        seed = check_int(seed, "seed", minimum=0)
        steps = check_int(steps, "steps", minimum=1)
        guidance = check_float(guidance, "guidance")
        if auto_score is not None:
            auto_score = check_float(auto_score, "auto_score")
        clip = load_clip(audio, sample_rate)
        if (latent is None) != (latent_fingerprint is None):
            raise InvalidInput("`latent` and `latent_fingerprint` go together")
        if latent is not None:
            latent_fingerprint = check_text(latent_fingerprint, "latent_fingerprint", 64)
            try:
                latent_bytes = latent_to_bytes(np.asarray(latent))
                latent_from_bytes(latent_bytes)  # the checks a reader makes: finite, (channels, frames, bins)
            except ValueError as err:
                raise InvalidInput(f"`latent`: {err}") from None
        path = write_clip(self.audio_dir, clip)
        if latent is not None and not latent_path(path).exists():
            write_atomic(latent_path(path), latent_bytes)  # before the row: a stored fingerprint always has its file
        with self._write() as db:
            prompt_id = self._prompt_id(db, prompt)
            db.execute(
                """INSERT INTO candidates (public_id, prompt_id, model, seed, steps, guidance, sha256,
                                           duration_s, sample_rate, auto_score, created_at, latent_fingerprint)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (prompt_id, model, seed, steps, guidance) DO NOTHING""",
                (secrets.token_hex(8), prompt_id, model, seed, steps, guidance, clip.sha256,
                 clip.duration_s, SAMPLE_RATE, auto_score, time.time(), latent_fingerprint),
            )
            row = db.execute(
                _CANDIDATE_SQL + " WHERE c.prompt_id = ? AND c.model = ? AND c.seed = ? AND c.steps = ? AND c.guidance = ?",
                (prompt_id, model, seed, steps, guidance),
            ).fetchone()
        candidate = self._candidate(row)
        if candidate.sha256 != clip.sha256:
            logger.warning("candidate %s already stored with different audio; kept the first clip", candidate.id)
        return candidate

    def find_candidate(self, prompt: str, *, model: str, seed: int, steps: int, guidance: float) -> Candidate | None:
        """The clip stored under these generation settings, if any."""
        row = self._connection().execute(
            _CANDIDATE_SQL + " WHERE p.text = ? AND c.model = ? AND c.seed = ? AND c.steps = ? AND c.guidance = ?",
            (prompt, model, seed, steps, float(guidance)),
        ).fetchone()
        return None if row is None else self._candidate(row)

    def candidates(self, ids: Iterable[str] | None = None) -> dict[str, Candidate]:
        """Clips by public id (all of them when ``ids`` is None)."""
        db = self._connection()
        if ids is None:
            rows = db.execute(_CANDIDATE_SQL).fetchall()
        else:
            wanted = list(dict.fromkeys(ids))
            rows = db.execute(
                _CANDIDATE_SQL + " WHERE c.public_id IN (SELECT value FROM json_each(?))", (json.dumps(wanted),)
            ).fetchall()
        return {row[0]: self._candidate(row) for row in rows}

    def _candidate(self, row: tuple) -> Candidate:
        public_id, prompt, model, seed, steps, guidance, sha, duration, rate, score, fingerprint, scorer = row
        return Candidate(public_id, prompt, model, seed, steps, guidance, sha,
                         str(clip_path(self.audio_dir, sha)), duration, rate, score, fingerprint, scorer)

    def set_auto_score(self, candidate_id: str, score: float | None, scorer: str | None = None) -> None:
        """Attach an automatic (judge/CLAP/preference model) score to a clip, and who gave it (a ranker's
        ``identity``); ``None`` removes it. Used by the automatic verdict and ``informative_first``."""
        score = None if score is None else check_float(score, "score")
        with self._write() as db:
            updated = db.execute("UPDATE candidates SET auto_score = ?, auto_scorer = ? WHERE public_id = ?",
                                 (score, scorer, candidate_id)).rowcount
            if not updated:
                raise InvalidInput(f"`candidate_id` {preview(candidate_id)} is not a stored clip")

    def add_task(self, candidate_ids: Iterable[str], *, target_overlap: int | None = None,
                 senders: Iterable[str] = ()) -> int:
        """Make (or find) the task that ranks these clips of one prompt; return its id. ``senders``: who made it from
        the Demo and so knows its models (opaque tokens, e.g. keyed hashes of a session and an address):
        ``next_task`` never gives it to them, and ``sent_tasks`` lists it."""
        senders = [check_text(sender, "sender", 128) for sender in senders]
        task_id = self._add_task(list(candidate_ids), target_overlap)
        if senders:
            with self._write() as db:
                db.executemany("INSERT OR IGNORE INTO task_senders (task_id, sender) VALUES (?, ?)",
                               [(task_id, sender) for sender in senders])
        return task_id

    def sent_tasks(self) -> set[int]:
        """The tasks made from the Demo by a visitor (``add_task(senders=...)``)."""
        return {row[0] for row in self._connection().execute("SELECT DISTINCT task_id FROM task_senders")}

    def add_gold_task(self, answer: Mapping[str, int]) -> int:
        """Make a gold task over the clips of ``answer`` (clip id -> correct dense rank); return its id.

        The clips must form no task yet: a task is gold from its creation or never, so votes
        already cast on it cannot be reinterpreted.
        """
        if not isinstance(answer, Mapping):
            raise InvalidInput(f"`answer` must map clip ids to ranks, got {preview(answer)}")
        ids = list(answer)
        ranks = check_ranking(list(answer.items()), ids)
        if len(set(ranks.values())) < 2:
            raise InvalidInput(f"a gold `answer` must prefer some clip to another, got {preview(dict(answer))}")
        return self._add_task(ids, None, gold=ranks)

    def _add_task(self, ids: list, target_overlap: int | None, gold: dict[str, int] | None = None) -> int:
        if not all(isinstance(clip_id, str) for clip_id in ids):
            raise InvalidInput(f"`candidate_ids` must be clip id strings, got {preview(ids)}")
        if not 2 <= len(ids) <= MAX_TASK_CLIPS:
            raise InvalidInput(f"a task needs 2..{MAX_TASK_CLIPS} clips, got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise InvalidInput(f"`candidate_ids` lists a clip twice: {preview(ids)}")
        overlap = check_int(self.target_overlap if target_overlap is None else target_overlap, "target_overlap", 1)
        with self._write() as db:
            rows = db.execute(
                "SELECT id, prompt_id, steps, guidance FROM candidates WHERE public_id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            ).fetchall()
            if len(rows) != len(ids):
                raise InvalidInput(f"`candidate_ids` names clips that are not stored: {preview(ids)}")
            if len({row[1:] for row in rows}) != 1:
                raise InvalidInput(
                    "a task's clips must answer the same prompt with the same steps and guidance "
                    "(a pair records one generation setting)"
                )
            internal_ids = sorted(row[0] for row in rows)
            key = ",".join(map(str, internal_ids))
            if gold is not None:
                existing = db.execute(
                    "SELECT t.id, g.answer FROM tasks t LEFT JOIN gold_tasks g ON g.task_id = t.id WHERE t.candidate_key = ?",
                    (key,),
                ).fetchone()
                if existing is not None and existing[1] is not None and json.loads(existing[1]) == gold:
                    return existing[0]  # the same gold task again
                if existing is not None:
                    raise InvalidInput("these clips already form a task with another answer or none; "
                                       "a gold task needs clips of its own")
            db.execute(
                """INSERT INTO tasks (prompt_id, candidate_key, target_overlap, created_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (candidate_key) DO NOTHING""",
                (rows[0][1], key, overlap, time.time()),
            )
            task_id = db.execute("SELECT id FROM tasks WHERE candidate_key = ?", (key,)).fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO task_candidates (task_id, candidate_id) VALUES (?, ?)",
                [(task_id, candidate_id) for candidate_id in internal_ids],
            )
            if gold is not None:
                db.execute("INSERT INTO gold_tasks (task_id, answer, created_at) VALUES (?, ?, ?)",
                           (task_id, json.dumps(gold, sort_keys=True), time.time()))
            return task_id

    def gold_answers(self) -> dict[int, dict[str, int]]:
        """Gold task id -> its correct ranking (clip id -> rank)."""
        rows = self._connection().execute("SELECT task_id, answer FROM gold_tasks").fetchall()
        return {task_id: json.loads(answer) for task_id, answer in rows}

    def task_clips(self) -> dict[int, list[str]]:
        """Task id -> its clip ids, for every task (gold ones included)."""
        tasks: dict[int, list[str]] = {}
        for task_id, clip_id in self._connection().execute(
            "SELECT tc.task_id, c.public_id FROM task_candidates tc JOIN candidates c ON c.id = tc.candidate_id "
            "ORDER BY tc.task_id, c.id"
        ):
            tasks.setdefault(task_id, []).append(clip_id)
        return tasks

    # ------------------------------------------------------------------ annotators

    @staticmethod
    def _annotator_id(db: sqlite3.Connection, name: str, create: bool = False) -> int | None:
        if create:
            db.execute("INSERT INTO annotators (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, time.time()))
        row = db.execute("SELECT id FROM annotators WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def next_task(self, annotator: str, senders: Iterable[str] = ()) -> Task | None:
        """The task this annotator should rank now, or None when nothing is left for them.

        Returns their open assignment if they have one (same clip order); otherwise
        assigns a new task (see the module docstring for the policy) and records the
        shuffled order it is shown in, never one that any of ``senders`` (who is asking: their session, their
        address) sent from the Demo.
        """
        name = check_name(annotator)
        senders = json.dumps([str(sender) for sender in senders])
        with self._read() as db:  # the common re-ask needs no write lock
            task = self._open_task(db, name)
        if task is not None:
            return task
        with self._write() as db:
            task = self._open_task(db, name)
            if task is not None:
                return task
            annotator_id = self._annotator_id(db, name, create=True)
            given, gold_given = db.execute(
                """SELECT COUNT(*), COUNT(g.task_id) FROM assignments a LEFT JOIN gold_tasks g ON g.task_id = a.task_id
                   WHERE a.annotator_id = ?""",
                (annotator_id,),
            ).fetchone()
            wants_gold = gold_given < self.gold_share * (given + 1)
            row = None
            for gold in (wants_gold, not wants_gold):  # the kind due next, else the other
                row = db.execute(
                    _NEXT_TASK_SQL[self.informative_first],
                    {"annotator": annotator_id, "fresh_after": time.time() - self.assignment_ttl_s, "gold": gold,
                     "max_clips": MAX_TASK_CLIPS, "senders": senders},
                ).fetchone()
                if row is not None:
                    break
            if row is None:
                return None
            task_id = row[0]
            clip_ids = [r[0] for r in db.execute(_TASK_CLIPS_SQL, (task_id,))]
            # A secret source: nobody can predict the order from the public inputs (name, task id).
            secrets.SystemRandom().shuffle(clip_ids)
            now = time.time()
            assignment_id = db.execute(
                "INSERT INTO assignments (task_id, annotator_id, shown_order, assigned_at) VALUES (?, ?, ?, ?)",
                (task_id, annotator_id, json.dumps(clip_ids), now),
            ).lastrowid
            db.execute(
                "INSERT INTO open_assignments (assignment_id, task_id, annotator_id, assigned_at) VALUES (?, ?, ?, ?)",
                (assignment_id, task_id, annotator_id, now),
            )
            return self._task_view(db, task_id, clip_ids)

    def _open_task(self, db: sqlite3.Connection, name: str) -> Task | None:
        row = db.execute(_OPEN_ASSIGNMENT_SQL, (name,)).fetchone()
        return None if row is None else self._task_view(db, row[0], json.loads(row[1]))

    def open_task_id(self, annotator: str) -> int | None:
        """The task of the annotator's open assignment (the one ``next_task`` returns again), if any."""
        row = self._connection().execute(_OPEN_ASSIGNMENT_SQL, (check_name(annotator),)).fetchone()
        return None if row is None else row[0]

    def withdraw_task(self, task_id: int, reason: str) -> None:
        """Take a task out of assignment (its clips cannot be read): nobody gets it again until its clips are back
        (``reinstate_readable``), and its open assignments close. ``reason`` is for the admins. Withdrawing a withdrawn task changes nothing."""
        task_id = check_int(task_id, "task_id", minimum=1)
        reason = check_text(reason, "reason", MAX_PROMPT_CHARS)
        with self._write() as db:
            if db.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
                raise InvalidInput(f"unknown `task_id` {task_id}")
            db.execute("INSERT INTO withdrawn_tasks (task_id, reason, created_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (task_id) DO NOTHING", (task_id, reason, time.time()))
            db.execute("DELETE FROM open_assignments WHERE task_id = ?", (task_id,))

    def reinstate_readable(self) -> list[int]:
        """Hand out again the withdrawn tasks whose clip files are all back (regular files); return their ids."""
        withdrawn = [row[0] for row in self._connection().execute("SELECT task_id FROM withdrawn_tasks")]
        if not withdrawn:
            return []
        back = []
        for task_id in withdrawn:
            paths = [clip_path(self.audio_dir, sha) for _, sha in self._connection().execute(_TASK_CLIPS_SQL, (task_id,))]
            if all(path.is_file() and not path.is_symlink() and os.access(path, os.R_OK) for path in paths):
                back.append(task_id)
        if back:
            with self._write() as db:
                db.executemany("DELETE FROM withdrawn_tasks WHERE task_id = ?", [(task_id,) for task_id in back])
            logger.info("reinstated task(s) %s: their clips are back", back)
        return back

    def withdrawn_tasks(self) -> list[WithdrawnTask]:
        """Every withdrawn task with its prompt and reason, oldest first."""
        rows = self._connection().execute(
            """SELECT w.task_id, p.text, w.reason, w.created_at FROM withdrawn_tasks w JOIN tasks t ON t.id = w.task_id
               JOIN prompts p ON p.id = t.prompt_id ORDER BY w.created_at, w.task_id"""
        ).fetchall()
        return [WithdrawnTask(*row) for row in rows]

    def _task_view(self, db: sqlite3.Connection, task_id: int, shown_order: list[str]) -> Task:
        prompt = db.execute(
            "SELECT p.text FROM tasks t JOIN prompts p ON p.id = t.prompt_id WHERE t.id = ?", (task_id,)
        ).fetchone()[0]
        sha_by_id = dict(db.execute(_TASK_CLIPS_SQL, (task_id,)).fetchall())
        clips = [ShownClip(clip_id, str(clip_path(self.audio_dir, sha_by_id[clip_id]))) for clip_id in shown_order]
        return Task(id=task_id, prompt=prompt, candidates=clips)

    # ------------------------------------------------------------------ votes

    def submit(
        self,
        annotator: str,
        task_id: int,
        ranking: Mapping[str, int] | Iterable[tuple[str, int]] | None = None,
        *,
        all_bad: bool = False,
        skip: bool = False,
        time_spent_s: float | None = None,
        play_counts: Mapping[str, int] | None = None,
        comment: str | None = None,
        heard_s: Mapping[str, float] | None = None,
    ) -> int:
        """Store one vote and return its id; raise ``InvalidVote`` (and write nothing) if it is invalid.

        ``ranking`` maps every clip id shown to a dense rank (1 = best, equal = tie); with
        ``skip`` or ``all_bad`` it must be empty. Resubmitting the same vote (same ranks and
        flags; time, play counts and the comment are not compared) returns the stored
        vote's id; a different one raises ``VoteConflict``. ``comment`` is optional free text.
        ``heard_s``: clip id -> seconds the annotator could have heard it (the app measures it from its play
        events); a vote with a clip heard for less than ``min_heard_fraction`` of its length is stored with
        ``heard`` false and does not count (``Ranking.counts``). A skip needs no listening.
        """
        name = check_name(annotator)
        task_id = check_int(task_id, "task_id", error=InvalidVote)
        if not isinstance(all_bad, bool) or not isinstance(skip, bool):
            raise InvalidVote(f"`all_bad` and `skip` must be booleans, got {preview(all_bad)}, {preview(skip)}")
        if all_bad and skip:
            raise InvalidVote("a vote is either `skip` or `all_bad`, not both")
        pairs = ranking_pairs(ranking)
        if (skip or all_bad) and pairs:
            raise InvalidVote("`ranking` must be empty for a `skip` or `all_bad` vote")
        if not (skip or all_bad or pairs):
            raise InvalidVote("`ranking` is required (or vote `skip=True` / `all_bad=True`)")
        if time_spent_s is not None:
            time_spent_s = check_float(time_spent_s, "time_spent_s", error=InvalidVote)
            if not 0 <= time_spent_s <= MAX_TIME_SPENT_S:
                raise InvalidVote(f"`time_spent_s` must be within 0..{MAX_TIME_SPENT_S:.0f}, got {time_spent_s}")
        comment = check_comment(comment)

        with self._write(durable=True) as db:
            annotator_id = self._annotator_id(db, name)
            if annotator_id is None:
                raise InvalidVote(f"unknown `annotator` {preview(name)}: ask for a task first")
            if db.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
                raise InvalidVote(f"unknown `task_id` {task_id}")
            assignment = db.execute(
                "SELECT id, shown_order FROM assignments WHERE task_id = ? AND annotator_id = ?", (task_id, annotator_id)
            ).fetchone()
            if assignment is None:
                raise InvalidVote(f"task {task_id} is not assigned to annotator {preview(name)}")
            assignment_id, shown = assignment[0], json.loads(assignment[1])
            ranks = {clip_id: None for clip_id in shown} if (skip or all_bad) else check_ranking(pairs, shown)
            plays = check_play_counts(play_counts, shown)
            heard, heard_by_clip = self._heard(db, task_id, shown, heard_s, skip)

            existing = db.execute(_STANDING_VOTE_SQL, (assignment_id,)).fetchone()
            if existing is not None:
                [stored] = _load_rankings(db, existing[0])
                if (stored.ranks, stored.all_bad, stored.skipped) == (ranks, all_bad, skip):
                    return stored.id
                raise VoteConflict(f"annotator {preview(name)} already voted differently on task {task_id} (vote {stored.id})")

            ranking_id = db.execute(
                """INSERT INTO rankings (assignment_id, all_bad, skipped, time_spent_s, created_at, comment, heard)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (assignment_id, int(all_bad), int(skip), time_spent_s, time.time(), comment,
                 None if heard is None else int(heard)),
            ).lastrowid
            internal_id = {
                public_id: internal
                for internal, public_id in db.execute(
                    "SELECT c.id, c.public_id FROM task_candidates tc JOIN candidates c ON c.id = tc.candidate_id WHERE tc.task_id = ?",
                    (task_id,),
                )
            }
            db.executemany(
                "INSERT INTO ranking_entries (ranking_id, candidate_id, rank, play_count, heard_s) VALUES (?, ?, ?, ?, ?)",
                [(ranking_id, internal_id[clip_id], ranks[clip_id], plays.get(clip_id), heard_by_clip.get(clip_id))
                 for clip_id in shown],
            )
            db.execute("DELETE FROM open_assignments WHERE assignment_id = ?", (assignment_id,))
            if not skip and heard is not False:
                db.execute("UPDATE tasks SET votes = votes + 1 WHERE id = ?", (task_id,))
            return ranking_id

    def _heard(self, db: sqlite3.Connection, task_id: int, shown: list[str], heard_s: object,
               skip: bool) -> tuple[bool | None, dict[str, float]]:
        """(whether every clip was heard for ``min_heard_fraction`` of its length, None when not measured or a
        skip; the checked seconds per clip)."""
        if heard_s is None:
            return None, {}
        if not isinstance(heard_s, Mapping) or set(heard_s) != set(shown):
            raise InvalidVote(f"`heard_s` must map every clip shown to seconds, got {preview(heard_s)}")
        seconds = {clip_id: check_float(heard_s[clip_id], "heard_s", error=InvalidVote) for clip_id in shown}
        if any(not 0 <= value <= MAX_TIME_SPENT_S for value in seconds.values()):
            raise InvalidVote(f"`heard_s` must be within 0..{MAX_TIME_SPENT_S:.0f} s, got {preview(heard_s)}")
        if skip:
            return None, seconds
        duration = dict(db.execute(
            """SELECT c.public_id, c.duration_s FROM task_candidates tc JOIN candidates c ON c.id = tc.candidate_id
               WHERE tc.task_id = ?""", (task_id,)).fetchall())
        return all(seconds[c] >= self.min_heard_fraction * duration[c] for c in shown), seconds

    def vote_of(self, annotator: str, task_id: int) -> Ranking | None:
        """This annotator's standing vote on the task (not undone), if any."""
        name = check_name(annotator)
        task_id = check_int(task_id, "task_id", error=InvalidVote)
        with self._read() as db:
            row = db.execute(
                f"""SELECT r.id FROM rankings r JOIN assignments a ON a.id = r.assignment_id
                    JOIN annotators n ON n.id = a.annotator_id WHERE n.name = ? AND a.task_id = ? AND {_STANDS}""",
                (name, task_id),
            ).fetchone()
            return None if row is None else _load_rankings(db, row[0])[0]

    def last_vote(self, annotator: str) -> Ranking | None:
        """The vote this annotator cast last (undone or not), if any: the only one ``undo_vote`` takes back."""
        name = check_name(annotator)
        with self._read() as db:
            row = db.execute(_LAST_VOTE_SQL, (name,)).fetchone()
            return None if row[0] is None else _load_rankings(db, row[0])[0]

    def undo_vote(self, annotator: str, vote_id: int) -> Ranking:
        """Take back ``annotator``'s vote ``vote_id``: their last one, cast within ``undo_window_s``; return it, undone.

        Insert-only: the vote stays, superseded by a row of ``vote_undos`` (kept by backups like every vote). The
        task is open to the annotator again (same clip order; a withdrawn task stays withdrawn) and its count of
        votes drops by one. Raises ``InvalidVote`` naming the reason (and writes nothing) for another annotator's
        vote, an older one, one already undone or one past the window.
        """
        name = check_name(annotator)
        vote_id = check_int(vote_id, "vote_id", minimum=1, error=InvalidVote)
        with self._write(durable=True) as db:
            row = db.execute(
                """SELECT n.name, a.id, a.task_id, a.annotator_id, r.skipped OR r.heard IS 0, r.created_at,
                          u.ranking_id IS NOT NULL
                   FROM rankings r JOIN assignments a ON a.id = r.assignment_id JOIN annotators n ON n.id = a.annotator_id
                   LEFT JOIN vote_undos u ON u.ranking_id = r.id WHERE r.id = ?""",
                (vote_id,),
            ).fetchone()
            if row is None:
                raise InvalidVote(f"there is no vote {vote_id}")
            owner, assignment_id, task_id, annotator_id, uncounted, cast_at, undone = row
            if owner != name:
                raise InvalidVote(f"vote {vote_id} was cast by another annotator: only the annotator who cast a vote "
                                  "can undo it")
            if undone:
                raise InvalidVote(f"vote {vote_id} is undone already")
            last = db.execute(_LAST_VOTE_SQL, (name,)).fetchone()[0]
            if last != vote_id:
                raise InvalidVote(f"only your last vote can be undone: vote {vote_id} is older than vote {last}")
            now = time.time()
            if now - cast_at > self.undo_window_s:
                raise InvalidVote(f"vote {vote_id} was cast {now - cast_at:.0f} s ago; a vote can be undone within "
                                  f"{self.undo_window_s:.0f} s only")
            db.execute("INSERT INTO vote_undos (ranking_id, created_at) VALUES (?, ?)", (vote_id, now))
            if db.execute("SELECT 1 FROM withdrawn_tasks WHERE task_id = ?", (task_id,)).fetchone() is None:
                db.execute(
                    "INSERT INTO open_assignments (assignment_id, task_id, annotator_id, assigned_at) VALUES (?, ?, ?, ?)",
                    (assignment_id, task_id, annotator_id, now),
                )
            if not uncounted:
                db.execute("UPDATE tasks SET votes = votes - 1 WHERE id = ?", (task_id,))
            return _load_rankings(db, vote_id)[0]

    def reveal(self, annotator: str, task_id: int) -> dict[str, str]:
        """Clip id -> model, in the order shown, once this annotator has ranked the task with every clip played
        (``reveals_models``); never before, nor after a skip, an all-bad vote or a vote that does not count.

        A reveal must not serve anyone else: the same clip is the same audio for every annotator, so a second
        name would recognise it. So the models are shown only where nobody else can be given these clips
        again: the task is no gold task, none of its clips is in another task, it has its target number of
        votes and nobody else holds it open. The reveal then retires the task (``revealed_tasks``: never
        assigned again), in the same transaction that checks. Otherwise ``RevealWithheld`` (an ``InvalidVote``)
        says the models stay hidden, with one reason for every case (it must not tell a gold task apart).
        """
        vote = self.vote_of(annotator, task_id)
        if vote is None or not reveals_models(vote):
            raise InvalidVote(f"annotator {preview(annotator)} has not ranked task {preview(task_id)} after playing "
                              "every clip: models stay hidden")
        with self._write() as db:
            annotator_id = self._annotator_id(db, vote.annotator)
            revealed = db.execute("SELECT 1 FROM revealed_tasks WHERE task_id = ? AND annotator_id = ?",
                                  (vote.task_id, annotator_id)).fetchone()
            if revealed is None:
                if not db.execute(_REVEALABLE_SQL, {"task": vote.task_id, "annotator": annotator_id}).fetchone()[0]:
                    raise RevealWithheld(REVEAL_WITHHELD)
                db.execute("INSERT INTO revealed_tasks (task_id, annotator_id, created_at) VALUES (?, ?, ?)",
                           (vote.task_id, annotator_id, time.time()))
        models = {clip_id: clip.model for clip_id, clip in self.candidates(vote.shown_order).items()}
        return {clip_id: models[clip_id] for clip_id in vote.shown_order}

    def rankings(self, *, include_undone: bool = False) -> list[Ranking]:
        """Every standing vote, oldest first; with ``include_undone`` the undone ones too (``undone_at`` set)."""
        with self._read() as db:
            return [r for r in _load_rankings(db) if include_undone or r.undone_at is None]

    # ------------------------------------------------------------------ bookkeeping

    def counts(self) -> dict[str, int]:
        """Rows per table (for stats, and for tests asserting that a refused call wrote nothing)."""
        with self._read() as db:
            return {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in _TABLES}

    def is_empty(self) -> bool:
        """Whether the store holds nothing at all: no prompt, clip, task, annotator or vote."""
        return not any(self.counts().values())

    def remove_if_empty(self) -> bool:
        """Close the store and delete its files (database, journals, lock file) if it holds nothing; return
        whether it did. For a command refused after it created the store: it leaves no file behind."""
        if not self.is_empty():
            return False
        self.close()
        for path in (self.db_path, Path(f"{self.db_path}-wal"), Path(f"{self.db_path}-shm"),
                     self.db_path.with_suffix(".writelock")):
            path.unlink(missing_ok=True)
        return True

    def task_progress(self) -> list[tuple[int, int, int]]:
        """(task id, non-skip votes, target overlap) for every task but the gold and the withdrawn ones."""
        return self._connection().execute(
            """SELECT id, votes, target_overlap FROM tasks WHERE id NOT IN (SELECT task_id FROM gold_tasks)
               AND id NOT IN (SELECT task_id FROM withdrawn_tasks) ORDER BY id"""
        ).fetchall()

    def record_export(self, out_dir: str, *, strategy: str, pairs: int, rankings: int,
                      alpha: float | None, fingerprint: str) -> int:
        """Remember a finished export (what, where, how much) and return its id."""
        with self._write() as db:
            return db.execute(
                """INSERT INTO exports (out_dir, strategy, pairs, rankings, alpha, fingerprint, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (str(out_dir), strategy, pairs, rankings, alpha, fingerprint, time.time()),
            ).lastrowid

    def exports(self) -> list[ExportRecord]:
        """Every recorded export, oldest first."""
        rows = self._connection().execute(
            "SELECT id, out_dir, strategy, pairs, rankings, alpha, fingerprint, created_at FROM exports ORDER BY id"
        ).fetchall()
        return [ExportRecord(*row) for row in rows]

    def snapshot(self, dest_dir: str | os.PathLike) -> Path:
        """Copy the whole store into ``dest_dir`` (a new folder), consistent as of one instant.

        The database goes through SQLite's online backup (a transaction-consistent copy
        while others keep writing); then the clips, hard-linked where possible (they are
        immutable and named by content). A clip is written before its row, so every clip
        the copied database names is present. Opening ``dest_dir`` as a ``Store`` gives it back.
        """
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True)
        target = sqlite3.connect(dest_dir / DB_NAME)
        try:
            self._connection().backup(target)
        finally:
            target.close()
        for clip in self.audio_dir.rglob("*.wav"):
            link_or_copy(clip, dest_dir / "audio" / clip.relative_to(self.audio_dir))
        return dest_dir

    def integrity_check(self) -> str:
        """SQLite's own consistency check: ``"ok"`` for a sound database."""
        return self._connection().execute("PRAGMA integrity_check").fetchone()[0]


_TABLES = ("prompts", "candidates", "tasks", "task_candidates", "annotators",
           "assignments", "open_assignments", "rankings", "ranking_entries", "exports", "gold_tasks",
           "withdrawn_tasks", "vote_undos", "revealed_tasks", "task_senders")

_STANDS = "r.id NOT IN (SELECT ranking_id FROM vote_undos)"  # a vote not undone

_STANDING_VOTE_SQL = f"SELECT r.id FROM rankings r WHERE r.assignment_id = ? AND {_STANDS}"

_LAST_VOTE_SQL = """SELECT MAX(r.id) FROM rankings r JOIN assignments a ON a.id = r.assignment_id
                    JOIN annotators n ON n.id = a.annotator_id WHERE n.name = ?"""

_CANDIDATE_SQL = """SELECT c.public_id, p.text, c.model, c.seed, c.steps, c.guidance, c.sha256,
                           c.duration_s, c.sample_rate, c.auto_score, c.latent_fingerprint, c.auto_scorer
                    FROM candidates c JOIN prompts p ON p.id = c.prompt_id"""

_OPEN_ASSIGNMENT_SQL = """SELECT a.task_id, a.shown_order FROM open_assignments o
                          JOIN annotators n ON n.id = o.annotator_id JOIN assignments a ON a.id = o.assignment_id
                          WHERE n.name = ? ORDER BY o.assignment_id LIMIT 1"""

_TASK_CLIPS_SQL = """SELECT c.public_id, c.sha256 FROM task_candidates tc JOIN candidates c ON c.id = tc.candidate_id
                     WHERE tc.task_id = ? ORDER BY c.id"""

# Whether the models of task :task may be shown to :annotator (``Store.reveal``): no gold task, at its target,
# no clip shared with another task, no other annotator holding it open.
_REVEALABLE_SQL = """
    SELECT t.id NOT IN (SELECT task_id FROM gold_tasks)
       AND t.votes >= t.target_overlap
       AND NOT EXISTS (SELECT 1 FROM task_candidates mine JOIN task_candidates other
                       ON other.candidate_id = mine.candidate_id AND other.task_id != mine.task_id
                       WHERE mine.task_id = t.id)
       AND NOT EXISTS (SELECT 1 FROM open_assignments o WHERE o.task_id = t.id AND o.annotator_id != :annotator)
    FROM tasks t WHERE t.id = :task"""

# Tasks this annotator has not seen, best first. A task's load counts its votes (not skips)
# and its open assignments younger than the TTL; `:gold` picks gold or model tasks. Keyed by
# `informative_first`.
_NEXT_TASK_SQL = {
    informative: f"""
    SELECT t.id, t.votes + (SELECT COUNT(*) FROM open_assignments o
                            WHERE o.task_id = t.id AND o.assigned_at > :fresh_after) AS load
    FROM tasks t
    WHERE NOT EXISTS (SELECT 1 FROM assignments mine WHERE mine.task_id = t.id AND mine.annotator_id = :annotator)
      AND t.id NOT IN (SELECT task_id FROM withdrawn_tasks)
      AND t.id NOT IN (SELECT task_id FROM revealed_tasks)
      AND t.id NOT IN (SELECT task_id FROM task_senders WHERE sender IN (SELECT value FROM json_each(:senders)))
      AND (t.id IN (SELECT task_id FROM gold_tasks)) = :gold
      AND (SELECT COUNT(*) FROM task_candidates n WHERE n.task_id = t.id) <= :max_clips
    ORDER BY load >= t.target_overlap,
             {'''(SELECT CASE WHEN COUNT(c.auto_score) = COUNT(*) THEN MAX(c.auto_score) - MIN(c.auto_score) END
               FROM task_candidates tc JOIN candidates c ON c.id = tc.candidate_id WHERE tc.task_id = t.id) ASC NULLS LAST,'''
               if informative else ''}
             load DESC, t.id
    LIMIT 1"""
    for informative in (False, True)
}


def _load_rankings(db: sqlite3.Connection, ranking_id: int | None = None) -> list[Ranking]:
    """All votes (or the one with ``ranking_id``) with their entries, in two queries."""
    where = "" if ranking_id is None else "WHERE r.id = :id"
    entries: dict[int, list[tuple[str, int | None, int | None]]] = {}
    for rid, clip_id, rank, plays in db.execute(
        f"""SELECT e.ranking_id, c.public_id, e.rank, e.play_count FROM ranking_entries e
            JOIN candidates c ON c.id = e.candidate_id JOIN rankings r ON r.id = e.ranking_id {where}""",
        {"id": ranking_id},
    ):
        entries.setdefault(rid, []).append((clip_id, rank, plays))
    rows = db.execute(
        f"""SELECT r.id, a.task_id, n.name, r.all_bad, r.skipped, a.shown_order, r.time_spent_s, r.created_at,
                   r.comment, u.created_at, r.heard
            FROM rankings r JOIN assignments a ON a.id = r.assignment_id JOIN annotators n ON n.id = a.annotator_id
            LEFT JOIN vote_undos u ON u.ranking_id = r.id
            {where} ORDER BY r.id""",
        {"id": ranking_id},
    )
    return [
        Ranking(
            id=rid, task_id=task_id, annotator=name,
            ranks={clip_id: rank for clip_id, rank, _ in entries[rid]},
            all_bad=bool(all_bad), skipped=bool(skipped), shown_order=json.loads(shown),
            play_counts={clip_id: plays for clip_id, _, plays in entries[rid]},
            time_spent_s=spent, created_at=created, comment=comment, undone_at=undone_at,
            heard=None if heard is None else bool(heard),
        )
        for rid, task_id, name, all_bad, skipped, shown, spent, created, comment, undone_at, heard in rows
    ]
