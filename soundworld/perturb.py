"""Perturbed prompts for preference pairs: Tango 2's concept and temporal strategies.

    python -m soundworld.perturb "A dog barks, then a car passes by"
    python -m soundworld.perturb "a hiss then two knocks" --seed 3 --strategies temporal

Tango 2 (Majumder et al. 2024) built Audio-Alpaca's (chosen, rejected) pairs three ways:

1. ``inference``: several clips of the same prompt, the best- and worst-scored paired;
2. ``perturbed``: the rejected clip is generated from a prompt whose *concepts* changed
   (an event removed or replaced), so it misses or swaps a sound the prompt asks for;
3. ``temporal``: the rejected clip is generated from a prompt whose events come in
   another *order*, so it has the right sounds in the wrong sequence.

Strategies 2 and 3 need a perturbed prompt; the clip made from it is then scored against
the *original* prompt. This module makes those prompts (``perturb``) and reads them from
a file for real data, e.g. written by an LLM as Tango 2 did (``load_perturbations``).

Sound-world prompts (those ``soundworld.grammar.parse`` accepts) are perturbed exactly,
through the grammar, and every result parses to events that differ from the original's:

* temporal: every reordering of the events (the swap for two events, all five for three),
  written in the original's construction, so "a beep after a hiss" (hiss, beep) becomes
  "a hiss after a beep" (beep, hiss);
* perturbed: each event dropped (multi-event prompts; three events left as two keep a
  "then"), each event replaced by one type not already in the prompt, and each count
  moved one step (1 <-> 2 <-> 3, at most ``MAX_INSTANCES`` instances in all). A
  replacement keeps the count where the new type is countable; a counted event (two or
  three) is only replaced by a countable type, so that only the type changes.

``added_events`` (not among ``perturb``'s: Tango 2 removed and replaced events, never added one) puts one event of
a new type before, between and after a sound-world prompt's events: what a clip with an uninvited event is a
caption of (the preference model's pretraining contrasts, ``preference.reward.sound_world_captions``).

Splits: a replacement (or addition) never moves a prompt across the held-out line (``is_heldout`` of the
new types equals the original's), so a training prompt never yields a held-out pair of
types (dropping an event cannot create one either); and a training prompt's perturbations
are worded (redrawn up to ``WORDING_ATTEMPTS`` times, which in practice always suffices)
so that they avoid the ``test`` split's strings: training never renders a test prompt.
The seed picks only the wording and the replacement types.

Free English captions are perturbed by rule. A caption is cut into clauses at joiners:

* order joiners: "then", "and then", "followed by", "before", "after" (optionally with
  "just", "shortly", "closely", "soon" or "immediately"; ", then" and ". Then" alike);
* simultaneity joiners: "while", "as" (not "such as", "as well", "as if", "as though");
* conjunctions: "and", ",".

Temporal: the clause groups on either side of each order joiner trade places ("A before
B" -> "B before A", "A after B" -> "B after A" both change the order); the joiner stays.
"while" and "as" describe overlap, not order, so they give no temporal perturbation.
Perturbed: each clause dropped with its joiner, and each common sound source (see
``COUNTABLE_SOURCES``, ``MASS_SOURCES``) replaced by another of the same kind, in every
place it occurs, keeping number, capitalisation and "a"/"an". A clause moved off the
front of the caption is lower-cased unless its first word looks like an acronym or a
name written with inner capitals ("TV", "YouTube"); plain capitalised names cannot be
told from sentence case and are lower-cased. The result starts upper-case when the
caption did, and keeps its final punctuation.

Perturbations file (``load_perturbations``, ``save_perturbations``): JSON lines, one
original prompt per line, each strategy a list of perturbed prompts, given as a string or
as an object with ``prompt`` and an optional ``change`` (a short description); blank lines
are skipped, a prompt appears on one line only. One line, wrapped here:

    {"prompt": "A dog barks, then a car passes by", "temporal": ["A car passes by, then a dog barks"],
     "perturbed": ["A dog barks", {"prompt": "A cat barks, then a car passes by", "change": "replaced dog with cat"}]}
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from itertools import permutations
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from soundworld.grammar import MAX_INSTANCES, ParsedPrompt, PromptError, compose, in_test_split, is_heldout, parse
from soundworld.vocabulary import EVENT_TYPES, EVENTS_BY_NAME, MAX_COUNT

STRATEGIES = ("perturbed", "temporal")
WORDING_ATTEMPTS = 50

Events = tuple[tuple[str, int], ...]
_NUMBER_WORDS = {2: "two", 3: "three"}


@dataclass(frozen=True)
class Perturbation:
    """One perturbed prompt.

    Args:
        strategy: "perturbed" (a concept changed: an event dropped or replaced, a count
            changed) or "temporal" (the same events in another order).
        prompt: the perturbed prompt.
        change: a short description, e.g. "swapped 'a hiss' and 'two knocks'".
    """

    strategy: str
    prompt: str
    change: str

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {self.strategy!r}")


def perturb(prompt: str, *, seed: int = 0) -> list[Perturbation]:
    """All perturbations of ``prompt`` ("perturbed" ones first), deterministic for a seed.

    The seed only picks wordings and replacements. Sound-world prompts go through the
    grammar; any other text is treated as a free English caption (see the module docstring).

    Raises:
        ValueError: an empty prompt (no letter or digit).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a str, got {type(prompt).__name__}")
    if not re.search(r"\w", prompt):
        raise ValueError("empty prompt: nothing to perturb")
    rng = np.random.default_rng(seed)
    try:
        parsed = parse(prompt)
    except PromptError:
        return caption_perturbations(prompt, rng)
    return sound_world_perturbations(parsed, rng)


