"""Prompt grammar of the sound world: compose prompts, parse them back, split train/held-out.

Constructions (``ParsedPrompt.construction``), each with a few paraphrases:

| construction  | example                                      | temporal order |
|---------------|----------------------------------------------|----------------|
| `single`      | "a low hum", "the sound of a hiss"           | -              |
| `count`       | "three knocks", "two beeps in a row"         | -              |
| `then`        | "a hiss then two knocks", "X, then Y"        | X, Y           |
| `followed_by` | "a siren followed by a click"                | X, Y           |
| `before`      | "a buzz just before a thud"                  | X, Y           |
| `after`       | "a beep after a rising chirp"                | Y, X           |
| `three_event` | "first X, then Y, and finally Z"             | X, Y, Z        |

Countable (short) events take counts 1-3 anywhere ("two beeps then a hiss");
one prompt names each event type at most once, holds at most three event types
and at most five event instances (so that every prompt fits in a 3.84 s clip).

Held-out split. Six of the 36 unordered pairs of event types (1/6, listed in
``HELDOUT_PAIRS``) never occur together in a training prompt:

    beep + hiss, hum + rising_chirp, falling_chirp + click,
    knock + siren, buzz + beep, hiss + hum

Training prompts are every single-event and count prompt plus the multi-event
prompts whose type pairs avoid those six; held-out prompts are multi-event
prompts containing at least one of them. A held-out prompt string can therefore
never be produced by the training sampler, while every event type on its own
(and with most partners) is seen in training: held-out prompts test new
*combinations*, not new words.

Test split. As Tango is evaluated on AudioCaps test captions it never trained on,
``test`` prompts come from the training grammar but are never rendered for
training: a prompt string belongs to ``test`` when its CRC-32 is divisible by
``TEST_MODULUS`` (about one string in ten), and the training sampler skips such
strings. The three splits are fixed by these rules, not by a seed.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from pipeline.prompt_checks import prompt_check

from .vocabulary import COUNTABLE_TYPES, EVENT_TYPES, EVENT_VOCABULARY, EVENTS_BY_NAME, MAX_COUNT

CONSTRUCTIONS = ("single", "count", "then", "followed_by", "before", "after", "three_event")
SPLIT_CONSTRUCTIONS = {"train": CONSTRUCTIONS, "test": CONSTRUCTIONS, "heldout": CONSTRUCTIONS[2:]}
TEST_MODULUS = 10
HELDOUT_PAIRS: frozenset[frozenset[str]] = frozenset(
    frozenset(pair)
    for pair in [
        ("beep", "hiss"),
        ("hum", "rising_chirp"),
        ("falling_chirp", "click"),
        ("knock", "siren"),
        ("buzz", "beep"),
        ("hiss", "hum"),
    ]
)

# Paraphrases per construction; {a}, {b}, {c} are event phrases in the order written.
TEMPLATES = {
    "single": ("{a}", "the sound of {a}", "just {a}"),
    "count": ("{a}", "{a} in a row", "the sound of {a}"),
    "then": ("{a} then {b}", "{a}, then {b}", "{a} and then {b}"),
    "followed_by": ("{a} followed by {b}", "{a}, followed by {b}", "{a} closely followed by {b}"),
    "before": ("{a} before {b}", "{a} just before {b}", "{a} shortly before {b}"),
    "after": ("{a} after {b}", "{a} just after {b}", "{a} shortly after {b}"),
    "three_event": (
        "first {a}, then {b}, then {c}",
        "{a}, then {b}, then {c}",
        "first {a}, then {b}, and finally {c}",
        "{a}, followed by {b}, then {c}",
    ),
}

MAX_INSTANCES = 5
# How often a countable event in a sequence is asked for once, twice, three times.
SEQUENCE_COUNT_PROBABILITIES = (0.6, 0.25, 0.15)

_COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "1": 1, "2": 2, "3": 3}
_NUMBER_NAMES = {2: "two", 3: "three"}
_CONNECTORS = {
    ("then",): "then",
    ("and", "then"): "then",
    ("and", "finally"): "then",
    ("followed", "by"): "followed_by",
    ("closely", "followed", "by"): "followed_by",
    ("before",): "before",
    ("just", "before"): "before",
    ("shortly", "before"): "before",
    ("after",): "after",
    ("just", "after"): "after",
    ("shortly", "after"): "after",
}
_PREFIXES = (("the", "sound", "of"), ("just",), ("first",))
_IN_A_ROW = ("in", "a", "row")


def _noun_lexicon() -> dict[tuple[str, ...], tuple[str, bool]]:
    """Noun phrase words (article stripped) -> (event type, is plural)."""
    lexicon = {}
    for event in EVENT_VOCABULARY:
        for phrase in event.phrases:
            lexicon[tuple(phrase.split()[1:])] = (event.name, False)
        for phrase in event.plurals:
            lexicon[tuple(phrase.split())] = (event.name, True)
    return lexicon


_NOUNS = _noun_lexicon()
_KNOWN_WORDS = frozenset(
    word
    for phrase in [*_NOUNS, *_CONNECTORS, *_PREFIXES, _IN_A_ROW, *((w,) for w in _COUNT_WORDS)]
    for word in phrase
)


class PromptError(ValueError):
    """A prompt outside the sound-world grammar; ``word`` is the offending word, if one is to blame."""

    def __init__(self, message: str, prompt: str, word: str | None = None):
        super().__init__(f"{message} (prompt: {prompt!r})")
        self.prompt = prompt
        self.word = word


class UnknownWordError(PromptError):
    """A word the sound-world grammar does not know."""


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt and what it asks for.

    Args:
        text: the prompt as written.
        events: (event type, count) in temporal order.
        construction: one of ``CONSTRUCTIONS``.
    """

    text: str
    events: tuple[tuple[str, int], ...]
    construction: str

    @property
    def instances(self) -> list[str]:
        """Every expected event instance in temporal order: ("knock", 2) gives two entries."""
        return [name for name, count in self.events for _ in range(count)]

    @property
    def types(self) -> list[str]:
        return [name for name, _ in self.events]


