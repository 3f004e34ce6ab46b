"""A local stand-in for the Hugging Face Hub (``HfApi``), for tests that push, back up and restore.

Dataset repos are folders under ``root``, so a repo written by one process (an app that is
then killed) is read by another. Every commit is also recorded, with the bytes it uploaded.
"""

from __future__ import annotations

import fnmatch
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace


class LocalHub:
    """The part of ``HfApi`` the project uses: create_repo, upload_folder, repo_exists, list_repo_files,
    snapshot_download.

    ``fail_with``: raise this from every upload (after recording it) and download.
    """

    def __init__(self, root: str | Path, fail_with: Exception | None = None):
        self.root, self.fail_with, self.repos, self.commits = Path(root), fail_with, [], []
        self._queue = threading.Lock()  # like HfApi.run_as_future: jobs run one at a time

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))
        self.repo(repo_id).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, delete_patterns=(), ignore_patterns=(), **kwargs):
        folder = Path(folder_path)
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
                 and not any(fnmatch.fnmatch(str(p.relative_to(folder)), pattern) for pattern in ignore_patterns or ())}
        commit = kwargs | {"repo_id": repo_id, "delete_patterns": delete_patterns, "files": files}
        if self.fail_with:
            self.commits.append(commit)
            raise self.fail_with
        repo = self.repo(repo_id)
        for path in [p for p in repo.rglob("*") if p.is_file()]:
            name = str(path.relative_to(repo))
            if name not in files and any(fnmatch.fnmatch(name, pattern) for pattern in delete_patterns or ()):
                path.unlink()
        for name, data in files.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes(data)
        self.commits.append(commit)  # once the files are in place, as a commit is visible only when done
        return SimpleNamespace(oid=f"commit-{len(self.commits)}")

    def repo_exists(self, repo_id, **kwargs) -> bool:
        if self.fail_with:
            raise self.fail_with
        return self.repo(repo_id).is_dir()

    def list_repo_files(self, repo_id, **kwargs) -> list[str]:
        if self.fail_with:
            raise self.fail_with
        repo = self.repo(repo_id)
        return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())

    def snapshot_download(self, repo_id, *, local_dir, allow_patterns=None, **kwargs) -> str:
        if self.fail_with:
            raise self.fail_with
        repo = self.repo(repo_id)
        for path in repo.rglob("*"):
            name = str(path.relative_to(repo))
            if path.is_file() and (allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns)):
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, Path(local_dir) / name)
        return str(local_dir)

    def run_as_future(self, fn, *args, **kwargs):
        future = Future()
        with self._queue:
            try:
                future.set_result(fn(*args, **kwargs))
            except Exception as err:
                future.set_exception(err)
        return future
