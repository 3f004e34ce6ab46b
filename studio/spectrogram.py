"""Spectrogram pictures of generated clips: Tango's own log-mel, drawn with matplotlib (Agg, no display)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.audio import TANGO_MEL, wav_to_fbank


def save_spectrogram(waveform: np.ndarray, sample_rate: int, path: str | os.PathLike) -> None:
    """Write a PNG of the clip's log-mel (time across, mel bins up), as the model sees it."""
    if sample_rate != TANGO_MEL.sampling_rate:
        raise ValueError(f"`sample_rate` must be {TANGO_MEL.sampling_rate} (Tango's front end), got {sample_rate}")
    frames = max(1, math.ceil(len(waveform) / TANGO_MEL.hop_length))
    fbank = wav_to_fbank(torch.from_numpy(np.asarray(waveform, dtype=np.float32)), target_length=frames)[0][0]
    # A Figure without pyplot: no global state, safe in the server's worker threads.
    figure = Figure(figsize=(4.8, 1.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.1, 0.26, 0.88, 0.7))
    axes.imshow(fbank.T.numpy(), origin="lower", aspect="auto", cmap="magma",
                extent=(0, len(waveform) / sample_rate, 0, fbank.shape[1]))
    axes.set_xlabel("seconds", fontsize=8)
    axes.set_ylabel("mel bin", fontsize=8)
    axes.tick_params(labelsize=7)
    figure.savefig(path, format="png")