def parse(text: str) -> ParsedPrompt:
    """Parse a prompt into its events (in temporal order) and its construction.

    Raises:
        UnknownWordError: a word outside the vocabulary (named in the message and ``.word``).
        PromptError: an empty prompt, or known words in an order the grammar does not allow.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}")
    # Commas and sentence punctuation carry no meaning here; hyphens and digits do.
    tokens = re.findall(r"[^\s,.;:!?]+", text.lower())
    if not tokens:
        raise PromptError("empty prompt: name at least one sound event", text)
    for token in tokens:
        if token not in _KNOWN_WORDS:
            raise UnknownWordError(f"unknown word {token!r}", text, token)

    position, prefix = 0, None
    for candidate in _PREFIXES:
        if tuple(tokens[: len(candidate)]) == candidate:
            position, prefix = len(candidate), candidate
            break

    items, connectors = [], []
    while True:
        item, position = _parse_item(tokens, position, text)
        items.append(item)
        if position == len(tokens):
            break
        connector, position = _match(_CONNECTORS, tokens, position)
        if connector is None:
            raise PromptError(
                f"expected 'then', 'followed by', 'before' or 'after' at {tokens[position]!r}", text, tokens[position]
            )
        connectors.append(connector)

    if len(items) > 3:
        raise PromptError(f"a prompt holds at most three events, got {len(items)}", text)
    if prefix == ("first",) and len(items) < 2:
        raise PromptError("'first' needs a following 'then ...'", text, "first")
    if len(items) > 2 and ({"before", "after"} & set(connectors)):
        raise PromptError("'before' and 'after' can only join two events", text)
    instances = sum(count for _, count in items)
    if instances > MAX_INSTANCES:
        raise PromptError(f"a prompt asks for at most {MAX_INSTANCES} event instances, got {instances}", text)
    types = [name for name, _ in items]
    for name in types:
        if types.count(name) > 1:
            raise PromptError(f"{name!r} is named twice: use a count instead, e.g. 'two ...'", text)

    events = tuple(reversed(items)) if connectors == ["after"] else tuple(items)
    if len(items) == 1:
        construction = "single" if items[0][1] == 1 else "count"
    elif len(items) == 2:
        construction = connectors[0]
    else:
        construction = "three_event"
    return ParsedPrompt(text, events, construction)


def vocabulary_sentence() -> str:
    """What a sound-world prompt may say, in one phrase (for the Demo's hint and for refusals)."""
    sounds = ", ".join(event.phrases[0] for event in EVENT_VOCABULARY)
    return (f"{len(EVENT_VOCABULARY)} sounds ({sounds}; each with synonyms, e.g. a dull knock, a wailing siren: "
            "the Demo lists them all), with counts (two knocks, three beeps) and order words "
            "(then, followed by, before, after, first ... then ... and finally)")


def vocabulary_markdown() -> str:
    """Every word a sound-world prompt may use, as Markdown (the Demo lists it under the prompt box): each sound with
    its synonyms (and plurals, for the sounds that can be counted), the count words and the order words. Made from
    the tables ``parse`` reads, so it lists exactly what is accepted."""
    sounds = "\n".join(
        f"- {' · '.join(event.phrases)}" + (f" (counted: two {event.plurals[0]}, three {event.plurals[-1]}, ...)"
                                            if event.countable else " (not counted)")
        for event in EVENT_VOCABULARY)
    counts = ", ".join(word for word in _COUNT_WORDS if not word.isdigit())
    orders = " · ".join(" ".join(connector) for connector in _CONNECTORS)
    return (f"**Sounds** ({len(EVENT_VOCABULARY)}, each with its synonyms):\n{sounds}\n\n"
            f"**Counts**: {counts} (or 1, 2, 3), up to {MAX_COUNT}; \"{' '.join(_IN_A_ROW)}\" after a count.  \n"
            f"**Order words**: {orders}; \"first ..., then ..., and finally ...\" for three sounds.  \n"
            f"**Openings**: {' · '.join(' '.join(prefix) for prefix in _PREFIXES)}.  \n"
            "Any other word (\"loud\", \"dog\") is refused.")


@prompt_check  # the embedded models name it in their model_index.json
def why_unreadable(text: str) -> str | None:
    """Why the sound-world models cannot read ``text`` (the word or order to blame, and what they know), or
    None when the grammar parses it. The one check wherever a sound-world model is asked to generate."""
    try:
        parse(text)
    except PromptError as err:
        return (f"{err}. The embedded sound-world models know only {vocabulary_sentence()}, "
                'e.g. "a hiss then two knocks"')
    return None


def parse_prompt(text: str) -> list[tuple[str, int]]:
    """The (event type, count) pairs a prompt asks for, in temporal order. Errors as in ``parse``."""
    return list(parse(text).events)


def _match(table: dict, tokens: list[str], position: int):
    """Longest key of ``table`` (a tuple of words) starting at ``position``: (value, next position)."""
    longest = max(len(key) for key in table)
    for length in range(min(longest, len(tokens) - position), 0, -1):
        key = tuple(tokens[position : position + length])
        if key in table:
            return table[key], position + length
    return None, position


def _parse_item(tokens: list[str], position: int, text: str) -> tuple[tuple[str, int], int]:
    """One event phrase ("a hiss", "three knocks in a row") starting at ``position``."""
    if position == len(tokens):
        raise PromptError("expected a sound event at the end", text)
    count = _COUNT_WORDS.get(tokens[position])
    if count is not None:
        position += 1
    noun, after_noun = _match(_NOUNS, tokens, position)
    if noun is None:
        word = tokens[position] if position < len(tokens) else tokens[-1]
        raise PromptError(f"expected a sound event at {word!r}", text, word)
    name, plural = noun
    if count is None:
        count = 1
    if count > 1 and not plural:
        raise PromptError(f"a count of {count} needs a plural, got {tokens[position]!r}", text, tokens[position])
    if count == 1 and plural:
        raise PromptError(f"{' '.join(tokens[position:after_noun])!r} is plural: say how many", text)
    position = after_noun
    if tuple(tokens[position : position + 3]) == _IN_A_ROW:
        if count == 1:
            raise PromptError("'in a row' needs a count of two or three", text, "row")
        position += 3
    return (name, count), position


# ---------------------------------------------------------------------------------------------
# Sampling


def pair_set(types) -> set[frozenset[str]]:
    """Unordered pairs of distinct event types that occur together in one prompt."""
    return {frozenset(pair) for pair in combinations(sorted(set(types)), 2)}


def is_heldout(types) -> bool:
    """Whether a prompt with these event types belongs to the held-out split."""
    return bool(pair_set(types) & HELDOUT_PAIRS)


def in_test_split(text: str) -> bool:
    """Whether a training-grammar prompt string is kept out of training for the ``test`` split."""
    return zlib.crc32(text.encode()) % TEST_MODULUS == 0


def sample_prompt_specs(split: str, n: int, seed: int) -> list[ParsedPrompt]:
    """``n`` prompts of a split with what each asks for; deterministic for (split, n, seed).

    Constructions are balanced: each of the split's constructions gets ``n / k``
    prompts (give or take one), in shuffled order.
    """
    if split not in SPLIT_CONSTRUCTIONS:
        raise ValueError(f"`split` must be one of {sorted(SPLIT_CONSTRUCTIONS)}, got {split!r}")
    if n < 0:
        raise ValueError(f"`n` must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    constructions = SPLIT_CONSTRUCTIONS[split]
    kinds = [constructions[i % len(constructions)] for i in rng.permutation(n)]
    return [_sample_in_split(kind, split, rng) for kind in kinds]


def _sample_in_split(construction: str, split: str, rng: np.random.Generator) -> ParsedPrompt:
    if split == "heldout":
        return _sample_prompt(construction, split, rng)
    while True:  # train and test share the grammar and split its strings
        spec = _sample_prompt(construction, "train", rng)
        if in_test_split(spec.text) == (split == "test"):
            return spec


def sample_prompts(split: str, n: int, seed: int) -> list[str]:
    """``n`` prompt strings of a split ("train", "test" or "heldout"); deterministic for (split, n, seed)."""
    return [spec.text for spec in sample_prompt_specs(split, n, seed)]


def compose(events: list[tuple[str, int]], construction: str, rng: np.random.Generator) -> str:
    """Write a prompt for ``events`` (temporal order) in ``construction``, with random wording."""
    phrases = [_event_phrase(name, count, rng) for name, count in events]
    if construction == "after":
        phrases.reverse()
    templates = TEMPLATES[construction]
    template = templates[rng.integers(len(templates))]
    return template.format(**dict(zip("abc", phrases)))


def _event_phrase(name: str, count: int, rng: np.random.Generator) -> str:
    event = EVENTS_BY_NAME[name]
    choice = rng.integers(len(event.phrases))
    return event.phrases[choice] if count == 1 else f"{_NUMBER_NAMES[count]} {event.plurals[choice]}"


def _sample_prompt(construction: str, split: str, rng: np.random.Generator) -> ParsedPrompt:
    if construction == "single":
        events = [(str(rng.choice(EVENT_TYPES)), 1)]
    elif construction == "count":
        events = [(str(rng.choice(COUNTABLE_TYPES)), int(rng.integers(2, MAX_COUNT + 1)))]
    else:
        types = _sample_types(3 if construction == "three_event" else 2, split, rng)
        events = [(name, _sample_count(name, rng)) for name in types]
        while sum(count for _, count in events) > MAX_INSTANCES:
            events = [(name, _sample_count(name, rng)) for name in types]
    return ParsedPrompt(compose(events, construction, rng), tuple(events), construction)


def _sample_types(k: int, split: str, rng: np.random.Generator) -> list[str]:
    """``k`` distinct event types in random order whose pairs respect the split."""
    if split == "heldout":
        pairs = sorted(sorted(pair) for pair in HELDOUT_PAIRS)
        chosen = pairs[rng.integers(len(pairs))]
        others = [name for name in EVENT_TYPES if name not in chosen]
        types = chosen + [str(name) for name in rng.choice(others, k - 2, replace=False)]
        return [types[i] for i in rng.permutation(k)]
    while True:
        types = [str(name) for name in rng.choice(EVENT_TYPES, k, replace=False)]
        if not is_heldout(types):
            return types


def _sample_count(name: str, rng: np.random.Generator) -> int:
    if not EVENTS_BY_NAME[name].countable:
        return 1
    return int(rng.choice(np.arange(1, MAX_COUNT + 1), p=SEQUENCE_COUNT_PROBABILITIES))
