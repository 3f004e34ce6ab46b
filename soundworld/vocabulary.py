"""The sound world's event types: what each is called and how long it lasts.

Nine event types that differ grossly in what a 64-band mel spectrogram shows
(frequency band, sweep direction, frequency wobble, noisiness, duration), never
in fine pitch, so that a tiny text-to-audio model can learn to draw them and a
simple judge can tell them apart even in a smeared, Griffin-Lim-like vocoding:

| type            | sound                                              | duration (s) | countable |
|-----------------|----------------------------------------------------|--------------|-----------|
| `beep`          | steady sine, 2.6-3.4 kHz                           | 0.10-0.20    | yes       |
| `hum`           | 100-150 Hz tone with two weaker harmonics          | 0.50-0.75    | no        |
| `rising_chirp`  | exponential sweep ~450 Hz up to ~3.8 kHz           | 0.22-0.35    | yes       |
| `falling_chirp` | the same sweep downwards                           | 0.22-0.35    | yes       |
| `hiss`          | noise band-passed to 2.5-7 kHz                     | 0.35-0.60    | no        |
| `knock`         | damped 120-220 Hz thump with a low noise attack    | 0.06-0.09    | yes       |
| `click`         | an impulse through a 2-7 kHz band-pass            | 0.015-0.025  | yes       |
| `siren`         | sine wobbling +-250-350 Hz around ~1.25 kHz at 2-3 Hz | 0.70-0.95 | no        |
| `buzz`          | harmonic-rich tone (f0 110-160 Hz, 250 Hz-3.5 kHz) | 0.40-0.70    | no        |

Every type has a canonical noun phrase (first in ``phrases``) and synonyms; the
countable ones also have plural forms, used for counts ("three knocks"). The
synthesis itself lives in ``renderer.py``; this module is only names and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16000  # Tango's audio rate: every sound-world clip, and every clip the annotation store keeps


@dataclass(frozen=True)
class EventType:
    """One kind of sound event and the words that name it.

    Args:
        name: identifier used everywhere else (timelines, judge output).
        phrases: singular noun phrases with their article; the first is canonical.
        plurals: plural noun phrases (no count word), one per singular phrase;
            empty for uncountable types ("a hiss" has no "two hisses").
        min_seconds, max_seconds: range the renderer draws the duration from.
    """

    name: str
    phrases: tuple[str, ...]
    plurals: tuple[str, ...]
    min_seconds: float
    max_seconds: float

    def __post_init__(self):
        if self.plurals and len(self.plurals) != len(self.phrases):
            raise ValueError(f"{self.name}: give one plural per singular phrase, got {self.plurals!r}")

    @property
    def countable(self) -> bool:
        return bool(self.plurals)


EVENT_VOCABULARY: tuple[EventType, ...] = (
    EventType(
        "beep",
        ("a high beep", "a beep", "a high-pitched beep", "a short beep"),
        ("high beeps", "beeps", "high-pitched beeps", "short beeps"),
        0.10, 0.20,
    ),
    EventType("hum", ("a low hum", "a hum", "a low drone", "a humming sound"), (), 0.50, 0.75),
    EventType(
        "rising_chirp",
        ("a rising chirp", "an upward chirp", "a rising sweep"),
        ("rising chirps", "upward chirps", "rising sweeps"),
        0.22, 0.35,
    ),
    EventType(
        "falling_chirp",
        ("a falling chirp", "a downward chirp", "a falling sweep"),
        ("falling chirps", "downward chirps", "falling sweeps"),
        0.22, 0.35,
    ),
    EventType("hiss", ("a hiss", "a burst of hissing", "a hissing sound", "a burst of static"), (), 0.35, 0.60),
    EventType(
        "knock",
        ("a knock", "a knock on a door", "a dull knock", "a thud"),
        ("knocks", "knocks on a door", "dull knocks", "thuds"),
        0.06, 0.09,
    ),
    EventType(
        "click",
        ("a click", "a sharp click", "a tick"),
        ("clicks", "sharp clicks", "ticks"),
        0.015, 0.025,
    ),
    EventType("siren", ("a siren", "a wailing siren", "a siren wailing"), (), 0.70, 0.95),
    EventType("buzz", ("a buzz", "a buzzing sound", "an electric buzz"), (), 0.40, 0.70),
)

EVENT_TYPES: tuple[str, ...] = tuple(event.name for event in EVENT_VOCABULARY)
EVENTS_BY_NAME: dict[str, EventType] = {event.name: event for event in EVENT_VOCABULARY}
COUNTABLE_TYPES: tuple[str, ...] = tuple(event.name for event in EVENT_VOCABULARY if event.countable)
MAX_COUNT = 3
