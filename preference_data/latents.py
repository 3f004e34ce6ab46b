"""Sampled latents as bytes: how the annotation store and the preference dataset keep the latent behind a clip."""

from __future__ import annotations

import io

import numpy as np


def latent_to_bytes(latent: np.ndarray) -> bytes:
    """A sampled latent as the dataset stores it: a float32 ``.npy`` (shape inside, no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(latent, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def latent_from_bytes(data: bytes) -> np.ndarray:
    """The inverse of ``latent_to_bytes``; raises ``ValueError`` for anything but a finite float32 array."""
    try:
        latent = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"not a stored latent: {err}") from None
    if latent.dtype != np.float32 or latent.ndim != 3 or not np.isfinite(latent).all():
        raise ValueError(f"not a finite (channels, frames, bins) float32 latent: {latent.dtype} {latent.shape}")
    return latent
