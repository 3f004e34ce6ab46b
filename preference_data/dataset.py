"""Preference datasets: rows written to a Hugging Face dataset folder atomically, and read back for training.

The one writer for every source of pairs (human rankings, the judge, CLAP): rows in the
project's preference schema (Audio-Alpaca's prompt/chosen/rejected/strategy, plus
provenance and vote counts) become

    <out_dir>/README.md                               dataset card: YAML configs + features, counts, agreement
    <out_dir>/data/train-00000-of-0000N.parquet       audio bytes embedded

which ``datasets.load_dataset(out_dir)`` and the Hub load as is. Parquet is written with
pyarrow under the ``datasets`` schema (``Features.arrow_schema`` carries the feature
metadata): ``Dataset.from_dict`` would need torchcodec to encode audio, and writing the
bytes needs no encoding. Audio columns are declared ``Audio(sampling_rate=16000,
decode=False)``: loading yields ``{"bytes", "path"}`` (decode with soundfile) and no
decoder library is required anywhere.

Atomic: the folder is built as a hidden sibling, then swapped in with two renames under
an OS lock; a writer killed at any point leaves the previous export in place (a swap cut
between its two renames is undone by the next writer), and a rerun succeeds.

Safe: a write replaces only a previous export. Every export folder carries a marker file
(``.tango-export``, never pushed to the Hub); a folder that is not empty and has no marker
(nor an export's exact layout, as written before the marker existed), a regular file, or a
path that is not a folder is refused with ``NotAnExport`` and left as it was.

Reading, for ``train_dpo.py`` and the preference model alike: ``load_pairs`` (a Hub id or a local folder, any
dataset with prompt/chosen/rejected columns such as declare-lab/audio-alpaca), ``decode_audio`` (a row's clip, with
``DatasetError`` for what cannot be used), ``stored_pair_latents`` (the latents the model sampled, when they are of
the model being trained) and ``split_validation`` (whole prompts held out).
"""

from __future__ import annotations

import hashlib
import re
import io
import os
import shutil
from collections import Counter
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import yaml
from datasets import Audio, Features, Value

from soundworld.vocabulary import SAMPLE_RATE

from .files import exclusive_lock, fsync_dir
from .latents import latent_from_bytes, latent_to_bytes

# How a pair was made, as in Audio-Alpaca: several inferences of the prompt, a rejected clip generated
# from a perturbed prompt (an event dropped or replaced) or from a temporally perturbed one (order
# changed), or annotators' rankings; beyond Audio-Alpaca, "reordered": one sampled clip against itself cut at
# the silences between its events and put in another order (an order contrast and nothing else). Who ranked
# goes to ``ranker`` ("random": a baseline's picks, what ranking at all is worth).
STRATEGIES = ("inference", "perturbed", "temporal", "human", "reordered")
RANKERS = ("human", "judge", "clap", "reward", "random")

FEATURES = Features({
    "prompt": Value("string"),
    "chosen": Audio(sampling_rate=SAMPLE_RATE, decode=False),
    "rejected": Audio(sampling_rate=SAMPLE_RATE, decode=False),
    "strategy": Value("string"),
    "ranker": Value("string"),
    "pair_id": Value("string"),
    "chosen_prompt": Value("string"),
    "rejected_prompt": Value("string"),
    "chosen_model": Value("string"),
    "rejected_model": Value("string"),
    "chosen_seed": Value("int64"),
    "rejected_seed": Value("int64"),
    "num_inference_steps": Value("int64"),
    "guidance_scale": Value("float64"),
    "votes_for": Value("int64"),
    "votes_against": Value("int64"),
    "annotators": Value("int64"),
    "chosen_latent": Value("binary"),
    "rejected_latent": Value("binary"),
    "latent_fingerprint": Value("string"),
})


