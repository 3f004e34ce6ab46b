"""Human rankings -> a preference dataset on disk, and from disk to the Hugging Face Hub.

- ``export_human_pairs``: majority pairs of the usable rankings of model tasks (strategy
  ``human``) through the shared dataset writer, without the votes of annotators below
  the owner's gold-accuracy threshold; the card carries the verdict (win rates and
  Bradley-Terry scores, human and automatic) and says how many votes were left out. The
  export is recorded in the store. It never writes over the data folder, a folder holding
  it, or anything inside it but its own ``export/`` folder.
- ``push_to_hub``: one folder, one dataset-repo upload (created if missing). The token
  comes from the argument, ``HF_TOKEN`` or the logged-in user, and never reaches a log
  line, an exception message or the data: errors are re-raised as ``PushError`` with any
  token scrubbed and without the original exception chained to them.
- ``ScheduledPush``: a ``huggingface_hub.CommitScheduler`` for a Space, which pushes the
  export folder every few minutes (optionally re-exporting first) and, given the store, a
  backup of the store itself under ``backup/`` (database and clips), so votes reach the Hub
  even when nobody clicks "export" and the Space's disk is wiped on restart. A push never
  replaces a backup holding votes or clips the store lacks (``ShrinkingBackup``) unless the
  owner allows it; each push is a commit, so the repo's history keeps every earlier backup.
- ``restore_from_hub``: on start, a data folder whose store holds nothing (or that has none)
  gets the last backup back, once the backup is checked (``check_backup``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from huggingface_hub import CommitScheduler, HfApi, get_token

from preference_data.dataset import (EXPORT_MARKER, DatasetSummary, EmptyDataset, NotAnExport, PreferenceRow,
                                     export_lock, write_preference_dataset)
from preference_data.files import fsync_dir

from .clips import clip_path
from .gold import MIN_GOLD_ANSWERS
from .hygiene import counted_rankings
from .pairs import PairVotes, aggregate_pairs, ranking_alpha
from .schema import MIGRATIONS
from .store import DB_NAME, EXPORT_DIR, Candidate, Store, UnusableStore
from .validation import check_int
from .verdict import compute_verdict, model_votes, ranker_agreement, verdict_markdown

logger = logging.getLogger(__name__)

HUMAN_RANK_HOW_MADE = """Annotators ranked all clips of a prompt (two models, several seeds each, same settings)
from best to worst, blind: the models behind the clips were hidden until after the vote, and
the clips were shown in an order shuffled for each annotator. Equal ranks mark ties; an
annotator could also skip a task or mark every clip as bad. Each ranking implies a
(better, worse) pair for every two clips ranked differently. Pairs are aggregated over the
annotators who ranked both clips (`votes_for` / `votes_against`, ties counted in
`annotators` only) and kept when the majority is strict by at least {min_margin} vote(s)
and backed by at least {min_votes} vote(s) (`votes_for`).
Skips and all-bad votes yield no pairs. Agreement is Krippendorff's alpha (ordinal) over
the ranks given to each (task, clip). Gold tasks (a render of the prompt against renders of
other prompts, answer known) measure the annotators and yield no pairs{gold_rule}."""

VERDICT_INTRO = """Which model the rankings prefer: per model, the win rate over head-to-head clip pairs
(two clips of different models in one ranking; ties count half) and the Bradley-Terry score
on the Elo scale, with 95 % bootstrap intervals over votes; from the human rankings and,
separately, from the automatic ranker's scores."""

BACKUP_DIR = "backup"  # where a ScheduledPush puts the store's backup in the dataset repo

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")


@dataclass(frozen=True)
class ExportResult:
    export_id: int
    out_dir: Path
    summary: DatasetSummary
    alpha: float | None
    left_out_votes: int = 0  # votes of annotators below the gold-accuracy threshold
    left_out_annotators: tuple[str, ...] = ()


VOTE_THRESHOLDS = (1, 2, 3)  # the card tells how many pairs each of these --min-votes would keep


