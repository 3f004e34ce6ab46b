"""The sound world's judge: which events a clip contains, in what order, and how well it fits a prompt.

It plays the role CLAP plays for real Tango (rank candidates, measure prompt
following), but reads only the audio and knows the truth of this small world.
It must read clips from a tiny generative model, so every decision rests on
coarse features that survive level changes, mild noise, pitch/timing jitter and
a vocoder's smeared phase.

Detection, on the judge's own STFT (512-point Hann, hop 160 at 16 kHz):

1. Activity. Power is pooled into quarter-octave bands at least 125 Hz wide
   and smoothed over three frames. A frame is active when some band stands
   ``ACTIVE_ABOVE_FLOOR_DB`` above that band's noise floor (its 20th percentile
   over time) and the frame is within ``ACTIVE_BELOW_LOCAL_PEAK_DB`` of the
   loudest frame nearby (so smeared tails do not bridge the gaps). Everything
   is relative, so the overall level never matters.
2. Segments. Runs of active frames closer than ``MERGE_GAP_SECONDS`` are merged
   (the renderer leaves at least 0.2 s between events); runs shorter than
   ``MIN_EVENT_SECONDS`` are dropped.
3. Features per segment, on power with the mean noise spectrum of inactive
   frames subtracted: duration, share of energy below 700 Hz, energy-weighted
   mean log-frequency, tonality (share of each frame's energy within a quarter
   octave of its peak), the net octave change of the frame-wise log-frequency
   centroid over the segment (sweep) and its wobble around that trend.
4. Type, by a short decision list on those features (see ``classify``).

Scoring against a prompt (``judge``): for each event type, detected instances
are matched to expected ones up to the expected count.

    event_recall   = matched instances / expected instances
    extra_events   = detected instances beyond the expected count of their type
    count_correct  = every prompted type detected exactly as often as asked
    order_correct  = for prompts with 2-3 types: the detected prompted-type
                     sequence, with repeats of a type collapsed, equals the
                     prompt's type order (so a missing type makes it False);
                     None for single-type prompts
    score          = event_recall * (0.5 if order_correct is False else 1) / (1 + extra_events)

Input handling: a waveform at another sample rate is resampled to 16 kHz with
``scipy.signal.resample_poly`` (logged); arrays with one non-singleton axis are
read as mono, true multi-channel audio raises ``ValueError`` (mix it down
yourself); NaN or infinite samples raise ``ValueError``; a silent clip has no
events (score 0 against any prompt); an empty or unknown prompt raises the
grammar's ``PromptError``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from math import gcd
from typing import NamedTuple

import numpy as np

from .grammar import parse
from .vocabulary import SAMPLE_RATE

logger = logging.getLogger(__name__)

N_FFT = 512
HOP = 160
MIN_BAND_BINS = 4
ACTIVE_ABOVE_FLOOR_DB = 12.0
ACTIVE_BELOW_LOCAL_PEAK_DB = 30.0
LOCAL_PEAK_SECONDS = 0.12
MERGE_GAP_SECONDS = 0.07
MIN_EVENT_SECONDS = 0.03
ORDER_PENALTY = 0.5

_FREQS = np.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT
_LOWEST_BIN = 2  # 62.5 Hz: below this is DC and rumble
_WINDOW = np.hanning(N_FFT + 1)[:-1]


def _band_starts(ratio: float = 2 ** (1 / 4)) -> np.ndarray:
    """First bin of each activity band: quarter-octave bands, but never narrower than ``MIN_BAND_BINS``.

    Wide enough that a band's power over white noise hardly fluctuates (a one-bin
    band of noise swings by 15 dB from frame to frame and would look like events).
    """
    starts = [_LOWEST_BIN]
    while starts[-1] * ratio < N_FFT // 2 + 1 - MIN_BAND_BINS:
        starts.append(max(starts[-1] + MIN_BAND_BINS, int(round(starts[-1] * ratio))))
    return np.array(starts)


_BAND_STARTS = _band_starts()


class DetectedEvent(NamedTuple):
    """An event the judge heard: type, onset and offset in seconds."""

    type: str
    onset: float
    offset: float


@dataclass(frozen=True)
class SegmentFeatures:
    """What the judge measures on one active segment (see the module docstring)."""

    onset: float
    offset: float
    low_share: float  # energy share below 700 Hz
    centroid_hz: float  # energy-weighted geometric mean frequency
    tonality: float  # share of energy within a quarter octave of each frame's peak
    sweep_octaves: float  # net change of the log-frequency track over the segment
    wobble_octaves: float  # standard deviation of the track around its linear trend

    @property
    def seconds(self) -> float:
        return self.offset - self.onset


@dataclass(frozen=True)
class JudgeResult:
    """How well a clip follows a prompt (formulas in the module docstring)."""

    prompt: str
    construction: str
    expected: list[tuple[str, int]]
    detected: list[tuple[str, float]]
    event_recall: float
    order_correct: bool | None
    count_correct: bool
    extra_events: int
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


def judge(waveform: np.ndarray, sample_rate: int, prompt: str) -> JudgeResult:
    """Judge one clip against the prompt it was meant to follow."""
    parsed = parse(prompt)
    events = detect_events(waveform, sample_rate)
    expected, found = Counter(parsed.instances), Counter(event.type for event in events)
    matched = sum(min(count, found[name]) for name, count in expected.items())
    recall = matched / sum(expected.values())
    extra = sum(max(0, count - expected[name]) for name, count in found.items())
    order_correct = None
    if len(parsed.events) > 1:
        order_correct = heard_order([event.type for event in events], parsed.types) == parsed.types
    score = recall * (ORDER_PENALTY if order_correct is False else 1.0) / (1 + extra)
    return JudgeResult(
        prompt=prompt,
        construction=parsed.construction,
        expected=list(parsed.events),
        detected=[(event.type, event.onset) for event in events],
        event_recall=recall,
        order_correct=order_correct,
        count_correct=all(found[name] == count for name, count in expected.items()),
        extra_events=extra,
        score=score,
    )


def heard_order(heard_types: list[str], prompted_types: list[str]) -> list[str]:
    """The prompted types in the order heard, a run of one type counted once: what order is judged on
    (["beep", "beep", "knock"] -> ["beep", "knock"]; types the prompt never named are left out)."""
    heard = [name for name in heard_types if name in prompted_types]
    return [name for i, name in enumerate(heard) if i == 0 or heard[i - 1] != name]


def detect_events(waveform: np.ndarray, sample_rate: int) -> list[DetectedEvent]:
    """Every event the judge hears in a clip, in temporal order."""
    return [DetectedEvent(classify(f), f.onset, f.offset) for f in segment_features(waveform, sample_rate)]


def classify(features: SegmentFeatures) -> str:
    """Event type of one segment: low band first, then sweeps, then steady tones, then the rest by band and length."""
    f = features
    if f.low_share > 0.6:
        return "knock" if f.seconds < 0.3 else "hum"
    if f.sweep_octaves > 1.5:
        return "rising_chirp"
    if f.sweep_octaves < -1.5:
        return "falling_chirp"
    if f.tonality > 0.7:
        siren_votes = (f.seconds > 0.45) + (f.wobble_octaves > 0.12) + (f.centroid_hz < 2000)
        return "siren" if siren_votes >= 2 else "beep"
    if f.centroid_hz > 2500:
        return "click" if f.seconds < 0.2 else "hiss"
    return "buzz"


def segment_features(waveform: np.ndarray, sample_rate: int) -> list[SegmentFeatures]:
    """Find the active segments of a clip and measure each (steps 1-3 of the module docstring)."""
    from scipy.ndimage import maximum_filter1d, uniform_filter1d  # here: importing soundworld stays light (--help)

    power = _power_spectrogram(_as_mono_16k(waveform, sample_rate))  # (frames, bins)
    if not power.any():
        return []
    bands = np.add.reduceat(power[:, _LOWEST_BIN:], _BAND_STARTS - _LOWEST_BIN, axis=1)
    bands = uniform_filter1d(bands, size=3, axis=0)  # three frames: steadier noise, events barely dimmed
    tiny = bands.max() * 1e-12
    band_db = 10 * np.log10(bands + tiny)
    above_floor = (band_db - np.percentile(band_db, 20, axis=0)).max(axis=1)
    frame_db = 10 * np.log10(bands.sum(axis=1) + tiny)
    local_peak = maximum_filter1d(frame_db, size=2 * int(LOCAL_PEAK_SECONDS * SAMPLE_RATE / HOP) + 1)
    active = (above_floor > ACTIVE_ABOVE_FLOOR_DB) & (frame_db > local_peak - ACTIVE_BELOW_LOCAL_PEAK_DB)

    runs = _runs(active, merge_gap=int(MERGE_GAP_SECONDS * SAMPLE_RATE / HOP))
    runs = [(start, stop) for start, stop in runs if (stop - start) * HOP / SAMPLE_RATE >= MIN_EVENT_SECONDS]
    quiet = ~maximum_filter1d(active, size=7)
    noise = power[quiet].mean(axis=0) if quiet.sum() >= 10 else np.zeros(power.shape[1])
    clean = np.maximum(power - noise, 0.0)
    return [_measure(clean[start:stop], start) for start, stop in runs]


def _as_mono_16k(waveform, sample_rate: int) -> np.ndarray:
    audio = np.asarray(waveform, dtype=np.float64)
    if audio.ndim != 1:
        if sum(size > 1 for size in audio.shape) > 1:
            raise ValueError(
                f"`waveform` must be mono (one channel), got shape {audio.shape}: mix the channels down first"
            )
        audio = audio.reshape(-1)
    if audio.size == 0:
        raise ValueError("`waveform` is empty")
    if not np.isfinite(audio).all():
        raise ValueError("`waveform` contains NaN or infinite samples")
    if not isinstance(sample_rate, (int, float, np.number)) or sample_rate <= 0 or sample_rate != int(sample_rate):
        raise ValueError(f"`sample_rate` must be a positive whole number of Hz, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    if sample_rate != SAMPLE_RATE:
        logger.info("resampling from %d Hz to %d Hz for the judge", sample_rate, SAMPLE_RATE)
        from scipy.signal import resample_poly

        common = gcd(sample_rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // common, sample_rate // common)
    return audio


def _power_spectrogram(audio: np.ndarray) -> np.ndarray:
    """|STFT|^2 with centred frames: frame t covers time t * HOP / SAMPLE_RATE.

    Mirror padding, so that a clip starting or ending mid-sound (or with a DC
    offset) does not get a step at its edges that would read as a thump.
    """
    pad = (N_FFT // 2, N_FFT // 2 + HOP)
    padded = np.pad(audio, pad, mode="reflect" if len(audio) > max(pad) else "constant")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[:: HOP][: len(audio) // HOP + 1]
    return np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2


def _runs(mask: np.ndarray, merge_gap: int) -> list[tuple[int, int]]:
    """(start, stop) of True runs, joining runs separated by fewer than ``merge_gap`` False frames."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    runs = list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))
    merged = []
    for start, stop in runs:
        if merged and start - merged[-1][1] < merge_gap:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return [(int(start), int(stop)) for start, stop in merged]