EXPORT_MARKER = ".tango-export"  # in every folder the writer makes: the next write may replace it
CARD_SIGNATURE = "made with Tango DPO Studio"  # in every card the writer makes (exports from before the marker too)
MAX_SHARD_BYTES = 500 * 2**20  # the Hub's usual shard size
ROWS_PER_GROUP = 64  # ~80 MB row groups for 10 s float32 clips: readable in streaming


@dataclass(frozen=True)
class PreferenceRow:
    """One (chosen, rejected) pair with its provenance; audio as the bytes of 16 kHz audio files.

    ``chosen_latent`` / ``rejected_latent``: the latents the model sampled and decoded into each clip
    (``latent_fingerprint`` names that model's latent space), so that DPO trains on what was ranked;
    ``None`` for clips whose latents are unknown. ``chosen_prompt`` / ``rejected_prompt``: the prompt
    each clip was generated from, when it was not ``prompt`` (perturbed and temporal clips).
    """

    prompt: str
    chosen_wav: bytes
    rejected_wav: bytes
    strategy: str
    ranker: str
    chosen_model: str
    rejected_model: str
    chosen_seed: int
    rejected_seed: int
    num_inference_steps: int
    guidance_scale: float
    votes_for: int
    votes_against: int
    annotators: int
    chosen_prompt: str | None = None
    rejected_prompt: str | None = None
    chosen_latent: np.ndarray | None = None
    rejected_latent: np.ndarray | None = None
    latent_fingerprint: str | None = None

    @cached_property
    def chosen_sha256(self) -> str:
        return hashlib.sha256(self.chosen_wav).hexdigest()

    @cached_property
    def rejected_sha256(self) -> str:
        return hashlib.sha256(self.rejected_wav).hexdigest()

    @cached_property
    def pair_id(self) -> str:
        """Stable across exports and strategies: the prompt and both clips, in either order.

        Direction-free on purpose: the human and judge pairs over the same two clips share
        an id, so their verdicts can be joined and compared.
        """
        first, second = sorted((self.chosen_sha256, self.rejected_sha256))
        return hashlib.sha256(f"{self.prompt}\x00{first}\x00{second}".encode()).hexdigest()[:32]

    def to_record(self) -> dict:
        """The row as the dataset stores it."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.endswith(("_wav", "_latent"))}
        record["chosen_prompt"] = self.chosen_prompt or self.prompt
        record["rejected_prompt"] = self.rejected_prompt or self.prompt
        for name in ("chosen_latent", "rejected_latent"):
            latent = getattr(self, name)
            record[name] = None if latent is None else latent_to_bytes(latent)
        record["chosen"] = {"bytes": self.chosen_wav, "path": f"{self.chosen_sha256}.wav"}
        record["rejected"] = {"bytes": self.rejected_wav, "path": f"{self.rejected_sha256}.wav"}
        record["pair_id"] = self.pair_id
        return record


@dataclass(frozen=True)
class DatasetSummary:
    """What a write produced: rows, shards, a content fingerprint and rows per strategy."""

    rows: int
    shards: int
    fingerprint: str  # sha256 over the rows' pair ids and directions, in order
    strategies: dict[str, int]
    with_latents: int = 0  # rows that carry both clips' sampled latents


class EmptyDataset(ValueError):
    """No rows to write (a dataset with no rows does not load); the previous export stays."""


class NotAnExport(ValueError):
    """The output path holds something no export made: it is refused, and left as it was."""


def check_replaceable(out_dir: Path) -> None:
    """Raise ``NotAnExport`` unless ``out_dir`` is missing, an empty folder or a previous export."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise NotAnExport(f"refusing to write the export to {out_dir}: it is a file, not a folder")
    if (out_dir / EXPORT_MARKER).is_file() or _has_export_layout(out_dir) or not any(out_dir.iterdir()):
        return
    raise NotAnExport(f"refusing to write the export to {out_dir}: it holds files no export made "
                      f"(no {EXPORT_MARKER} marker); pick a new or empty folder")