def export_human_pairs(store: Store, out_dir: str | os.PathLike, *, min_margin: int = 1, min_votes: int = 1,
                       min_gold_accuracy: float | None = None, include_flagged: bool = False) -> ExportResult:
    """Write every majority pair of the stored rankings backed by at least ``min_votes`` votes to ``out_dir``
    and record the export; the card says how many pairs each threshold of ``VOTE_THRESHOLDS`` keeps.

    With ``min_gold_accuracy``, annotators whose gold-task accuracy is below it (after
    ``MIN_GOLD_ANSWERS`` gold answers) are left out, and the card says how many votes that was; so are, unless
    ``include_flagged``, the annotators ``annotate.hygiene`` flags.
    Raises ``NotAnExport`` for an ``out_dir`` that is, holds or lies inside the data folder (but
    for its own ``export/``) or holds anything but a previous export; nothing is touched then.
    """
    min_votes = check_int(min_votes, "min_votes", minimum=1)
    _check_outside_the_data(store, Path(out_dir))
    everything, gold = store.rankings(), store.gold_answers()
    kept, trust = counted_rankings(everything, gold, min_gold_accuracy, include_flagged)
    rankings = [r for r in kept if r.task_id not in gold]
    used = model_votes(kept, gold)
    majority_pairs = aggregate_pairs(used, min_margin=min_margin)
    pairs = [pair for pair in majority_pairs if pair.votes_for >= min_votes]
    clips = store.candidates({clip_id for pair in pairs for clip_id in (pair.chosen, pair.rejected)})
    alpha = ranking_alpha(used)
    stats = {
        "rankings used": len(used),
        "skipped": sum(r.skipped for r in rankings),
        "all bad": sum(r.all_bad for r in rankings),
        "annotators": len({r.annotator for r in used}),
        "tasks ranked": len({r.task_id for r in used}),
        "Krippendorff's alpha (ordinal)": alpha,
    }
    if min_gold_accuracy is not None or trust.flagged:
        stats["votes left out (annotators below the gold accuracy threshold or flagged)"] = trust.left_out_votes
        stats["annotators left out"] = ", ".join(
            f"{name} ({', '.join(trust.flagged[name])})" if name in trust.flagged else name
            for name in trust.left_out_annotators) or "none"
    verdicts = [compute_verdict(store, source, min_gold_accuracy=min_gold_accuracy, include_flagged=include_flagged)
                for source in ("human", "auto")]
    rule = "" if min_gold_accuracy is None else (
        f"; annotators whose gold accuracy fell below {min_gold_accuracy:.0%} (after at least {MIN_GOLD_ANSWERS} gold "
        f"answers) were left out, {trust.left_out_votes} vote(s) in all")
    summary = write_preference_dataset(
        (_row(pair, clips) for pair in pairs), out_dir,
        how_made=HUMAN_RANK_HOW_MADE.format(min_margin=min_margin, min_votes=min_votes, gold_rule=rule), stats=stats,
        sections={"Pairs by votes": _pairs_by_votes(majority_pairs, min_votes),
                  "Verdict": VERDICT_INTRO + "\n\n" + verdict_markdown(
                      verdicts, ranker_agreement(kept, store.candidates(), gold))},
    )
    export_id = store.record_export(Path(out_dir).absolute(), strategy="human", pairs=summary.rows,
                                    rankings=len(used), alpha=alpha, fingerprint=summary.fingerprint)
    logger.info("export %d: %d pairs from %d rankings -> %s", export_id, summary.rows, len(used), out_dir)
    return ExportResult(export_id, Path(out_dir), summary, alpha, trust.left_out_votes, trust.left_out_annotators)


