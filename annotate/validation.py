"""The errors the annotation backend raises for bad input, and the text checks behind them.

Every public entry point checks its input before it touches the database or the
disk, so a rejected call writes nothing. All errors are ``ValueError`` subclasses
whose message names the argument in backticks and echoes (a bounded repr of) the
value received, in the style of diffusers' ``check_inputs``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path

MAX_NAME_CHARS = 64
MAX_PROMPT_CHARS = 1000
MAX_SPEC_CHARS = 300
MAX_INT = 2**63 - 1  # SQLite's INTEGER
MAX_PLAY_COUNT = 10_000
MAX_COMMENT_CHARS = 2000

# Unicode categories never allowed in names or prompts: control (C0/C1, incl. newline and
# tab), format (zero-width and bidi overrides that make two names look alike), line and
# paragraph separators, surrogates and unassigned code points.
_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"}


def prompt_lines(text: str) -> list[str]:
    """The prompts of a prompts file's text: one per line, surrounding spaces dropped; blank lines and lines
    starting with ``#`` ignored (the format of ``--prompts`` and of the Dataset tab's pool box)."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class InvalidInput(ValueError):
    """An argument the annotation backend refuses; nothing was written."""


class InvalidVote(InvalidInput):
    """A vote that cannot be stored: unknown task or annotator, unassigned task, bad ranking."""


class VoteConflict(InvalidVote):
    """A second, different vote on a task the annotator already voted on (votes are insert-only)."""


class InvalidAudio(InvalidInput):
    """A clip that cannot become a candidate: unreadable, empty, not finite, wrong sample rate."""