def _has_export_layout(folder: Path) -> bool:
    """Exactly README.md, a card this writer made (``CARD_SIGNATURE``), and data/train-*.parquet: an export written
    before the marker existed. A hand-made dataset of the same layout has a card of its own: it is refused."""
    entries = {child.name: child for child in folder.iterdir()}
    if set(entries) != {"README.md", "data"} or not entries["README.md"].is_file() or not entries["data"].is_dir():
        return False
    if CARD_SIGNATURE not in entries["README.md"].read_text(encoding="utf-8", errors="replace"):
        return False
    return all(shard.is_file() and shard.match("train-*.parquet") for shard in entries["data"].iterdir())


def check_row(row: PreferenceRow) -> None:
    """Refuse a row that would break the schema's promises (strategy, 16 kHz audio, counts)."""
    if row.strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {row.strategy!r}")
    if row.ranker not in RANKERS:
        raise ValueError(f"`ranker` must be one of {RANKERS}, got {row.ranker!r}")
    latents = [row.chosen_latent, row.rejected_latent]
    if any(latent is not None for latent in latents):
        if any(latent is None for latent in latents) or not row.latent_fingerprint:
            raise ValueError(f"pair {row.pair_id}: latents need both clips' latents and a `latent_fingerprint`")
        if np.shape(row.chosen_latent) != np.shape(row.rejected_latent) or np.ndim(row.chosen_latent) != 3:
            raise ValueError(f"pair {row.pair_id}: latents of shapes {np.shape(row.chosen_latent)} and "
                             f"{np.shape(row.rejected_latent)}; both must be (channels, frames, bins)")
    for name in ("chosen_wav", "rejected_wav"):
        try:
            rate = sf.info(io.BytesIO(getattr(row, name))).samplerate
        except (sf.LibsndfileError, RuntimeError) as err:
            raise ValueError(f"`{name}` of pair {row.pair_id} is not an audio file: {err}") from None
        if rate != SAMPLE_RATE:
            raise ValueError(f"`{name}` of pair {row.pair_id} is {rate} Hz; the dataset is {SAMPLE_RATE} Hz")
    if min(row.votes_for, row.votes_against, row.annotators) < 0 or row.votes_for + row.votes_against > row.annotators:
        raise ValueError(f"pair {row.pair_id}: votes {row.votes_for}/{row.votes_against} from {row.annotators} annotators")


@contextmanager
def export_lock(out_dir: Path) -> Iterator[None]:
    """Held while ``out_dir`` is replaced or read as a whole (by the scheduled Hub push)."""
    out_dir = Path(out_dir).resolve()
    with exclusive_lock(out_dir.parent / f".{out_dir.name}.lock"):
        yield


def write_preference_dataset(
    rows: Iterable[PreferenceRow],
    out_dir: str | os.PathLike,
    *,
    how_made: str,
    stats: Mapping[str, object] | None = None,
    sections: Mapping[str, str] | None = None,
) -> DatasetSummary:
    """Write ``rows`` as a dataset folder at ``out_dir``, replacing any previous one atomically.

    ``rows`` is consumed once, as a stream (audio never all in memory). ``how_made``,
    ``stats`` (e.g. agreement) and ``sections`` (title -> Markdown, e.g. the verdict) go into
    the dataset card. Raises ``EmptyDataset`` when there are no rows, ``NotAnExport`` when
    ``out_dir`` holds something else than a previous export, ``ValueError`` for an invalid
    row; each time ``out_dir`` is untouched.
    """
    out_dir = Path(out_dir).resolve()
    check_replaceable(out_dir)  # before anything is created beside it
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = out_dir.parent / f".{out_dir.name}.building"
    with export_lock(out_dir):
        _finish_interrupted_swap(out_dir)
        check_replaceable(out_dir)  # again under the lock: what the swap replaces
        shutil.rmtree(building, ignore_errors=True)  # a killed writer's leftovers (we hold the lock)
        (building / "data").mkdir(parents=True)
        try:
            summary = _write_shards(rows, building / "data")
            card = dataset_card(summary, how_made=how_made, stats=stats or {}, sections=sections or {})
            with open(building / "README.md", "w", encoding="utf-8") as file:
                file.write(card)
                file.flush()
                os.fsync(file.fileno())
            (building / EXPORT_MARKER).write_text("Written by Tango DPO Studio's dataset writer: the next export "
                                                  "may replace this folder.\n", encoding="utf-8")
            fsync_dir(building / "data")
            fsync_dir(building)
            _swap_in(building, out_dir)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return summary