def _pairs_by_votes(pairs: list[PairVotes], min_votes: int) -> str:
    """The card's table: how many majority pairs each minimum number of backing votes keeps (``--min-votes``)."""
    rows = [f"| {threshold}{' (this export)' if threshold == min_votes else ''} | "
            f"{sum(pair.votes_for >= threshold for pair in pairs)} |"
            for threshold in sorted({*VOTE_THRESHOLDS, min_votes})]
    return "\n".join(["| at least this many votes for the chosen clip | pairs kept |", "|---|---|", *rows])


def _check_outside_the_data(store: Store, out_dir: Path) -> None:
    out, data = out_dir.resolve(), store.data_dir.resolve()
    if data.is_relative_to(out):
        raise NotAnExport(f"refusing to write the export to {out_dir}: the data folder {store.data_dir} would be lost")
    if out.is_relative_to(data) and out != data / EXPORT_DIR:
        raise NotAnExport(f"refusing to write the export to {out_dir}: inside the data folder an export goes to "
                          f"{store.data_dir / EXPORT_DIR} only")


def _row(pair: PairVotes, clips: dict[str, Candidate]) -> PreferenceRow:
    chosen, rejected = clips[pair.chosen], clips[pair.rejected]
    latents = [chosen.read_latent(), rejected.read_latent()]
    same_space = chosen.latent_fingerprint == rejected.latent_fingerprint and all(latent is not None for latent in latents)
    return PreferenceRow(
        prompt=chosen.prompt,
        chosen_wav=_read_clip(chosen),
        rejected_wav=_read_clip(rejected),
        strategy="human",
        ranker="human",
        chosen_model=chosen.model,
        rejected_model=rejected.model,
        chosen_seed=chosen.seed,
        rejected_seed=rejected.seed,
        num_inference_steps=chosen.steps,
        guidance_scale=chosen.guidance,
        votes_for=pair.votes_for,
        votes_against=pair.votes_against,
        annotators=pair.annotators,
        **({"chosen_latent": latents[0], "rejected_latent": latents[1],
            "latent_fingerprint": chosen.latent_fingerprint} if same_space else {}),
    )


def _read_clip(clip: Candidate) -> bytes:
    try:
        return Path(clip.audio_path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"audio of clip {clip.id} is missing from the store: {clip.audio_path}") from None


class PushError(OSError):
    """A Hub push failed (network, authentication, permissions); the message never contains the token."""


class ShrinkingBackup(PushError):
    """A push would replace the store backup on the Hub by one that lacks some of its votes or clips."""


class BackupRefused(UnusableStore):
    """A store backup that is not restored: not a sound store of a known schema with all of its clips."""


def push_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None, api: HfApi | None = None,
                *, private: bool | None = None, commit_message: str | None = None):
    """Upload an export folder to the dataset repo ``repo_id`` in one commit; return the commit info.

    Remote ``data/`` files that the folder no longer has are deleted in the same commit, so
    the repo always holds exactly this export. ``api`` replaces ``HfApi()`` (tests pass a
    recording stand-in).
    """
    folder = Path(folder)
    if not (folder / "README.md").is_file() or not (folder / "data").is_dir():
        raise ValueError(f"`folder` {str(folder)!r} is not an export (README.md and data/ expected)")
    _check_repo_id(repo_id)
    token = _resolve_token(token)
    api = api or HfApi()
    _scrubbed(token, f"pushing {folder.name} to {repo_id}", api.create_repo, repo_id, repo_type="dataset",
              exist_ok=True, private=private, token=token)
    return _upload(folder, repo_id, token, api, commit_message or "Export preference pairs")


def _upload(folder: Path, repo_id: str, token: str, api: HfApi, commit_message: str):
    """One commit of ``folder`` (but the export marker); remote files under the top-level folders it holds
    (data/, backup/) that it lacks are deleted."""
    replaced = [f"{child.name}/*" for child in sorted(folder.iterdir()) if child.is_dir()]
    info = _scrubbed(token, f"pushing {folder.name} to {repo_id}", api.upload_folder, repo_id=repo_id,
                     repo_type="dataset", folder_path=folder, token=token, commit_message=commit_message,
                     delete_patterns=replaced, ignore_patterns=[EXPORT_MARKER])
    logger.info("pushed %s to the dataset repo %s", folder, repo_id)
    return info


