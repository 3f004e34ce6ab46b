"""Crash-safe file operations shared by the clip store and the dataset writer.

A process killed at any instant (SIGKILL, power loss after the call returned) must
leave either the old file/folder or the new one, never a torn mix.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable (POSIX needs the directory itself synced)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link ``source`` (an immutable file) at ``dest``, copying when linking is impossible."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an OS-level exclusive lock on ``lock_path`` (created if missing) for the block.

    ``flock`` locks die with their process, so a killed holder never leaves a stale lock.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
