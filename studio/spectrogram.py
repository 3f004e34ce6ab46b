"""Spectrogram pictures of generated clips: Tango's own log-mel, drawn with matplotlib (Agg, no display)."""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pipeline.audio import TANGO_MEL, wav_to_fbank

_frames = threading.local()  # per thread (the server's workers): duration -> a drawn frame to paint clips into


class _Frame:
    """The axes, ticks and labels of a picture, drawn once per clip duration; each clip only repaints the image
    (drawing the text and ticks was most of the time a picture took)."""

    def __init__(self, seconds: float, mel_bins: int):
        # A Figure without pyplot: no global state, safe in the server's worker threads.
        self.figure = Figure(figsize=(4.8, 1.8), dpi=100)
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_axes((0.1, 0.26, 0.88, 0.7))
        self.image = self.axes.imshow(np.zeros((mel_bins, 2)), origin="lower", aspect="auto", cmap="magma",
                                      extent=(0, seconds, 0, mel_bins))
        self.axes.set_xlabel("seconds", fontsize=8)
        self.axes.set_ylabel("mel bin", fontsize=8)
        self.axes.tick_params(labelsize=7)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.figure.bbox)

    def paint(self, fbank: np.ndarray, path: str | os.PathLike) -> None:
        self.canvas.restore_region(self.background)
        self.image.set_data(fbank)
        self.image.set_clim(fbank.min(), fbank.max())
        self.axes.draw_artist(self.image)
        for spine in self.axes.spines.values():  # the frame goes back over the image's edges
            self.axes.draw_artist(spine)
        Image.fromarray(np.asarray(self.canvas.buffer_rgba())).save(path, format="png", compress_level=1)


def save_spectrogram(waveform: np.ndarray, sample_rate: int, path: str | os.PathLike) -> None:
    """Write a PNG of the clip's log-mel (time across, mel bins up), as the model sees it."""
    if sample_rate != TANGO_MEL.sampling_rate:
        raise ValueError(f"`sample_rate` must be {TANGO_MEL.sampling_rate} (Tango's front end), got {sample_rate}")
    frames = max(1, math.ceil(len(waveform) / TANGO_MEL.hop_length))
    fbank = wav_to_fbank(torch.from_numpy(np.asarray(waveform, dtype=np.float32)), target_length=frames)[0][0]
    seconds = len(waveform) / sample_rate
    drawn = getattr(_frames, "by_duration", None)
    if drawn is None:
        drawn = _frames.by_duration = {}
    if (seconds, fbank.shape[1]) not in drawn:
        drawn[(seconds, fbank.shape[1])] = _Frame(seconds, fbank.shape[1])
    drawn[(seconds, fbank.shape[1])].paint(fbank.T.numpy(), path)