# ---------------------------------------------------------------------------------------------
# Sound-world prompts: exact, through the grammar


def sound_world_perturbations(parsed: ParsedPrompt, rng: np.random.Generator) -> list[Perturbation]:
    """Drops, replacements and count changes ("perturbed"), then reorderings ("temporal")."""
    events = parsed.events
    concept_changes = [*_drops(events), *_replacements(events, rng), *_count_changes(events)]
    return [
        *(Perturbation("perturbed", _write(changed, parsed, rng), change) for changed, change in concept_changes),
        *(Perturbation("temporal", _write(changed, parsed, rng), change) for changed, change in _reorderings(events)),
    ]


def added_events(prompt: str, *, seed: int = 0) -> list[Perturbation]:
    """A sound-world prompt with one event of another type added, at each place in time ("perturbed": a clip of it
    has an event the prompt never asked for, the commonest fault of generated clips); none for three types or a
    prompt outside the sound world. Not among ``perturb``'s: Tango 2 removed and replaced events, never added."""
    try:
        parsed = parse(prompt)
    except PromptError:
        return []
    rng = np.random.default_rng(seed)
    return [Perturbation("perturbed", _write(changed, parsed, rng), change) for changed, change in _additions(parsed.events, rng)]


def _additions(events: Events, rng: np.random.Generator) -> Iterator[tuple[Events, str]]:
    """One type (drawn by ``rng``) not in the prompt, on the same side of the held-out line, put before, between and
    after the events, within the grammar's limits."""
    types = [name for name, _ in events]
    if len(types) >= 3 or sum(count for _, count in events) >= MAX_INSTANCES:
        return
    candidates = [other for other in EVENT_TYPES if other not in types and is_heldout([*types, other]) == is_heldout(types)]
    if not candidates:
        return
    other = str(rng.choice(candidates))
    for index in range(len(events) + 1):
        yield events[:index] + ((other, 1),) + events[index:], f"added {_display(other)}"


def _drops(events: Events) -> Iterator[tuple[Events, str]]:
    if len(events) < 2:
        return
    for index, event in enumerate(events):
        yield events[:index] + events[index + 1 :], f"dropped '{_phrase(*event)}'"


def _replacements(events: Events, rng: np.random.Generator) -> Iterator[tuple[Events, str]]:
    """Each event replaced by one type (drawn by ``rng``) not in the prompt, on the same side of the held-out line."""
    types = [name for name, _ in events]
    for index, (name, count) in enumerate(events):
        candidates = [
            other
            for other in EVENT_TYPES
            if other not in types
            and is_heldout([*types[:index], other, *types[index + 1 :]]) == is_heldout(types)
            and (count == 1 or EVENTS_BY_NAME[other].countable)
        ]
        if candidates:
            other = str(rng.choice(candidates))
            replaced = events[:index] + ((other, count),) + events[index + 1 :]
            yield replaced, f"replaced {_display(name)} with {_display(other)}"