def _write_shards(rows: Iterable[PreferenceRow], data_dir: Path) -> DatasetSummary:
    """Stream rows into ~MAX_SHARD_BYTES parquet shards, then name them ``train-i-of-n``."""
    digest, strategies, with_latents = hashlib.sha256(), Counter(), 0
    shards = _ShardWriter(data_dir)
    try:
        for row in rows:
            check_row(row)
            shards.add(row.to_record(), len(row.chosen_wav) + len(row.rejected_wav))
            digest.update(f"{row.pair_id}:{row.chosen_sha256}\n".encode())
            strategies[row.strategy] += 1
            with_latents += row.chosen_latent is not None
    except BaseException:
        shards.abort()
        raise
    paths = shards.close()
    if not paths:
        raise EmptyDataset("no preference pairs to write: the previous export (if any) is kept")
    for i, path in enumerate(paths):
        path.rename(data_dir / f"train-{i:05d}-of-{len(paths):05d}.parquet")
    return DatasetSummary(rows=sum(strategies.values()), shards=len(paths),
                          fingerprint=digest.hexdigest(), strategies=dict(strategies),
                          with_latents=with_latents)


class _ShardWriter:
    """Parquet shards of at most ~MAX_SHARD_BYTES of audio, in row groups of ROWS_PER_GROUP rows."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.paths = data_dir, []
        self.file = self.writer = None
        self.shard_bytes, self.pending = 0, []

    def add(self, record: dict, size: int) -> None:
        if self.writer is None or self.shard_bytes + size > MAX_SHARD_BYTES:
            self._finish_shard()
            self.paths.append(self.data_dir / f"train-{len(self.paths):05d}.parquet")
            self.file = open(self.paths[-1], "wb")
            self.writer, self.shard_bytes = pq.ParquetWriter(self.file, FEATURES.arrow_schema), 0
        self.pending.append(record)
        self.shard_bytes += size
        if len(self.pending) >= ROWS_PER_GROUP:
            self._flush()

    def close(self) -> list[Path]:
        """Finish the last shard (synced to disk) and return every shard written."""
        self._finish_shard()
        return self.paths

    def abort(self) -> None:
        """Drop the shard in progress (its folder is about to be deleted); never masks the error at hand."""
        if self.writer is not None:
            with suppress(Exception):
                self.writer.close()
            self.file.close()
            self.writer = self.file = None

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=FEATURES.arrow_schema))
            self.pending.clear()

    def _finish_shard(self) -> None:
        if self.writer is None:
            return
        try:
            self._flush()
            self.writer.close()
            self.file.flush()
            os.fsync(self.file.fileno())
        finally:
            self.file.close()
            self.writer = self.file = None


def _previous(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.previous"


def _swap_in(building: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``building``: old aside, new in place, old deleted."""
    previous = _previous(out_dir)
    if out_dir.exists():
        os.replace(out_dir, previous)
    os.replace(building, out_dir)
    fsync_dir(out_dir.parent)
    shutil.rmtree(previous, ignore_errors=True)


def _finish_interrupted_swap(out_dir: Path) -> None:
    """Undo or complete a swap a killed writer left between its renames."""
    previous = _previous(out_dir)
    if not previous.exists():
        return
    if out_dir.exists():
        shutil.rmtree(previous)  # the new export made it in; only the cleanup was missed
    else:
        os.replace(previous, out_dir)  # killed between the renames: the previous export returns