def preview(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a huge input never floods an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def check_text(value: object, argument: str, max_chars: int, error: type[InvalidInput] = InvalidInput) -> str:
    """Return ``value`` if it is a clean single-line string of 1..``max_chars`` characters.

    Leading/trailing whitespace is refused rather than stripped, so two spellings of one
    name can never become two annotators. The length is checked before anything else
    touches the string.
    """
    if not isinstance(value, str):
        raise error(f"`{argument}` must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise error(f"`{argument}` is {len(value)} characters long; the limit is {max_chars}")
    if not value.strip():
        raise error(f"`{argument}` must not be empty, got {preview(value)}")
    if value != value.strip():
        raise error(f"`{argument}` must not start or end with whitespace, got {preview(value)}")
    bad = next((ch for ch in value if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES), None)
    if bad is not None:
        raise error(f"`{argument}` contains the control/invisible character U+{ord(bad):04X}: {preview(value)}")
    return value


def check_comment(comment: object) -> str | None:
    """A vote's optional comment: None or blank gives None; otherwise text with line breaks allowed."""
    if comment is None or (isinstance(comment, str) and not comment.strip()):
        return None
    if not isinstance(comment, str):
        raise InvalidVote(f"`comment` must be a string, got {type(comment).__name__}")
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidVote(f"`comment` is {len(comment)} characters long; the limit is {MAX_COMMENT_CHARS}")
    lines = [check_text(line.strip(), "comment", MAX_COMMENT_CHARS, InvalidVote) if line.strip() else ""
             for line in comment.strip().splitlines()]
    return "\n".join(lines)


def check_name(name: object) -> str:
    """An annotator name: a label only, never used to build a path or a query string."""
    return check_text(name, "annotator", MAX_NAME_CHARS)


def check_int(value: object, argument: str, minimum: int | None = None, error: type[InvalidInput] = InvalidInput) -> int:
    """Return ``value`` as an ``int`` if it is an integer (not a bool, not a float), >= ``minimum``, < 2**63."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise error(f"`{argument}` must be an integer, got {preview(value)}")
    number = value.__index__()
    if minimum is not None and number < minimum:
        raise error(f"`{argument}` must be >= {minimum}, got {number}")
    if number > MAX_INT:
        raise error(f"`{argument}` must fit in 64 bits, got {preview(number)}")
    return number


def check_float(value: object, argument: str, error: type[InvalidInput] = InvalidInput) -> float:
    """Return ``value`` as a finite ``float`` if it is a real number (not a bool, not a string)."""
    if isinstance(value, (bool, str, bytes)):
        raise error(f"`{argument}` must be a number, got {preview(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise error(f"`{argument}` must be a number, got {preview(value)}") from None
    if not math.isfinite(number):
        raise error(f"`{argument}` must be finite, got {number}")
    return number


def ranking_pairs(ranking: Mapping[str, int] | Iterable[tuple[str, int]] | None) -> list[tuple[object, object]]:
    """``ranking`` as (clip id, rank) pairs, accepting a mapping or a list of pairs (as a web form sends)."""
    if ranking is None:
        return []
    if isinstance(ranking, Mapping):
        return list(ranking.items())
    if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Iterable):
        raise InvalidVote(f"`ranking` must map clip ids to ranks, got {preview(ranking)}")
    pairs = []
    for item in ranking:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidVote(f"`ranking` items must be (clip id, rank) pairs, got {preview(item)}")
        pairs.append(tuple(item))
    return pairs


def check_ranking(pairs: list[tuple[object, object]], shown: list[str]) -> dict[str, int]:
    """Dense ranks for exactly the clips shown, or ``InvalidVote``."""
    ids = [clip_id for clip_id, _ in pairs]
    if not all(isinstance(clip_id, str) for clip_id in ids):
        raise InvalidVote(f"`ranking` keys must be clip id strings, got {preview(ids)}")
    if len(set(ids)) != len(ids):
        raise InvalidVote(f"`ranking` lists a clip twice: {preview(ids)}")
    if set(ids) != set(shown):
        missing, extra = sorted(set(shown) - set(ids)), sorted(set(ids) - set(shown))
        raise InvalidVote(
            f"`ranking` must rank exactly the {len(shown)} clips shown; missing {preview(missing)}, not shown {preview(extra)}"
        )
    ranks = {clip_id: check_int(rank, f"ranking[{clip_id!r}]", minimum=1, error=InvalidVote) for clip_id, rank in pairs}
    if set(ranks.values()) != set(range(1, max(ranks.values()) + 1)):
        raise InvalidVote(f"`ranking` ranks must be dense (1..n, ties allowed, no gaps), got {sorted(ranks.values())}")
    return ranks


def check_play_counts(play_counts: Mapping[str, int] | None, shown: list[str]) -> dict[str, int]:
    """Per-clip play counts (a subset of the clips shown), or ``InvalidVote``."""
    if play_counts is None:
        return {}
    if not isinstance(play_counts, Mapping):
        raise InvalidVote(f"`play_counts` must map clip ids to counts, got {preview(play_counts)}")
    unknown = [clip_id for clip_id in play_counts if clip_id not in shown]
    if unknown:
        raise InvalidVote(f"`play_counts` names clips not shown: {preview(unknown)}")
    counts = {clip_id: check_int(count, f"play_counts[{clip_id!r}]", minimum=0, error=InvalidVote)
              for clip_id, count in play_counts.items()}
    if any(count > MAX_PLAY_COUNT for count in counts.values()):
        raise InvalidVote(f"`play_counts` above {MAX_PLAY_COUNT} are not plausible: {preview(counts)}")
    return counts


# Weights stored with Python's pickle: loading one can run code, so no model folder may hold them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UnusableModelFolder(InvalidInput):
    """A model folder (a preference model, an event tagger) that cannot be loaded: the message names the file and
    what is wrong with it, in one line."""


def read_json_object(path: str | Path, error: type[InvalidInput] = InvalidInput) -> dict:
    """The JSON object in ``path``; ``error`` naming the file and what is wrong with it otherwise."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not a JSON file (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err.msg}, line {err.lineno} column {err.colno})") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def record_from_json(record_type: type, path: str | Path, error: type[InvalidInput] = InvalidInput):
    """A dataclass ``record_type`` from the JSON object in ``path``; ``error`` naming the file and the keys for an
    unknown or a missing key (a planted ``training.json`` must not end a program with a traceback)."""
    data = read_json_object(path, error)
    fields = dataclasses.fields(record_type)
    unknown = sorted(set(data) - {field.name for field in fields})
    if unknown:
        raise error(f"{path}: unknown key(s) {', '.join(map(repr, unknown[:5]))} for a {record_type.__name__} record")
    missing = [field.name for field in fields if field.name not in data
               and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]
    if missing:
        raise error(f"{path}: missing key(s) {', '.join(map(repr, missing))} of a {record_type.__name__} record")
    return record_type(**data)


def check_model_folder(folder: str | Path, what: str, records: Mapping[str, type] | None = None) -> dict:
    """Refuse (``UnusableModelFolder``, naming the file) a model folder that holds pickle weights
    (``PICKLE_SUFFIXES``), a JSON file that is not a JSON object, or a record file (``records``: file name -> its
    dataclass) with unknown or missing keys; return the records it holds, by file name. What the folder holds is
    then loaded from safetensors and checked JSON only."""
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise UnusableModelFolder(f"{path}: pickle weights are refused (loading them can run code); save the "
                                      f"{what} with safetensors")
        if path.suffix.lower() == ".json" and path.is_file():
            read_json_object(path, UnusableModelFolder)
    return {name: record_from_json(record_type, Path(folder) / name, UnusableModelFolder)
            for name, record_type in (records or {}).items() if (Path(folder) / name).is_file()}


def model_load_error(folder: str | Path, what: str, err: BaseException) -> UnusableModelFolder:
    """A loader's error on a model folder as one line naming the folder (and the file, where the loader said it)."""
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return UnusableModelFolder(f"{folder}: cannot be loaded as {what}: {first_line[:300]}")