def _count_changes(events: Events) -> Iterator[tuple[Events, str]]:
    """Each countable event's count one step up and one step down, within the grammar's limits."""
    instances = sum(count for _, count in events)
    for index, (name, count) in enumerate(events):
        if not EVENTS_BY_NAME[name].countable:
            continue
        for new_count in (count - 1, count + 1):
            if 1 <= new_count <= MAX_COUNT and instances - count + new_count <= MAX_INSTANCES:
                changed = events[:index] + ((name, new_count),) + events[index + 1 :]
                yield changed, f"count of {EVENTS_BY_NAME[name].plurals[0]} {count} -> {new_count}"


def _reorderings(events: Events) -> Iterator[tuple[Events, str]]:
    """Every other order of the events."""
    for order in permutations(range(len(events))):
        reordered = tuple(events[index] for index in order)
        if reordered == events:
            continue
        moved = [index for index in range(len(events)) if reordered[index] != events[index]]
        if len(moved) == 2:
            first, second = (_phrase(*events[index]) for index in moved)
            yield reordered, f"swapped '{first}' and '{second}'"
        else:
            yield reordered, "reordered as " + ", ".join(f"'{_phrase(*event)}'" for event in reordered)


def _write(events: Events, original: ParsedPrompt, rng: np.random.Generator) -> str:
    """A prompt for ``events``, in the original's construction where it fits; a training prompt's avoids ``test``."""
    if len(events) == 1:
        construction = "single" if events[0][1] == 1 else "count"
    elif len(events) == len(original.events):
        construction = original.construction
    else:
        construction = "three_event" if len(events) == 3 else "then"
    in_training = not is_heldout(original.types) and not in_test_split(original.text)
    for _ in range(WORDING_ATTEMPTS):
        text = compose(list(events), construction, rng)
        if not (in_training and in_test_split(text)):
            break
    return text


def _phrase(name: str, count: int) -> str:
    """The canonical phrase of an event: "a knock", "two knocks"."""
    event = EVENTS_BY_NAME[name]
    return event.phrases[0] if count == 1 else f"{_NUMBER_WORDS[count]} {event.plurals[0]}"


def _display(name: str) -> str:
    return name.replace("_", " ")


# ---------------------------------------------------------------------------------------------
# Free English captions: by rule

COUNTABLE_SOURCES = {
    "dog": "dogs", "cat": "cats", "bird": "birds", "man": "men", "woman": "women", "baby": "babies",
    "child": "children", "car": "cars", "truck": "trucks", "train": "trains", "engine": "engines",
    "bell": "bells", "drum": "drums", "guitar": "guitars", "piano": "pianos", "siren": "sirens",
    "door": "doors", "phone": "phones", "horn": "horns", "clock": "clocks",
}
MASS_SOURCES = ("water", "rain", "wind", "thunder", "music", "traffic")

