"""Waveforms in and out of Tango's log-mel space, and audio files on disk.

Tango's training code (``tools/torch_tools.py`` + AudioLDM's ``TacotronSTFT``) turns
a clip into a log-mel "fbank" in a particular way; a model fine-tuned on anything
else sees inputs it was never trained on. This module reproduces that path step by
step (normalise, pad, normalise again, reflect-padded STFT as a conv1d with a
windowed DFT basis, magnitude, Slaney mel, natural log clamped at 1e-5) so
training and evaluation feed the VAE exactly what the original did.

File IO goes through soundfile; other sample rates are resampled to 16 kHz with a
polyphase filter (``scipy.signal.resample_poly``). The original used torchaudio's
sinc resampler, which has no CPU build for this torch: 16 kHz input is bit-exact,
resampled input is equivalent but not bit-identical.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from scipy.signal import get_window, resample_poly
from transformers.audio_utils import mel_filter_bank

class AudioError(ValueError):
    """An audio file or array that cannot be used (unreadable, empty, not finite)."""


@dataclass(frozen=True)
class MelConfig:
    """Tango's STFT front end (``stft_config.json`` of the Hub repos)."""

    filter_length: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mel_channels: int = 64
    sampling_rate: int = 16000  # Tango's audio rate; soundworld and annotate render and store at it too
    mel_fmin: float = 0.0
    mel_fmax: float = 8000.0


TANGO_MEL = MelConfig()


