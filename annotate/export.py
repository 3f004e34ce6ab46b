"""Human rankings -> a preference dataset on disk, and from disk to the Hugging Face Hub.

- ``export_human_pairs``: majority pairs of all usable rankings (strategy ``human-rank``)
  through the shared dataset writer; the export is recorded in the store.
- ``push_to_hub``: one folder, one dataset-repo upload (created if missing). The token
  comes from the argument, ``HF_TOKEN`` or the logged-in user, and never reaches a log
  line, an exception message or the data: errors are re-raised as ``PushError`` with any
  token scrubbed and without the original exception chained to them.
- ``ScheduledPush``: a ``huggingface_hub.CommitScheduler`` for a Space, which pushes the
  export folder every few minutes (optionally re-exporting first), so votes reach the Hub
  even when nobody clicks "export" and the Space's disk is wiped on restart.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from huggingface_hub import CommitScheduler, HfApi, get_token

from .dataset import DatasetSummary, EmptyDataset, PreferenceRow, export_lock, write_preference_dataset
from .pairs import PairVotes, aggregate_pairs, ranking_alpha, usable
from .store import Candidate, Store

logger = logging.getLogger(__name__)

HUMAN_RANK_HOW_MADE = """Annotators ranked all clips of a prompt (two models, several seeds each, same settings)
from best to worst, blind: the models behind the clips were hidden until after the vote, and
the clips were shown in an order shuffled for each annotator. Equal ranks mark ties; an
annotator could also skip a task or mark every clip as bad. Each ranking implies a
(better, worse) pair for every two clips ranked differently. Pairs are aggregated over the
annotators who ranked both clips (`votes_for` / `votes_against`, ties counted in
`annotators` only) and kept when the majority is strict by at least {min_margin} vote(s).
Skips and all-bad votes yield no pairs. Agreement is Krippendorff's alpha (ordinal) over
the ranks given to each (task, clip)."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")


@dataclass(frozen=True)
class ExportResult:
    export_id: int
    out_dir: Path
    summary: DatasetSummary
    alpha: float | None


def export_human_pairs(store: Store, out_dir: str | os.PathLike, *, min_margin: int = 1) -> ExportResult:
    """Write every majority pair of the stored rankings to ``out_dir`` and record the export."""
    rankings = store.rankings()
    pairs = aggregate_pairs(rankings, min_margin=min_margin)
    clips = store.candidates({clip_id for pair in pairs for clip_id in (pair.chosen, pair.rejected)})
    alpha = ranking_alpha(rankings)
    used = [r for r in rankings if usable(r)]
    stats = {
        "rankings used": len(used),
        "skipped": sum(r.skipped for r in rankings),
        "all bad": sum(r.all_bad for r in rankings),
        "annotators": len({r.annotator for r in used}),
        "tasks ranked": len({r.task_id for r in used}),
        "Krippendorff's alpha (ordinal)": alpha,
    }
    summary = write_preference_dataset(
        (_row(pair, clips) for pair in pairs), out_dir,
        how_made=HUMAN_RANK_HOW_MADE.format(min_margin=min_margin), stats=stats,
    )
    export_id = store.record_export(Path(out_dir).absolute(), strategy="human-rank", pairs=summary.rows,
                                    rankings=len(used), alpha=alpha, fingerprint=summary.fingerprint)
    logger.info("export %d: %d pairs from %d rankings -> %s", export_id, summary.rows, len(used), out_dir)
    return ExportResult(export_id, Path(out_dir), summary, alpha)


def _row(pair: PairVotes, clips: dict[str, Candidate]) -> PreferenceRow:
    chosen, rejected = clips[pair.chosen], clips[pair.rejected]
    return PreferenceRow(
        prompt=chosen.prompt,
        chosen_wav=_read_clip(chosen),
        rejected_wav=_read_clip(rejected),
        strategy="human-rank",
        chosen_model=chosen.model,
        rejected_model=rejected.model,
        chosen_seed=chosen.seed,
        rejected_seed=rejected.seed,
        num_inference_steps=chosen.steps,
        guidance_scale=chosen.guidance,
        votes_for=pair.votes_for,
        votes_against=pair.votes_against,
        annotators=pair.annotators,
    )


def _read_clip(clip: Candidate) -> bytes:
    try:
        return Path(clip.audio_path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"audio of clip {clip.id} is missing from the store: {clip.audio_path}") from None


class PushError(OSError):
    """A Hub push failed (network, authentication, permissions); the message never contains the token."""


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
    what = f"pushing {folder.name} to {repo_id}"
    _scrubbed(token, what, api.create_repo, repo_id, repo_type="dataset", exist_ok=True, private=private, token=token)
    info = _scrubbed(token, what, api.upload_folder, repo_id=repo_id, repo_type="dataset", folder_path=folder,
                     token=token, commit_message=commit_message or "Export preference pairs", delete_patterns=["data/*"])
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
    """Push an export folder to a dataset repo every ``every`` minutes, in a background thread.

    CommitScheduler uploads changed files one by one and assumes append-only files; an
    export replaces its whole folder, so ``push_to_hub`` is overridden (as its docs invite):
    optionally re-export (``before_push``, e.g. ``lambda: export_human_pairs(store, folder)``;
    "nothing to export yet" is not an error), then, if the folder changed since the last
    push, snapshot it with hard links under the export lock (a concurrent export cannot
    swap files mid-upload) and upload the snapshot with ``push_to_hub`` above.
    """

    def __init__(self, folder: str | os.PathLike, repo_id: str, *, every: float = 5, token: str | None = None,
                 api: HfApi | None = None, before_push: Callable[[], object] | None = None):
        _check_repo_id(repo_id)
        token = _resolve_token(token)
        self.before_push = before_push
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
        # The snapshot sits beside the folder: hard links cannot cross file systems.
        with tempfile.TemporaryDirectory(dir=self.folder_path.parent, prefix=f".{self.folder_path.name}.push-") as scratch:
            snapshot = Path(scratch) / self.folder_path.name
            with export_lock(self.folder_path):
                fingerprint = _folder_fingerprint(self.folder_path)
                if fingerprint is None or fingerprint == self.pushed_fingerprint:
                    return None
                shutil.copytree(self.folder_path, snapshot, copy_function=os.link)
            info = push_to_hub(snapshot, self.repo_id, token=self.token, api=self.api,
                               commit_message="Scheduled export of preference pairs")
        self.pushed_fingerprint = fingerprint
        return info


def _folder_fingerprint(folder: Path) -> str | None:
    """What identifies an export folder's content cheaply (names, sizes, mtimes); None if it is no export."""
    if not (folder / "README.md").is_file():
        return None
    return "|".join(f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                     for p in sorted(folder.rglob("*")) if p.is_file())
