"""The server's secret: random bytes in ``<data dir>/secret``, made at the first start and readable by the
owner only. It keys what visitors must not be able to compute: the generator seed behind a Demo seed
(``studio.generation.generator_seed``) and the clip ids an annotator sees (``studio.annotation``).
The data folder is never served; the store's backups do not include the secret. Losing it changes
Demo clips and the ids of open assignments, nothing stored.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_FILE = "secret"
SECRET_BYTES = 32


def server_secret(data_dir: str | os.PathLike) -> bytes:
    """The secret in ``data_dir``, made there first if missing (atomically: two starts at once share one)."""
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        draft = path.with_name(f".{SECRET_FILE}-{secrets.token_hex(8)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(secrets.token_bytes(SECRET_BYTES))
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(draft, path)  # fails if another start made one meanwhile: then that one is the secret
            except FileExistsError:
                pass
        finally:
            draft.unlink()
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise RuntimeError(f"{path} holds {len(secret)} bytes, not the {SECRET_BYTES} this app writes: "
                           "delete it and a new secret is made at the next start")
    return secret
