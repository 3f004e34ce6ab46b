"""Render a sound-world prompt to a waveform with its ground-truth timeline.

The events a prompt asks for are laid out in temporal order inside the clip,
never overlapping: at least ``MIN_GAP_SECONDS`` of silence between two events
and ``EDGE_SECONDS`` at each end. Durations, gaps, per-event level (+-3 dB) and
each type's parameters (pitch, sweep range, decay, wobble rate, ...) are drawn
from a generator seeded by (seed, prompt), so one (prompt, seed) always gives
the same clip and different seeds give different takes. The clip is then
peak-normalised to 0.5-0.9 full scale.
"""

from __future__ import annotations

import zlib
from functools import cache
from typing import NamedTuple

import numpy as np

from .grammar import parse
from .vocabulary import EVENTS_BY_NAME, SAMPLE_RATE

CLIP_SECONDS = 3.84  # 384 mel frames at hop 160: the tiny model's clip length
MIN_GAP_SECONDS = 0.2
EDGE_SECONDS = 0.05
LEVEL_JITTER_DB = 3.0
PEAK_RANGE = (0.5, 0.9)


def _butter(order: int, cutoff, btype: str) -> np.ndarray:
    """``scipy.signal.butter`` as second-order sections at the sound world's rate. (scipy.signal loads on the first
    render, not with the package: importing soundworld stays light for the commands' --help.)"""
    from scipy.signal import butter

    return butter(order, cutoff, btype=btype, fs=SAMPLE_RATE, output="sos")


_fixed_filter = cache(_butter)  # the hiss's and the knock's filters, made once


def _sosfilt(sos: np.ndarray, signal: np.ndarray) -> np.ndarray:
    from scipy.signal import sosfilt

    return sosfilt(sos, signal)


class TimedEvent(NamedTuple):
    """One event of a clip's ground truth: type, onset and offset in seconds."""

    type: str
    onset: float
    offset: float


def render(prompt: str, seed: int, duration: float = CLIP_SECONDS) -> tuple[np.ndarray, int, list[TimedEvent]]:
    """Synthesize a clip of ``duration`` seconds that contains what ``prompt`` asks for.

    Args:
        prompt: a sound-world prompt (see ``grammar.py``); anything else raises ``PromptError``.
        seed: non-negative integer; with the prompt it fixes every random choice.
        duration: clip length in seconds.

    Returns:
        (waveform, sample_rate, events): mono float32 waveform at 16 kHz, and the
        ground-truth timeline in temporal order.

    Raises:
        PromptError: the prompt is empty or outside the grammar.
        ValueError: the events cannot fit in ``duration`` with the required gaps.
    """
    instances = parse(prompt).instances
    fixed = 2 * EDGE_SECONDS + MIN_GAP_SECONDS * (len(instances) - 1)
    longest = fixed + sum(EVENTS_BY_NAME[name].max_seconds for name in instances)
    if longest > duration:  # judged on the longest draw, so whether a prompt fits never depends on the seed
        raise ValueError(f"{prompt!r} may need {longest:.2f} s with its gaps, more than `duration`={duration} s")
    rng = np.random.default_rng([seed, zlib.crc32(prompt.encode())])
    lengths = [rng.uniform(EVENTS_BY_NAME[name].min_seconds, EVENTS_BY_NAME[name].max_seconds) for name in instances]
    slack = duration - fixed - sum(lengths)
    # Spread the spare time over the leading silence, the gaps and the trailing silence.
    extra = slack * rng.dirichlet(np.ones(len(instances) + 1))

    waveform = np.zeros(int(round(duration * SAMPLE_RATE)))
    events, cursor = [], EDGE_SECONDS
    for index, (name, length) in enumerate(zip(instances, lengths)):
        onset = cursor + extra[index] + (MIN_GAP_SECONDS if index else 0.0)
        start, n = int(round(onset * SAMPLE_RATE)), int(round(length * SAMPLE_RATE))
        sound = _SYNTHS[name](n, rng)
        level = 10 ** (rng.uniform(-LEVEL_JITTER_DB, LEVEL_JITTER_DB) / 20)
        waveform[start : start + n] = sound * (level / np.sqrt(np.mean(sound**2)))
        events.append(TimedEvent(name, start / SAMPLE_RATE, (start + n) / SAMPLE_RATE))
        cursor = (start + n) / SAMPLE_RATE
    waveform *= rng.uniform(*PEAK_RANGE) / np.abs(waveform).max()
    return waveform.astype(np.float32), SAMPLE_RATE, events


