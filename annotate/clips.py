"""Candidate clips: validation, a canonical WAV encoding, and content-addressed files.

Every clip is checked and turned into one canonical form before it is stored:

- decodable (a file path, the bytes of an audio file, or a 1-D float array);
- 16 kHz, Tango's only rate. Other rates are refused, not resampled: every Tango
  pipeline writes 16 kHz, so another rate means a bug upstream, and resampling would
  silently change what annotators hear;
- mono: a multi-channel *file* is mixed down by averaging its channels (arrays must
  already be 1-D, since a 2-D array does not say which axis is time);
- finite (no NaN/inf), non-empty and at most ``MAX_CLIP_S`` long.

The canonical bytes are a 32-bit float WAV written by ``scipy.io.wavfile``: lossless
for the float32 samples Tango produces and byte-for-byte deterministic (libsndfile
stamps the write time into float WAVs), so the file's sha256 names its content. Files
live at ``<audio_dir>/<sha[:2]>/<sha>.wav`` and are written atomically (temp file,
fsync, ``os.replace``): a reader sees the whole clip or none.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from preference_data.files import write_atomic
from soundworld.vocabulary import SAMPLE_RATE  # Tango's rate, defined once (torch-free) with the sound world

from .validation import InvalidAudio, preview

MAX_CLIP_S = 60.0


@dataclass(frozen=True)
class Clip:
    """A validated clip: mono float32 samples at ``SAMPLE_RATE``, and their canonical WAV bytes."""

    samples: np.ndarray
    wav_bytes: bytes
    sha256: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def encode_wav(samples: np.ndarray) -> bytes:
    """The canonical WAV bytes (32-bit float, 16 kHz, mono) of ``samples``."""
    from scipy.io import wavfile  # here: importing the store stays light (the commands' --help)

    buffer = io.BytesIO()
    wavfile.write(buffer, SAMPLE_RATE, np.ascontiguousarray(samples, dtype=np.float32))
    return buffer.getvalue()


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """(float32 samples, sample rate) of the audio file in ``data``, through soundfile."""
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return samples, rate


def load_clip(audio: str | os.PathLike | bytes | np.ndarray, sample_rate: int | None = None) -> Clip:
    """Validate ``audio`` and return it as a canonical ``Clip``; raise ``InvalidAudio`` otherwise.

    ``audio`` is a path to an audio file, the bytes of one, or a 1-D array of samples
    (then ``sample_rate`` is required; for files it is read from the file).
    """
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise InvalidAudio("`sample_rate` is required when `audio` is an array")
        if audio.ndim != 1:
            raise InvalidAudio(f"`audio` array must be 1-D (mono samples), got shape {audio.shape}")
        if not (np.issubdtype(audio.dtype, np.floating) or np.issubdtype(audio.dtype, np.integer)):
            raise InvalidAudio(f"`audio` array must be numeric, got dtype {audio.dtype}")
        samples, rate = audio.astype(np.float32), sample_rate
    elif isinstance(audio, (bytes, bytearray)):
        samples, rate = _decode(bytes(audio), "`audio` (bytes)")
    elif isinstance(audio, (str, os.PathLike)):
        path = Path(audio)
        if not path.is_file():
            raise InvalidAudio(f"`audio` file {preview(str(path))} does not exist")
        samples, rate = _decode(path.read_bytes(), f"`audio` file {preview(str(path))}")
    else:
        raise InvalidAudio(f"`audio` must be a path, bytes or a 1-D array, got {type(audio).__name__}")

    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        raise InvalidAudio(f"`audio` is {rate} Hz; clips must be {SAMPLE_RATE} Hz (Tango's rate): resample first")
    if samples.size == 0:
        raise InvalidAudio("`audio` has no samples")
    if samples.size > MAX_CLIP_S * SAMPLE_RATE:
        raise InvalidAudio(f"`audio` is {samples.size / SAMPLE_RATE:.1f} s long; the limit is {MAX_CLIP_S:.0f} s")
    if not np.isfinite(samples).all():
        raise InvalidAudio("`audio` contains NaN or infinite samples")
    wav_bytes = encode_wav(samples)
    return Clip(samples=samples, wav_bytes=wav_bytes, sha256=hashlib.sha256(wav_bytes).hexdigest())


def _decode(data: bytes, what: str) -> tuple[np.ndarray, int]:
    try:
        return decode_wav(data)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise InvalidAudio(f"{what} is not a readable audio file: {err}") from None


def clip_path(audio_dir: Path, sha256: str) -> Path:
    """Where the clip with this content hash lives."""
    return audio_dir / sha256[:2] / f"{sha256}.wav"


def write_clip(audio_dir: Path, clip: Clip) -> Path:
    """Store ``clip`` under its hash (atomically, once) and return its path."""
    path = clip_path(audio_dir, clip.sha256)
    if not path.exists():
        write_atomic(path, clip.wav_bytes)
    return path