def dataset_card(summary: DatasetSummary, *, how_made: str, stats: Mapping[str, object],
                 sections: Mapping[str, str] | None = None) -> str:
    """README.md: YAML front matter the Hub and ``load_dataset`` read, then a human description.

    No ``configs`` entry: both find ``data/train-*`` by their default file patterns, and a card that declares
    configs makes ``datasets`` cache a local folder under its folder name and the card alone, so two exports in
    folders of the same name (or one export rewritten) would load as one. Without it the cache key holds each
    shard's path and modification time."""
    front_matter = {
        "dataset_info": {
            "features": [{"name": name, "dtype": _yaml_dtype(feature)} for name, feature in FEATURES.items()],
        },
        "task_categories": ["text-to-audio"],
        "tags": ["preference", "dpo", "audio", "tango"],
    }
    strategy_lines = "\n".join(f"| {name} | {count} |" for name, count in sorted(summary.strategies.items()))
    stat_lines = "\n".join(f"- {name}: {_format_stat(value)}" for name, value in stats.items())
    extra = "".join(f"## {title}\n\n{text}\n\n" for title, text in (sections or {}).items())
    return f"""---
{yaml.safe_dump(front_matter, sort_keys=False).rstrip()}
---

# Tango preference pairs

Text-to-audio preference pairs (prompt, chosen clip, rejected clip) for Diffusion-DPO
fine-tuning of Tango, {CARD_SIGNATURE}. Columns follow Audio-Alpaca
(`prompt`, `chosen`, `rejected`, `strategy`: `inference`, `perturbed`, `temporal` or `human`;
`reordered` where one clip is the other cut at the silences between its events and put in another order)
plus provenance: who ranked (`ranker`), the prompt each clip was generated from, the model spec
and seed behind each clip, the generation settings, and the votes behind the pair. Where known,
`chosen_latent` / `rejected_latent` hold the latents the model sampled for each clip (float32
`.npy` bytes, in the UNet's scaled latent space named by `latent_fingerprint`): `train_dpo.py`
trains on them instead of re-encoding the audio.

## How it was made

{how_made}

## Counts

{summary.rows} pairs in {summary.shards} shard(s), {summary.with_latents} with sampled latents.
Fingerprint `{summary.fingerprint[:16]}`.

| strategy | pairs |
|---|---|
{strategy_lines}

{stat_lines}

{extra}## Loading

```python
import io, soundfile as sf
from datasets import Audio, load_dataset

ds = load_dataset("<this folder or repo id>", split="train")
ds = ds.cast_column("chosen", Audio(decode=False)).cast_column("rejected", Audio(decode=False))
samples, rate = sf.read(io.BytesIO(ds[0]["chosen"]["bytes"]))  # 16 kHz mono float32
```
"""


def _yaml_dtype(feature) -> object:
    if isinstance(feature, Audio):
        return {"audio": {"sampling_rate": feature.sampling_rate, "decode": feature.decode}}
    return feature.dtype


def _format_stat(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)

# -- reading a preference dataset (train_dpo.py, the preference model) ----------------------------------

MAX_AMPLITUDE = 2.0  # decoded audio beyond this is corrupt, not loud


class DatasetError(ValueError):
    """A preference dataset that cannot be trained on."""