@lru_cache(maxsize=4)
def _bases(config: MelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(forward_basis, mel_basis) exactly as TacotronSTFT builds them.

    The DFT rows are built in float64, cast to float32 and then multiplied by the
    float32 periodic Hann window, the same order of rounding as the original, so the
    basis is bit-identical to the one stored in ``pytorch_model_stft.bin``.
    """
    n_fft = config.filter_length
    cutoff = n_fft // 2 + 1
    fourier = np.fft.fft(np.eye(n_fft))
    fourier = np.vstack([np.real(fourier[:cutoff]), np.imag(fourier[:cutoff])])
    window = get_window("hann", config.win_length, fftbins=True)
    pad = (n_fft - config.win_length) // 2
    window = np.pad(window, (pad, n_fft - config.win_length - pad))
    forward_basis = torch.tensor(fourier[:, None, :], dtype=torch.float32) * torch.from_numpy(window).float()
    mel_basis = mel_filter_bank(
        num_frequency_bins=cutoff,
        num_mel_filters=config.n_mel_channels,
        min_frequency=config.mel_fmin,
        max_frequency=config.mel_fmax,
        sampling_rate=config.sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    ).T
    return forward_basis, torch.from_numpy(mel_basis.astype(np.float32))


def normalize_segment(waveform: torch.Tensor, segment_length: int) -> torch.Tensor:
    """Tango's ``read_wav_file`` after loading: centre, peak-normalise to 0.5, pad or
    cut to ``segment_length`` samples, then peak-normalise to 0.5 again.

    ``waveform`` is (samples,) or (batch, samples); returns (batch, segment_length).
    A silent clip stays silent (the original divides 0 by 0 and later maps NaN to 0).
    """
    waveform = torch.as_tensor(waveform, dtype=torch.float32)
    if waveform.dim() == 1:
        waveform = waveform[None]
    waveform = waveform - waveform.mean(dim=-1, keepdim=True)
    waveform = waveform / (waveform.abs().amax(dim=-1, keepdim=True) + 1e-8)
    waveform = 0.5 * waveform
    if waveform.shape[-1] >= segment_length:
        waveform = waveform[:, :segment_length]
    else:
        waveform = F.pad(waveform, (0, segment_length - waveform.shape[-1]))
    peak = waveform.abs().amax(dim=-1, keepdim=True)
    waveform = torch.where(peak > 0, waveform / peak.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return 0.5 * waveform


def log_mel(waveform: torch.Tensor, config: MelConfig = TANGO_MEL) -> tuple[torch.Tensor, torch.Tensor]:
    """``TacotronSTFT.mel_spectrogram``: (batch, samples) in [-1, 1] ->
    (log-mel (batch, frames, n_mels), log-magnitude STFT (batch, frames, n_fft/2+1)).

    frames = samples // hop + 1 (reflect padding of n_fft/2 on each side).
    """
    forward_basis, mel_basis = _bases(config)
    waveform = torch.nan_to_num(torch.clip(waveform.float(), -1, 1))
    half = config.filter_length // 2
    padded = F.pad(waveform[:, None, None, :], (half, half, 0, 0), mode="reflect")[:, 0]
    spectrum = F.conv1d(padded, forward_basis.to(waveform.device), stride=config.hop_length)
    cutoff = half + 1
    magnitude = torch.sqrt(spectrum[:, :cutoff] ** 2 + spectrum[:, cutoff:] ** 2)
    mel = torch.matmul(mel_basis.to(waveform.device), magnitude)
    log_mel_spec = torch.log(torch.clamp(mel, min=1e-5))
    log_magnitude = torch.log(torch.clamp(magnitude, min=1e-5))
    return log_mel_spec.transpose(1, 2), log_magnitude.transpose(1, 2)


def pad_frames(spec: torch.Tensor, target_length: int) -> torch.Tensor:
    """Tango's ``_pad_spec``: zero-pad or cut (batch, frames, channels) to ``target_length``
    frames, and drop the last channel when the channel count is odd."""
    frames = spec.shape[1]
    if frames < target_length:
        spec = F.pad(spec, (0, 0, 0, target_length - frames))
    else:
        spec = spec[:, :target_length]
    if spec.shape[-1] % 2:
        spec = spec[..., :-1]
    return spec


def wav_to_fbank(
    waveforms: torch.Tensor | np.ndarray | Sequence[np.ndarray],
    target_length: int = 1024,
    config: MelConfig = TANGO_MEL,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tango's training ``wav_to_fbank`` on 16 kHz waveforms already in memory.

    Args:
        waveforms: one clip (samples,), a batch (batch, samples), or a list of clips
            of different lengths, at ``config.sampling_rate``.
        target_length: mel frames to produce (1024 for Tango's 10.24 s clips).

    Returns:
        ``(fbank, log_magnitudes_stft, waveform)``: (batch, target_length, n_mels),
        (batch, target_length, n_fft/2), and the normalised (batch, target_length * hop)
        waveform the mel was computed from. Feed ``fbank.unsqueeze(1)`` to the VAE.
    """
    segment_length = target_length * config.hop_length
    if isinstance(waveforms, (list, tuple)):
        batch = torch.cat([normalize_segment(torch.as_tensor(w), segment_length) for w in waveforms])
    else:
        batch = normalize_segment(torch.as_tensor(waveforms), segment_length)
    fbank, log_magnitudes = log_mel(batch, config)
    return pad_frames(fbank, target_length), pad_frames(log_magnitudes, target_length), batch


def load_audio(source: str | os.PathLike | bytes, sample_rate: int = TANGO_MEL.sampling_rate) -> np.ndarray:
    """Read an audio file (a path, or the file's bytes) as mono float32 at ``sample_rate``
    (first channel, like Tango).

    Raises ``AudioError`` naming the file when it is missing, undecodable, empty or
    not finite.
    """
    name = "audio bytes" if isinstance(source, bytes) else repr(os.fspath(source))
    try:
        file = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
        data, file_rate = sf.read(file, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise AudioError(f"cannot read audio file {name}: {err}") from None
    return as_mono_16k(data[:, 0], file_rate, sample_rate, name=name)


def as_mono_16k(
    waveform: np.ndarray, sample_rate: int, target_rate: int = TANGO_MEL.sampling_rate, name: str = "waveform"
) -> np.ndarray:
    """Validate a 1-D waveform and resample it to ``target_rate`` (polyphase filter)."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise AudioError(f"{name}: expected a mono 1-D waveform, got shape {waveform.shape}")
    if waveform.size == 0:
        raise AudioError(f"{name}: the audio is empty")
    if not np.isfinite(waveform).all():
        raise AudioError(f"{name}: the audio contains NaN or infinite samples")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate!r}")
    if sample_rate != target_rate:
        divisor = math.gcd(int(sample_rate), int(target_rate))
        waveform = resample_poly(waveform, target_rate // divisor, int(sample_rate) // divisor).astype(np.float32)
    return waveform


def save_audio(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int = TANGO_MEL.sampling_rate) -> None:
    """Write a float waveform as 16-bit PCM WAV (or the format the suffix names)."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1 or not np.isfinite(waveform).all():
        raise AudioError(f"refusing to write {os.fspath(path)!r}: expected a finite 1-D waveform")
    sf.write(os.fspath(path), np.clip(waveform, -1.0, 1.0), sample_rate, subtype="PCM_16")


def mode_latents(vae, waveforms: Sequence[np.ndarray]) -> "torch.Tensor":
    """16 kHz clips' VAE latents, the posterior's mode times the scaling factor, (clips, channels, frames, bins):
    log-mel frames for the longest clip, rounded up to what the VAE downsamples by."""
    frames_per_latent = 2 ** (len(vae.config.block_out_channels) - 1)
    frames = math.ceil(max(len(w) for w in waveforms) / TANGO_MEL.hop_length / frames_per_latent) * frames_per_latent
    fbank, _, _ = wav_to_fbank([np.asarray(w, np.float32) for w in waveforms],
                               target_length=max(frames, frames_per_latent))
    with torch.no_grad():
        latents = vae.encode(fbank.unsqueeze(1).to(vae.dtype)).latent_dist.mode()
    return latents.float() * float(vae.config.scaling_factor)


def round_trip(pipe, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
    """16 kHz clips through ``pipe``'s VAE (the posterior's mode) and vocoder, as its generated clips are made."""
    with torch.no_grad():
        audio = pipe.mel_spectrogram_to_waveform(pipe.decode_latents(mode_latents(pipe.vae, waveforms)))
    return [clip[:len(w)].numpy() for clip, w in zip(audio.float(), waveforms)]
