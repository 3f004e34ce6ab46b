"""What the app lets a browser download: copies of clip audio under names that carry nothing.

Gradio serves a file only if a handler returned it (it copies it into its own cache) or it
lies under ``allowed_paths``. The app allows no path at all and blocks the data folder, so
the database, its ``-wal``/``-shm`` journals, ``export/`` and the content-addressed clips
can never be fetched (and the app's own SQLite locks are never disturbed by a file server
opening the database). A clip an annotator must hear is copied to ``<token>.wav``, a fresh
random token per assignment, in a folder outside the data folder; its name says nothing
about the clip's content, model or seed.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from pathlib import Path

KEEP_SERVED_S = 6 * 3600  # copies older than this are deleted (an assignment left open longer gets new ones)


class ClipServer:
    """Copies clips to ``folder`` under random names; prunes old copies."""

    def __init__(self, folder: str | Path, keep_s: float = KEEP_SERVED_S):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._last_prune = time.monotonic()

    def serve(self, source: str | Path) -> str:
        """A copy of ``source`` named by a random token; the path to hand to gradio."""
        target = self.folder / f"{secrets.token_urlsafe(16)}.wav"
        shutil.copyfile(source, target)
        self._prune()
        return str(target)

    def _prune(self) -> None:
        with self._lock:
            if time.monotonic() - self._last_prune < 60:
                return
            self._last_prune = time.monotonic()
        cutoff = time.time() - self.keep_s
        for path in self.folder.glob("*.wav"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                pass