def _measure(power: np.ndarray, first_frame: int) -> SegmentFeatures:
    """Features of one segment from its noise-subtracted power (frames, bins)."""
    power = power[:, _LOWEST_BIN:]
    freqs = _FREQS[_LOWEST_BIN:]
    log_freqs = np.log2(freqs)
    frame_energy = power.sum(axis=1)
    total = frame_energy.sum() + 1e-30
    spectrum = power.sum(axis=0)

    peaks = log_freqs[power.argmax(axis=1)]
    near_peak = np.abs(log_freqs[None, :] - peaks[:, None]) <= 0.25
    tonality = (power * near_peak).sum() / total

    # The frame-wise log-frequency centroid of the louder frames, and its linear trend.
    frames = np.flatnonzero(frame_energy > 0.1 * frame_energy.max())
    track = (power[frames] @ log_freqs) / frame_energy[frames]
    weights = frame_energy[frames]
    times = frames * HOP / SAMPLE_RATE
    sweep, wobble = 0.0, 0.0
    if len(frames) >= 3:
        slope, intercept = np.polyfit(times, track, 1, w=np.sqrt(weights))
        sweep = slope * (times[-1] - times[0])
        wobble = float(np.sqrt(np.average((track - (slope * times + intercept)) ** 2, weights=weights)))

    return SegmentFeatures(
        onset=first_frame * HOP / SAMPLE_RATE,
        offset=(first_frame + len(power)) * HOP / SAMPLE_RATE,
        low_share=float(spectrum[freqs < 700].sum() / total),
        centroid_hz=float(2 ** (spectrum @ log_freqs / total)),
        tonality=float(tonality),
        sweep_octaves=float(sweep),
        wobble_octaves=wobble,
    )