_MODIFIER = r"(?:(?:just|shortly|closely|soon|immediately)\s+)?"
_JOINERS = re.compile(
    rf"""(?P<order>\s*[,;.]?\s*\b(?:and\s+)?{_MODIFIER}(?:then|followed\s+by|before|after)\b\s*)
       | (?P<simultaneous>\s*[,;.]?\s*\b(?:while|(?<!such\s)(?<!well\s)as(?!\s+(?:well|if|though)\b))\b\s*)
       | (?P<conjunction>\s*,?\s*\band\b\s*|\s*,\s*)""",
    re.IGNORECASE | re.VERBOSE,
)
_SOURCE_FORMS = {
    **{singular: (singular, False) for singular in [*COUNTABLE_SOURCES, *MASS_SOURCES]},
    **{plural: (singular, True) for singular, plural in COUNTABLE_SOURCES.items()},
}
_SOURCE_PATTERN = re.compile(
    r"\b(?:(?P<article>an?)\s+)?(?P<noun>" + "|".join(sorted(_SOURCE_FORMS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Caption:
    """A caption cut at its joiners: ``clauses[i]`` and ``clauses[i + 1]`` meet at ``joiners[i]``.

    ``kinds[i]`` is "order", "simultaneous" or "conjunction". The first clause is kept in
    mid-sentence case; ``capitalised`` and ``ending`` (final punctuation) restore the whole.
    """

    clauses: tuple[str, ...]
    joiners: tuple[str, ...]
    kinds: tuple[str, ...]
    capitalised: bool
    ending: str

    def write(self, clauses: Iterable[str], joiners: Iterable[str]) -> str:
        """Clauses interleaved with joiners, as a sentence like the original caption."""
        clauses = list(clauses)
        text = clauses[0] + "".join(joiner + clause for joiner, clause in zip(joiners, clauses[1:]))
        if self.capitalised:
            text = text[0].upper() + text[1:]
        return text + self.ending


def caption_perturbations(caption: str, rng: np.random.Generator) -> list[Perturbation]:
    """Clauses dropped and sound sources replaced ("perturbed"), then clause groups swapped ("temporal")."""
    split = split_caption(caption)
    concept_changes = [*_clause_drops(split), *_source_replacements(caption, rng)]
    perturbations = [
        *(Perturbation("perturbed", text, change) for text, change in concept_changes),
        *(Perturbation("temporal", text, change) for text, change in _group_swaps(split)),
    ]
    first_of_each = {}  # repeated clauses ("a horn, then a horn") drop to the same text
    for perturbation in perturbations:
        first_of_each.setdefault((perturbation.strategy, perturbation.prompt), perturbation)
    return list(first_of_each.values())


def split_caption(caption: str) -> Caption:
    """Cut a caption into clauses at its joiners (a joiner needs a clause on each side)."""
    body = caption.strip()
    ending = re.search(r"[.!?;:]*$", body).group()
    body = body[: len(body) - len(ending)].rstrip()
    clauses, joiners, kinds, start = [], [], [], 0
    for match in _JOINERS.finditer(body):
        if not body[start : match.start()].strip() or not body[match.end() :].strip():
            continue
        clauses.append(body[start : match.start()])
        joiners.append(match.group())
        kinds.append(match.lastgroup)
        start = match.end()
    clauses.append(body[start:])
    clauses[0] = _mid_sentence(clauses[0])
    return Caption(tuple(clauses), tuple(joiners), tuple(kinds), body[:1].isupper(), ending)


def _mid_sentence(clause: str) -> str:
    """``clause`` as it reads after other words: first letter lower-cased unless an acronym or "I"."""
    first_word = clause.split()[0]
    keeps_case = first_word == "I" or first_word.startswith("I'") or any(c.isupper() for c in first_word[1:])
    return clause if keeps_case else clause[0].lower() + clause[1:]


def _clause_drops(caption: Caption) -> Iterator[tuple[str, str]]:
    """Each clause left out with the joiner that introduced it (the first with the one after it)."""
    if len(caption.clauses) < 2:
        return
    for index, clause in enumerate(caption.clauses):
        clauses = caption.clauses[:index] + caption.clauses[index + 1 :]
        joiner = max(index - 1, 0)
        joiners = caption.joiners[:joiner] + caption.joiners[joiner + 1 :]
        yield caption.write(clauses, joiners), f"dropped '{clause}'"


def _group_swaps(caption: Caption) -> Iterator[tuple[str, str]]:
    """The clause groups on either side of each order joiner, trading places."""
    groups, between = [caption.clauses[0]], []
    for joiner, kind, clause in zip(caption.joiners, caption.kinds, caption.clauses[1:]):
        if kind == "order":
            groups.append(clause)
            between.append(joiner)
        else:
            groups[-1] += joiner + clause
    for index in range(len(between)):
        swapped = [*groups[:index], groups[index + 1], groups[index], *groups[index + 2 :]]
        if swapped != groups:
            yield caption.write(swapped, between), f"swapped '{groups[index]}' and '{groups[index + 1]}'"


def _source_replacements(caption: str, rng: np.random.Generator) -> Iterator[tuple[str, str]]:
    """Each sound source named in the caption replaced everywhere by one of its kind (drawn by ``rng``) not named."""
    named = list(dict.fromkeys(_SOURCE_FORMS[match["noun"].lower()][0] for match in _SOURCE_PATTERN.finditer(caption)))
    for source in named:
        kind = MASS_SOURCES if source in MASS_SOURCES else tuple(COUNTABLE_SOURCES)
        candidates = [other for other in kind if other not in named]
        other = str(rng.choice(candidates))
        text = _SOURCE_PATTERN.sub(lambda match: _replace_source(match, source, other), caption)
        yield text, f"replaced {source} with {other}"


def _replace_source(match: re.Match, source: str, other: str) -> str:
    """``match`` (an optional article and a noun) with ``source`` swapped for ``other`` in the same number and case."""
    singular, plural = _SOURCE_FORMS[match["noun"].lower()]
    if singular != source:
        return match.group()
    noun = COUNTABLE_SOURCES[other] if plural else other
    noun = _same_case(noun, match["noun"])
    if match["article"] is None:
        return noun
    article = "an" if noun[0].lower() in "aeiou" else "a"
    return f"{_same_case(article, match['article'])} {noun}"


def _same_case(word: str, model: str) -> str:
    return word[0].upper() + word[1:] if model[0].isupper() else word


# ---------------------------------------------------------------------------------------------
# Perturbations files


def load_perturbations(path) -> dict[str, list[Perturbation]]:
    """Read a perturbations file (JSON lines; format in the module docstring): prompt -> its perturbations.

    An entry given as a plain string has an empty ``change``.

    Raises:
        ValueError: a malformed line, naming the file and line number.
    """
    table: dict[str, list[Perturbation]] = {}
    first_lines: dict[str, int] = {}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                prompt, perturbations = _parse_line(line)
                if prompt in first_lines:
                    raise ValueError(f"prompt {prompt!r} is already listed on line {first_lines[prompt]}")
            except ValueError as error:
                raise ValueError(f"{path}, line {number}: {error}") from None
            table[prompt] = perturbations
            first_lines[prompt] = number
    return table


def save_perturbations(path, table: Mapping[str, Iterable[Perturbation]]) -> None:
    """Write ``table`` (prompt -> perturbations) as a perturbations file that ``load_perturbations`` reads back."""
    lines = []
    for prompt, perturbations in table.items():
        record: dict = {"prompt": prompt}
        for perturbation in perturbations:
            entry = {"prompt": perturbation.prompt, "change": perturbation.change}
            record.setdefault(perturbation.strategy, []).append(entry)
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def _parse_line(line: str) -> tuple[str, list[Perturbation]]:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - {"prompt", *STRATEGIES})
    if unknown:
        raise ValueError(f"unknown keys {unknown}: expected 'prompt' and any of {list(STRATEGIES)}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    perturbations = []
    for strategy in STRATEGIES:
        entries = record.get(strategy, [])
        if not isinstance(entries, list):
            raise ValueError(f"{strategy!r} must be a list, got {type(entries).__name__}")
        perturbations += [_parse_entry(entry, strategy, prompt) for entry in entries]
    return prompt, perturbations


def _parse_entry(entry, strategy: str, prompt: str) -> Perturbation:
    if isinstance(entry, str):
        entry = {"prompt": entry}
    if not isinstance(entry, dict) or not set(entry) <= {"prompt", "change"}:
        raise ValueError(f"each {strategy!r} entry must be a string or an object with 'prompt' and optional 'change'")
    text, change = entry.get("prompt"), entry.get("change", "")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a {strategy!r} entry's prompt must be a non-empty string")
    if not isinstance(change, str):
        raise ValueError(f"a {strategy!r} entry's 'change' must be a string")
    if text == prompt:
        raise ValueError(f"a {strategy!r} entry equals its original prompt")
    return Perturbation(strategy, text, change)


# ---------------------------------------------------------------------------------------------
# Command line


def _strategy_list(text: str) -> tuple[str, ...]:
    chosen = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in chosen if name not in STRATEGIES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(STRATEGIES)}, got {text!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soundworld.perturb", description=__doc__.splitlines()[0])
    parser.add_argument("prompt", help="a sound-world prompt or a free English caption")
    parser.add_argument("--seed", type=int, default=0, help="picks wordings and replacements (default 0)")
    parser.add_argument("--strategies", type=_strategy_list, default=STRATEGIES,
                        help="which to print, comma-separated (default perturbed,temporal)")
    args = parser.parse_args(argv)
    try:
        perturbations = perturb(args.prompt, seed=args.seed)
    except ValueError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    for perturbation in perturbations:
        if perturbation.strategy in args.strategies:
            print(json.dumps(asdict(perturbation), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