def _fade(sound: np.ndarray, seconds: float) -> np.ndarray:
    """Raised-cosine fade in and out, so tone onsets do not splash broadband clicks."""
    n = min(int(seconds * SAMPLE_RATE), len(sound) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n))
    sound[:n] *= ramp
    sound[len(sound) - n :] *= ramp[::-1]
    return sound


def _time(n: int) -> np.ndarray:
    return np.arange(n) / SAMPLE_RATE


def _sweep(n: int, start_hz: float, end_hz: float) -> np.ndarray:
    """Exponential sine sweep: a constant number of octaves per second."""
    seconds = n / SAMPLE_RATE
    ratio = end_hz / start_hz
    phase = 2 * np.pi * start_hz * seconds / np.log(ratio) * (ratio ** (_time(n) / seconds) - 1)
    return np.sin(phase)


def _beep(n, rng):
    return _fade(np.sin(2 * np.pi * rng.uniform(2600, 3400) * _time(n) + rng.uniform(0, 2 * np.pi)), 0.008)


def _hum(n, rng):
    f0, t = rng.uniform(100, 150), _time(n)
    harmonics = [(1, 1.0), (2, 0.5), (3, 0.25)]
    tone = sum(weight * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) for k, weight in harmonics)
    return _fade(tone, 0.03)


def _rising_chirp(n, rng):
    return _fade(_sweep(n, rng.uniform(400, 500), rng.uniform(3400, 4200)), 0.01)


def _falling_chirp(n, rng):
    return _fade(_sweep(n, rng.uniform(3400, 4200), rng.uniform(400, 500)), 0.01)


def _hiss(n, rng):
    return _fade(_sosfilt(_fixed_filter(4, (2500, 7000), "bandpass"), rng.standard_normal(n)), 0.02)


def _knock(n, rng):
    t = _time(n)
    body = np.exp(-t / rng.uniform(0.015, 0.025)) * np.sin(2 * np.pi * rng.uniform(120, 220) * t)
    attack = np.exp(-t / 0.004) * _sosfilt(_fixed_filter(2, 600, "lowpass"), rng.standard_normal(n))
    return _fade(body + 0.5 * attack / np.abs(attack).max(), 0.002)


def _click(n, rng):
    """An impulse through a 2-7 kHz band-pass: a flat, broadband spectrum, never tone-like."""
    edges = [rng.uniform(1800, 2400), rng.uniform(6000, 7200)]
    impulse = np.zeros(n)
    impulse[0] = 1.0
    return _sosfilt(_butter(4, edges, "bandpass"), impulse)


def _siren(n, rng):
    centre, depth, rate = rng.uniform(1150, 1350), rng.uniform(250, 350), rng.uniform(2, 3)
    frequency = centre + depth * np.sin(2 * np.pi * rate * _time(n) + rng.uniform(0, 2 * np.pi))
    return _fade(np.sin(2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE), 0.02)


def _buzz(n, rng):
    """Equal-ish harmonics of a low fundamental from 250 Hz to 3.5 kHz: broad, mid-band, not one tone."""
    f0, t = rng.uniform(110, 160), _time(n)
    harmonics = np.arange(int(np.ceil(250 / f0)), int(3500 // f0) + 1)
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    tone = (np.sin(2 * np.pi * f0 * harmonics[:, None] * t + phases[:, None]) / np.sqrt(harmonics)[:, None]).sum(0)
    return _fade(tone, 0.02)


_SYNTHS = {
    "beep": _beep,
    "hum": _hum,
    "rising_chirp": _rising_chirp,
    "falling_chirp": _falling_chirp,
    "hiss": _hiss,
    "knock": _knock,
    "click": _click,
    "siren": _siren,
    "buzz": _buzz,
}
