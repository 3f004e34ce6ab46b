"""What the app lets a browser download: copies of clip audio under names that carry nothing.

Gradio serves a file only if a handler returned it (it copies it into its own cache) or it
lies under ``allowed_paths``. The app allows no path at all and blocks the data folder, so
the database, its ``-wal``/``-shm`` journals, ``export/`` and the content-addressed clips
can never be fetched (and the app's own SQLite locks are never disturbed by a file server
opening the database). A clip an annotator must hear is copied to ``<token>.wav``, a fresh
random token per assignment, in a folder outside the data folder; its name says nothing
about the clip's content, model or seed. Only regular files inside the store's clip folder
are copied: a clip replaced by a link (to the database, say) is refused, not served.

Copies go after ``keep_s`` and, oldest first, whenever they hold more than ``max_bytes``, so
visitors typing new names cannot fill the disk (the page already holds gradio's own copy of
what it plays; a task handed out again gets fresh copies). Gradio keeps its own copy of every
file a handler returns until its hourly prune; ``twin`` says where, so that it goes with ours
and gradio's cache of clips stays within the same bound between its prunes.
"""

from __future__ import annotations

import collections
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

KEEP_SERVED_S = 6 * 3600  # copies older than this are deleted (an assignment left open longer gets new ones)
MAX_SERVED_BYTES = 256 << 20  # beyond this, the oldest copies are deleted


class NotAClip(OSError):
    """A clip path that is not a regular file inside the clip folder (a link, a device, elsewhere)."""


class ClipServer:
    """Copies clips from ``clips`` (the store's clip folder) to ``folder`` under random names; prunes old copies."""

    def __init__(self, folder: str | Path, clips: str | Path, keep_s: float = KEEP_SERVED_S,
                 max_bytes: int = MAX_SERVED_BYTES, twin: Callable[[Path], Path] | None = None):
        """``twin``: where another cache (gradio's) keeps its own copy of a served copy, deleted with it."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clips = Path(clips).resolve()
        self.keep_s, self.max_bytes, self.twin = keep_s, max_bytes, twin
        self._lock = threading.Lock()
        self._copies: collections.OrderedDict[Path, tuple[int, float]] = collections.OrderedDict()  # oldest first
        self._bytes = 0

    def serve(self, source: str | Path) -> str:
        """A copy of ``source`` named by a random token; the path to hand to gradio. ``NotAClip`` (no path
        named: the message may reach a visitor) unless ``source`` is a regular file inside the clip folder."""
        if not Path(source).resolve().is_relative_to(self.clips):
            raise NotAClip("a stored clip lies outside the clip folder: it is not served")
        try:
            descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)  # the last link is not followed either
        except OSError:
            if Path(source).is_symlink():
                raise NotAClip("a stored clip is a link, not a file: it is not served") from None
            raise
        target = self.folder / f"{secrets.token_urlsafe(16)}.wav"
        with os.fdopen(descriptor, "rb") as clip:
            if not stat.S_ISREG(os.fstat(clip.fileno()).st_mode):
                raise NotAClip("a stored clip is not a regular file: it is not served")
            with open(target, "wb") as copy:
                shutil.copyfileobj(clip, copy)
        self._keep(target)
        return str(target)

    def _keep(self, copy: Path) -> None:
        """Count a new copy; delete the oldest ones while they are too old or hold more than ``max_bytes``."""
        with self._lock:
            self._copies[copy] = (copy.stat().st_size, time.monotonic())
            self._bytes += self._copies[copy][0]
            while self._copies:
                oldest, (size, made) = next(iter(self._copies.items()))
                if self._bytes <= self.max_bytes and time.monotonic() - made < self.keep_s:
                    break
                del self._copies[oldest]
                self._bytes -= size
                if self.twin is not None and oldest.exists():
                    self.twin(oldest).unlink(missing_ok=True)
                oldest.unlink(missing_ok=True)