def decode_audio(value, base_dir: Path | None) -> np.ndarray:
    """An Audio cell ({"bytes", "path"}) or a path string -> mono 16 kHz float32, checked.

    Raises ``AudioError`` for undecodable or non-finite audio and ``DatasetError`` for audio
    that decodes but cannot be right: bytes whose sha256 differs from the hash the cell's file
    name states (as ``annotate export`` names clips), or samples beyond ``MAX_AMPLITUDE``.
    """
    from pipeline.audio import AudioError, load_audio  # torch and scipy: only when audio is read

    if isinstance(value, dict) and value.get("bytes"):
        named = re.fullmatch(r"([0-9a-f]{64})\.\w+", Path(value.get("path") or "").name)
        if named and hashlib.sha256(value["bytes"]).hexdigest() != named.group(1):
            raise DatasetError("content hash mismatch: the bytes are not the clip the row names")
        waveform = load_audio(value["bytes"])
    else:
        path = value.get("path") if isinstance(value, dict) else value
        if not isinstance(path, str) or not path:
            raise AudioError("no audio bytes or path")
        path = Path(path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        waveform = load_audio(path)
    if np.abs(waveform).max(initial=0.0) > MAX_AMPLITUDE:
        raise DatasetError(f"audio amplitude above {MAX_AMPLITUDE} (corrupt samples)")
    return waveform


def load_pairs(dataset: str, split: str):
    """Load the dataset with audio left undecoded (datasets' decoder needs torchcodec)."""
    from datasets import Audio, load_dataset

    # A local export is rewritten in place (same file names); never serve it from datasets' cache.
    # (The rows are checked below, not against split sizes a card may still state from before.)
    fresh = {"download_mode": "force_redownload", "verification_mode": "no_checks"} if Path(dataset).is_dir() else {}
    try:
        ds = load_dataset(dataset, split=split, **fresh)
    except Exception as err:  # datasets raises many types; say what failed
        if has_no_rows(dataset):
            raise DatasetError(f"dataset {dataset!r} has no rows: its parquet files are empty (export some pairs "
                               f"first)") from None
        raise DatasetError(f"cannot load dataset {dataset!r} (split {split!r}): {type(err).__name__}: {err}") from None
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in ds.column_names]
    if missing:
        raise DatasetError(f"dataset {dataset!r} lacks column(s) {missing}; it has {ds.column_names}")
    for column in ("chosen", "rejected"):
        if isinstance(ds.features[column], Audio):
            ds = ds.cast_column(column, Audio(decode=False))
    return ds


def stored_pair_latents(row: dict, fingerprint: str, shape: tuple[int, int, int]) -> tuple[np.ndarray | None, str]:
    """The (2, C, T, F) float32 latents a row's model sampled for its chosen and rejected clip, when they belong to
    the latent space ``fingerprint`` names (``TangoPipeline.latent_fingerprint``) and have ``shape`` (C, T, F); else
    ``None`` and why not, in a few words (what training counts)."""
    chosen, rejected = row.get("chosen_latent"), row.get("rejected_latent")
    if chosen is None or rejected is None:
        return None, "no stored latents"
    if row.get("latent_fingerprint") != fingerprint:
        return None, "latents of another VAE"
    try:
        latents = np.stack([latent_from_bytes(chosen), latent_from_bytes(rejected)])
    except ValueError:
        return None, "unreadable stored latents"
    if latents.shape[1:] != shape:
        return None, "latents of another length"
    return latents, "stored"


def has_no_rows(dataset: str) -> bool:
    """Whether ``dataset`` is a local folder whose parquet files hold no row (datasets then fails with a generic
    DatasetGenerationError)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(Path(dataset).rglob("*.parquet")) if Path(dataset).is_dir() else []
    try:
        return bool(shards) and not any(pq.read_metadata(shard).num_rows for shard in shards)
    except (OSError, pa.ArrowException):  # unreadable: the load error says more
        return False


def split_validation(prompts: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) pair indices holding out whole prompts: a seeded ``fraction`` of the distinct
    prompts, at least one each way. No held-out pair shares its prompt with a training pair, so validation
    measures what generalises to new prompts, not pairs memorised through their prompt and shared clips."""
    if fraction <= 0:
        return list(range(len(prompts))), []
    distinct = list(dict.fromkeys(p.strip() for p in prompts))
    if len(distinct) < 2:
        raise DatasetError(f"--validation_fraction needs at least two distinct prompts; the pairs have {len(distinct)}")
    held = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    order = np.random.default_rng(seed).permutation(len(distinct))
    held_prompts = {distinct[i] for i in order[:held]}
    train = [i for i, p in enumerate(prompts) if p.strip() not in held_prompts]
    return train, [i for i, p in enumerate(prompts) if p.strip() in held_prompts]