def _check_repo_id(repo_id: object) -> None:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"`repo_id` must look like 'owner/name', got {str(repo_id)[:100]!r}")


def _resolve_token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise PushError("no Hugging Face token: pass `token`, set HF_TOKEN or run `hf auth login`")
    return token


def _scrubbed(token: str, what: str, call: Callable, /, *args, **kwargs):
    """``call(*args, **kwargs)``; a failure becomes a ``PushError`` with the token masked.

    The PushError is raised after the ``except`` block, so the client's own exception (whose
    message or request headers may quote the token) is not chained to it.
    """
    try:
        return call(*args, **kwargs)
    except Exception as err:
        failure = scrub(f"{what} failed: {type(err).__name__}: {err}", token)
    raise PushError(failure)


def scrub(text: str, token: str | None) -> str:
    """``text`` with the token (and anything shaped like a Hub token) masked."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


class ScheduledPush(CommitScheduler):
    """Push an export folder (and a backup of the store) to a dataset repo every ``every`` minutes.

    CommitScheduler uploads changed files one by one and assumes append-only files; an
    export replaces its whole folder, so ``push_to_hub`` is overridden (as its docs invite):
    optionally re-export (``before_push``, e.g. ``lambda: export_human_pairs(store, folder)``;
    "nothing to export yet" is not an error), then stage what to upload beside the folder:
    the export, hard-linked under the export lock (a concurrent export cannot swap files
    mid-upload), and with ``store`` a snapshot of the store under ``backup/``. If the staged
    content changed since the last push, upload it in one commit. A vote acknowledged before
    a push began is in that push's backup.

    The backup in the repo is never replaced by one lacking some of its votes or clips (a
    store started empty beside a backup it did not restore): that push raises
    ``ShrinkingBackup`` and is logged, unless ``allow_shrinking_backup``.
    """

    def __init__(self, folder: str | os.PathLike, repo_id: str, *, every: float = 5, token: str | None = None,
                 api: HfApi | None = None, before_push: Callable[[], object] | None = None,
                 store: Store | None = None, allow_shrinking_backup: bool = False):
        _check_repo_id(repo_id)
        token = _resolve_token(token)
        self.before_push = before_push
        self.store = store
        self.allow_shrinking_backup = allow_shrinking_backup
        self.pushed_fingerprint: str | None = None
        # CommitScheduler creates the repo and starts its thread here (its first push runs at once).
        _scrubbed(token, f"scheduling pushes to {repo_id}", super().__init__, repo_id=repo_id, folder_path=folder,
                  every=every, repo_type="dataset", token=token, hf_api=api or HfApi(token=token))

    def push_to_hub(self):
        if self.before_push is not None:
            try:
                self.before_push()
            except EmptyDataset:
                logger.info("scheduled push: nothing to export yet")
        # Staged beside the folder: hard links cannot cross file systems.
        with tempfile.TemporaryDirectory(dir=self.folder_path.parent, prefix=f".{self.folder_path.name}.push-") as scratch:
            staged = Path(scratch) / self.folder_path.name
            staged.mkdir()
            with export_lock(self.folder_path):
                if _folder_fingerprint(self.folder_path) is not None:
                    shutil.copytree(self.folder_path, staged, copy_function=os.link, dirs_exist_ok=True)
            if self.store is not None:
                self.store.snapshot(staged / BACKUP_DIR)
            fingerprint = _folder_fingerprint(staged)
            if fingerprint is None or fingerprint == self.pushed_fingerprint:
                return None
            _scrubbed(self.token, f"pushing to {self.repo_id}", self.api.create_repo, self.repo_id,
                      repo_type="dataset", exist_ok=True, token=self.token)
            if self.store is not None and not self.allow_shrinking_backup:
                self._check_not_shrinking(staged / BACKUP_DIR, Path(scratch) / "remote")
            info = _upload(staged, self.repo_id, self.token, self.api, "Scheduled export of preference pairs")
        self.pushed_fingerprint = fingerprint
        return info

    def _check_not_shrinking(self, backup: Path, scratch: Path) -> None:
        """Raise (and log) ``ShrinkingBackup`` if the repo's backup holds votes or clips that ``backup`` lacks."""
        what = f"reading the store backup in {self.repo_id}"
        remote = _backup_files(self.api, self.repo_id, self.token, what)
        lost_clips = {Path(name).name for name in remote if name.endswith(".wav")} - {
            clip.name for clip in (backup / "audio").rglob("*.wav")}
        try:
            local_votes, _ = _backup_database(backup / DB_NAME)
        except BackupRefused as err:
            raise PushError(f"not pushing to {self.repo_id}: the snapshot of this store is unusable: {err}") from None
        remote_votes, why = 0, None
        if f"{BACKUP_DIR}/{DB_NAME}" in remote:
            _scrubbed(self.token, what, self.api.snapshot_download, self.repo_id, repo_type="dataset",
                      allow_patterns=[f"{BACKUP_DIR}/{DB_NAME}"], local_dir=scratch, token=self.token)
            try:
                remote_votes, _ = _backup_database(scratch / BACKUP_DIR / DB_NAME)
            except BackupRefused as err:
                why = f"its backup cannot be read ({err}), so it may hold votes this store lacks"
        if why is None and (remote_votes > local_votes or lost_clips):
            why = (f"its backup holds {remote_votes} vote(s) and {len(lost_clips)} clip(s) this store lacks "
                   f"(this store: {local_votes} vote(s))")
        if why is not None:
            message = (f"not pushing to {self.repo_id}: {why}. Restore it (stop the app, empty the data folder, "
                       f"start again) or start with --allow-shrinking-backup to replace it (the repo's history "
                       f"keeps the previous backup)")
            logger.error(message)
            raise ShrinkingBackup(message)


