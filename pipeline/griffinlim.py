"""A Griffin-Lim vocoder as a pipeline component: Tango log-mel -> waveform, nothing to train.

The embedded tiny models use it instead of a HiFi-GAN: a GAN vocoder costs hours of
training that a synthetic world of tones, sweeps and noise bursts does not need. It
inverts Tango's own front end (:mod:`pipeline.audio`): ``exp`` of the log-mel, the
pseudo-inverse of the Slaney mel filter bank (clamped at zero) back to STFT
magnitudes, then fast Griffin-Lim (Perraudin et al. 2013, momentum 0.99) with the
same Hann window and hop. Phase starts at zero, so the output is deterministic.

It has the calling convention of ``SpeechT5HifiGan`` (``(batch, frames, n_mels)`` in,
``(batch, samples)`` out, ``config.sampling_rate``, ``config.model_in_dim``) and
round-trips through ``save_pretrained``/``from_pretrained`` like any diffusers model.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .audio import MelConfig, _bases


class GriffinLimVocoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        sampling_rate: int = 16000,
        model_in_dim: int = 64,
        n_fft: int = 1024,
        hop_length: int = 160,
        win_length: int = 1024,
        mel_fmin: float = 0.0,
        mel_fmax: float = 8000.0,
        n_iter: int = 16,
        momentum: float = 0.99,
        nnls_iter: int = 50,
    ):
        super().__init__()
        _, mel_basis = _bases(MelConfig(n_fft, hop_length, win_length, model_in_dim, sampling_rate, mel_fmin, mel_fmax))
        # Derived from the config, so not saved: the checkpoint holds no weights at all.
        self.register_buffer("mel_basis", mel_basis)
        self.register_buffer("inverse_mel", torch.linalg.pinv(mel_basis.double()).float())
        self.register_buffer("window", torch.hann_window(win_length, periodic=True))

    def _stft(self, waveform: torch.Tensor) -> torch.Tensor:
        c = self.config
        return torch.stft(waveform, c.n_fft, c.hop_length, c.win_length, self.window, center=True,
                          pad_mode="reflect", return_complex=True)

    def _istft(self, spectrum: torch.Tensor, length: int) -> torch.Tensor:
        c = self.config
        return torch.istft(spectrum, c.n_fft, c.hop_length, c.win_length, self.window, center=True, length=length)

    def _mel_to_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """Non-negative least squares ``min ||M s - mel||, s >= 0`` by projected gradient descent;
        the clamped pseudo-inverse alone leaves ~3x the log-mel error."""
        basis = self.mel_basis.float()
        step = 1.0 / torch.linalg.matrix_norm(basis, ord=2) ** 2
        magnitude = torch.clamp(self.inverse_mel.float() @ mel, min=0.0)
        for _ in range(self.config.nnls_iter):
            magnitude = torch.clamp(magnitude - step * (basis.T @ (basis @ magnitude - mel)), min=0.0)
        return magnitude

    @torch.no_grad()
    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """Log-mel (batch, frames, n_mels) -> waveform (batch, frames * hop_length) in [-1, 1]."""
        if spectrogram.dim() != 3 or spectrogram.shape[-1] != self.config.model_in_dim:
            raise ValueError(
                f"expected a log-mel of shape (batch, frames, {self.config.model_in_dim}), got {tuple(spectrogram.shape)}"
            )
        dtype = spectrogram.dtype
        mel = torch.exp(spectrogram.float()).transpose(1, 2)  # (batch, n_mels, frames)
        magnitude = self._mel_to_magnitude(mel)  # (batch, n_fft/2+1, frames)
        length = spectrogram.shape[1] * self.config.hop_length
        spectrum = magnitude.to(torch.complex64)
        previous = torch.zeros_like(spectrum)
        waveform = self._istft(spectrum, length)
        for _ in range(self.config.n_iter):
            rebuilt = self._stft(waveform)[..., : magnitude.shape[-1]]
            accelerated = rebuilt - self.config.momentum / (1 + self.config.momentum) * previous
            previous = rebuilt
            spectrum = magnitude * accelerated / accelerated.abs().clamp_min(1e-8)
            waveform = self._istft(spectrum, length)
        return waveform.clamp(-1.0, 1.0).to(dtype)