def _folder_fingerprint(folder: Path) -> str | None:
    """What identifies a staged folder's content cheaply; None if it holds no file.

    Names, sizes and mtimes, except for the database, which a snapshot rewrites every time:
    its bytes are hashed.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        return None
    return "|".join(
        f"{p.relative_to(folder)}:{hashlib.sha256(p.read_bytes()).hexdigest() if p.name == DB_NAME else p.stat().st_size}"
        f":{'' if p.name == DB_NAME else p.stat().st_mtime_ns}"
        for p in files
    )


def restore_from_hub(data_dir: str | os.PathLike, repo_id: str, token: str | None = None,
                     api: HfApi | None = None) -> int | None:
    """Bring back the last backup a ``ScheduledPush`` made, into a data folder whose store holds nothing.

    Returns the number of votes restored, or None when nothing was done: the folder's store
    holds something (prompts, clips, tasks or votes), or the repo has no backup yet (a first
    start). A backup that fails ``check_backup`` is refused (``BackupRefused``), and any other
    failure (network, authentication) raises ``PushError``: starting empty then would let the
    next scheduled push try to replace the backup. Either way the data folder is left as it was.

    The backup is downloaded and checked beside ``data_dir``, then moved in clips first,
    database last (an empty store there gives way to it), so an interrupted restore leaves a
    store holding nothing, and the restore is simply done again at the next start.
    """
    data_dir = Path(data_dir)
    if (data_dir / DB_NAME).exists() and not Store(data_dir).is_empty():
        return None
    _check_repo_id(repo_id)
    token = _resolve_token(token)
    api = api or HfApi(token=token)
    what = f"restoring the store from {repo_id}"
    remote = _backup_files(api, repo_id, token, what)
    if not remote:
        logger.info("no store backup in %s yet: starting with an empty store", repo_id)
        return None

    def refused(reason: str) -> BackupRefused:
        return BackupRefused(f"refusing the store backup in {repo_id}: {reason}; {data_dir} was left as it was "
                             f"(an earlier backup is in the dataset repo's history)")

    if f"{BACKUP_DIR}/{DB_NAME}" not in remote:
        raise refused(f"{BACKUP_DIR}/ holds {len(remote)} file(s) but no {DB_NAME}")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir.parent, prefix=f".{data_dir.name}.restore-") as scratch:
        _scrubbed(token, what, api.snapshot_download, repo_id, repo_type="dataset", allow_patterns=[f"{BACKUP_DIR}/*"],
                  local_dir=scratch, token=token)
        backup = Path(scratch) / BACKUP_DIR
        try:
            votes = check_backup(backup)
        except BackupRefused as err:
            raise refused(str(err)) from None
        data_dir.mkdir(exist_ok=True)
        if (data_dir / DB_NAME).exists() and not Store(data_dir).remove_if_empty():
            return None  # something was stored meanwhile: it stays
        for clip in (backup / "audio").rglob("*.wav"):
            target = data_dir / "audio" / clip.relative_to(backup / "audio")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(clip, target)
        os.replace(backup / DB_NAME, data_dir / DB_NAME)
        fsync_dir(data_dir)
    logger.info("restored the store from %s: %d votes", repo_id, votes)
    return votes


def check_backup(backup: Path) -> int:
    """The number of votes in the store backup at ``backup`` (``annotate.sqlite`` and ``audio/``), once checked:
    a sound SQLite database (its integrity check passes) of a schema this code knows, every clip it names
    present, and every clip file hashing to its name. Raises ``BackupRefused`` with the reason otherwise."""
    votes, hashes = _backup_database(backup / DB_NAME)
    audio = backup / "audio"
    missing = [sha for sha in hashes if not clip_path(audio, sha).is_file()]
    if missing:
        raise BackupRefused(f"{len(missing)} of its {len(hashes)} clips are missing (e.g. {missing[0]})")
    for clip in audio.rglob("*.wav"):
        if clip_path(audio, hashlib.sha256(clip.read_bytes()).hexdigest()) != clip:
            raise BackupRefused(f"clip {clip.relative_to(backup)} does not hash to its name (damaged)")
    return votes


def _backup_database(db_path: Path) -> tuple[int, list[str]]:
    """(votes, clip hashes) of a backup's database, read without writing beside it; ``BackupRefused`` if unusable."""
    if not db_path.is_file():
        raise BackupRefused(f"it has no {DB_NAME}")
    if db_path.stat().st_size == 0:
        raise BackupRefused(f"its {DB_NAME} is an empty file")
    try:
        with closing(sqlite3.connect(db_path.resolve().as_uri() + "?immutable=1", uri=True)) as db:
            problems = db.execute("PRAGMA integrity_check").fetchone()[0]
            if problems != "ok":
                raise BackupRefused(f"its {DB_NAME} is damaged (integrity check: {problems})")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if not 1 <= version <= len(MIGRATIONS):
                raise BackupRefused(f"its {DB_NAME} has schema version {version}; this code knows 1..{len(MIGRATIONS)}"
                                    + (": upgrade the app" if version > len(MIGRATIONS) else ""))
            hashes = [sha for (sha,) in db.execute("SELECT sha256 FROM candidates")]
            votes = db.execute("SELECT COUNT(*) FROM rankings").fetchone()[0]
    except sqlite3.DatabaseError as err:
        raise BackupRefused(f"its {DB_NAME} cannot be read ({err})") from None
    return votes, hashes


def _backup_files(api: HfApi, repo_id: str, token: str, what: str) -> list[str]:
    """The files under ``backup/`` in the dataset repo (none while the repo does not exist)."""
    if not _scrubbed(token, what, api.repo_exists, repo_id, repo_type="dataset", token=token):
        return []
    files = _scrubbed(token, what, api.list_repo_files, repo_id, repo_type="dataset", token=token)
    return [name for name in files if name.startswith(f"{BACKUP_DIR}/")]
