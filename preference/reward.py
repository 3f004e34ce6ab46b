"""A preference model learned from the votes: a few hundred human rankings become a ranker for thousands of clips.

    python -m preference.reward train    --data-dir data --base tiny --out reward-model      # the store's rankings
    python -m preference.reward train    --dataset exports/human-pairs --base tiny --out reward-model
    python -m preference.reward evaluate --model reward-model --data-dir data     # agreement with the human majority
    python -m autopairs.autorank --model tiny --ranker reward:reward-model --out pairs     # rank new candidates
    python -m preference.reward tagger   --world 6000 --out event-tagger    # sound world: an event tagger to hear through
    python -m preference.reward train    --data-dir data --tagger event-tagger --out reward-model

Every two clips of a ranking with different ranks are a comparison (``annotate.pairs.ordered_pairs``; ties say
nothing, skips and all-bad votes carry no preference, as in the export and the verdict). The model gives a clip a
reward r(prompt, clip) and is trained with the Bradley-Terry loss

    L = -log σ(r(p, better) - r(p, worse))

averaged over comparisons (each annotator's vote counts on its own: disagreement is the noise the loss expects).
Inputs are what the pipeline already computes: the clip's VAE latent of its log-mel (the mode of the posterior) and
the prompt's hidden states from the pipeline's text encoder, both frozen; a small transformer reads the audio,
the prompt's tokens attend to it, and a linear layer turns the pooled tokens into the reward. Or, with ``--tagger``
(sound world: ``python -m preference.reward tagger`` trains one on rendered timelines, ``preference.events``), it hears
the clip through an event tagger and reads one token per event type: what the clip has of it, what the prompt asks
for, how many are missing or extra. Validation holds out whole prompts, and the epoch with the lowest held-out
loss is kept.

``save_pretrained`` writes the head (``reward/``), the encoders it reads through (``tokenizer/``,
``text_encoder/``, ``vae/``) and a card (``README.md``, ``training.json``) with the data it saw and its held-out
accuracy; ``from_pretrained`` reads it back. A model is a ranker: ``model(waveforms, sample_rate, prompt)`` gives
one reward per clip, higher is better.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Mapping, Sequence

import numpy as np

from annotate.pairs import ordered_pairs, usable
from annotate.validation import InvalidInput, check_model_folder, model_load_error

if TYPE_CHECKING:
    import torch

    from annotate.store import Store

logger = logging.getLogger(__name__)

TRAINING_FILE = "training.json"


@dataclass(frozen=True)
class Comparison:
    """One annotator preferred clip ``better`` over clip ``worse`` (keys into the clips' audio) for ``prompt``."""

    prompt: str
    better: str
    worse: str


@dataclass
class Comparisons:
    """Comparisons and the audio of every clip they name (16 kHz mono float32)."""

    items: list[Comparison]
    audio: dict[str, np.ndarray]

    @property
    def prompts(self) -> list[str]:
        return list(dict.fromkeys(c.prompt for c in self.items))


@dataclass
class CaptionGroup:
    """A captioned clip and its contrasts: clips of perturbed captions (an event dropped, replaced or recounted,
    or the events reordered: ``soundworld.perturb``). Keys into ``CaptionedClips.audio``."""

    prompt: str
    clip: str
    contrasts: list[tuple[str, str]]  # (perturbed prompt, its clip)


@dataclass
class CaptionedClips:
    """What an audio-text encoder is pretrained on before any ranking: captioned audio, as CLAP was."""

    groups: list[CaptionGroup]
    audio: dict[str, np.ndarray]

    @property
    def prompts(self) -> list[str]:
        return list(dict.fromkeys(g.prompt for g in self.groups))


def sound_world_captions(n: int, *, contrasts: int = 3, seed: int = 0, through=None, through_share: float = 1.0,
                         exclude: Collection[str] = (), added_event: bool = False) -> CaptionedClips:
    """``n`` training-split prompts of the sound world rendered (the kind of captioned clips the generator was
    trained on), each with clips of up to ``contrasts`` of its perturbations, a reordering first where there is
    one, then with ``added_event`` one with an event added (``soundworld.perturb.added_events``: what generated clips
    get wrong most, an event nobody asked for); the prompts in ``exclude`` (those a model will be evaluated on) are
    left out. Only the renderer and the prompts' own words are used: no judge. ``through`` (a ``TangoPipeline``)
    passes clips (a random ``through_share`` of them) through that pipeline's VAE and vocoder, so that they carry
    the artifacts of the clips it generates, which the model will rank (``round_trip``)."""
    from pipeline.audio import round_trip
    from soundworld import render, sample_prompts
    from soundworld.perturb import added_events, perturb

    rng = np.random.default_rng(seed)
    groups, audio = [], {}

    def clip(prompt: str) -> str:
        key = f"w{len(audio)}"
        audio[key] = render(prompt, seed=int(rng.integers(2**31)))[0]
        return key

    for prompt in dict.fromkeys(sample_prompts("train", n, seed)):
        if prompt in exclude:
            continue
        options = perturb(prompt, seed=int(rng.integers(2**31)))
        first = [p for p in options if p.strategy == "temporal"][:1]
        if added_event:
            added = added_events(prompt, seed=int(rng.integers(2**31)))
            first += [added[rng.integers(len(added))]] if added else []
        others = [p for p in options if p not in first]
        chosen = (first + [others[i] for i in rng.permutation(len(others))])[:contrasts]
        groups.append(CaptionGroup(prompt, clip(prompt), [(p.prompt, clip(p.prompt)) for p in chosen]))
    if through is not None:
        keys = [key for key in audio if rng.random() < through_share]
        for start in range(0, len(keys), 4):  # Griffin-Lim is no faster per clip in larger batches on a CPU
            batch = keys[start:start + 4]
            audio.update(zip(batch, round_trip(through, [audio[key] for key in batch])))
    return CaptionedClips(groups, audio)


def comparisons_from_rankings(rankings, prompt_of_task: Mapping[int, str]) -> list[Comparison]:
    """Every (better, worse) of every usable ranking, each vote on its own."""
    return [Comparison(prompt_of_task[ranking.task_id], better, worse)
            for ranking in rankings if usable(ranking) for better, worse in ordered_pairs(ranking.ranks)]


def comparisons_from_store(store: "Store", *, majority: bool = False) -> Comparisons:
    """The store's human rankings (gold tasks included: they are real votes) as comparisons: every vote on its own
    (for training), or with ``majority`` one per pair of clips, the majority's preference (for agreement with the
    human majority; ties across annotators say nothing)."""
    from pipeline.audio import load_audio

    from annotate.pairs import aggregate_pairs

    rankings = store.rankings()
    clips = store.candidates({clip_id for ranking in rankings for clip_id in ranking.ranks})
    if majority:
        items = [Comparison(clips[pair.chosen].prompt, pair.chosen, pair.rejected) for pair in aggregate_pairs(rankings)]
    else:
        prompt_of_task = {ranking.task_id: clips[next(iter(ranking.ranks))].prompt for ranking in rankings}
        items = comparisons_from_rankings(rankings, prompt_of_task)
    audio = {key: load_audio(clips[key].audio_path) for key in {k for c in items for k in (c.better, c.worse)}}
    return Comparisons(items, audio)


def comparisons_from_dataset(dataset: str, split: str = "train") -> Comparisons:
    """An exported preference dataset (Audio-Alpaca's columns; a folder or Hub id): each row is one comparison,
    chosen over rejected. Rows whose audio cannot be read are left out (with a warning), as ``train_dpo.py`` does."""
    from pipeline.audio import AudioError
    from preference_data.dataset import DatasetError, decode_audio, load_pairs

    try:
        rows = load_pairs(dataset, split)
    except DatasetError as err:
        raise InvalidInput(str(err)) from None
    base_dir = Path(dataset) if Path(dataset).is_dir() else None
    items, audio, bad = [], {}, 0
    for row in rows:
        try:
            clips = [decode_audio(row[column], base_dir) for column in ("chosen", "rejected")]
        except (AudioError, DatasetError) as err:
            bad += 1
            logger.warning("left out a row of %s: %s", dataset, err)
            continue
        keys = [hashlib.sha256(clip.tobytes()).hexdigest()[:16] for clip in clips]
        audio.update(zip(keys, clips))
        items.append(Comparison(row["prompt"], *keys))
    if not items:
        raise InvalidInput(f"{dataset}: no preference pairs to learn from ({bad} unreadable row(s))")
    return Comparisons(items, audio)


def _sinusoids(length: int, width: int) -> "torch.Tensor":
    import torch

    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10_000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return table


def _head_class():
    """The head's class, defined on first use: torch and diffusers load only when a model is built."""
    global PreferenceHead
    if "PreferenceHead" in globals():
        return PreferenceHead
    import torch
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from torch import nn

    class PreferenceHead(ModelMixin, ConfigMixin):
        """r(prompt, clip): the audio latents through a small transformer; the prompt's tokens attend to them."""

        @register_to_config
        def __init__(self, audio_dim: int = 128, text_dim: int = 64, width: int = 128, heads: int = 4,
                     audio_layers: int = 2, text_layers: int = 2, dropout: float = 0.1):
            super().__init__()
            self.audio_in = nn.Linear(audio_dim, width)
            self.text_in = nn.Linear(text_dim, width)
            layer = dict(d_model=width, nhead=heads, dim_feedforward=2 * width, dropout=dropout, batch_first=True,
                         norm_first=True)
            self.audio_encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), audio_layers,
                                                       enable_nested_tensor=False)
            self.text_decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), text_layers)
            self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))

        def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor, text: torch.Tensor,
                    text_mask: torch.Tensor, audio_index: torch.Tensor | None = None) -> torch.Tensor:
            """audio (A, frames, audio_dim), text (B, tokens, text_dim); masks True where valid; text b is scored
            against audio ``audio_index[b]`` (default b: A = B), so a clip scored with several prompts is
            encoded once. Returns (B,)."""
            hidden = self.audio_in(audio) + _sinusoids(audio.shape[1], self.config.width).to(audio)
            hidden = self.audio_encoder(hidden, src_key_padding_mask=~audio_mask)
            if audio_index is not None:
                hidden, audio_mask = hidden[audio_index], audio_mask[audio_index]
            tokens = self.text_decoder(self.text_in(text), hidden, tgt_key_padding_mask=~text_mask,
                                       memory_key_padding_mask=~audio_mask)
            weights = text_mask.unsqueeze(-1).to(tokens)
            return self.out((tokens * weights).sum(1) / weights.sum(1)).squeeze(-1)

    globals()["PreferenceHead"] = PreferenceHead
    return PreferenceHead


@dataclass
class TrainingReport:
    """What the model saw and how well it does on prompts it never saw; written to ``training.json``."""

    base: str
    source: str
    comparisons: int
    prompts: int
    validation_prompts: int
    epochs_run: int
    best_epoch: int
    validation_loss: float | None
    validation_accuracy: float | None
    trained_at: str
    seconds: float
    history: list[dict] = field(default_factory=list)
    evaluations: dict = field(default_factory=dict)  # name -> evaluate() result, e.g. against the judge
    pretrained_on: str = ""  # the captioned clips its head learned from before these comparisons, if any
    reads_through: str = ""  # the event tagger it hears clips through (``preference.events``), if any


class PreferenceModel:
    """Frozen encoders and a trained head; a ranker (``name`` is ``"reward"``). The encoders are the pipeline's
    VAE and text encoder (a ``PreferenceHead`` over the clip's latent frames and the prompt's tokens) or, with a
    ``tagger`` (``preference.events.EventTagger``), what it hears per event type and what the prompt asks for
    (an ``EventPreferenceHead``; no VAE)."""

    name = "reward"

    def __init__(self, head, tokenizer, text_encoder, vae=None, report: TrainingReport | None = None, tagger=None):
        self.head, self.tokenizer, self.text_encoder = head.eval(), tokenizer, text_encoder.eval()
        self.vae = None if vae is None else vae.eval()
        self.tagger = None if tagger is None else tagger.eval()
        self.report = report

    @property
    def identity(self) -> str:
        """Who scored, as the store records it: a digest of the head's weights (a retrained model is another
        scorer) and of the frozen encoders' configurations (hashing their weights would take seconds for Tango's)."""
        import hashlib

        digest = hashlib.sha256()
        for module in (self.text_encoder, self.vae):
            if module is not None:
                digest.update(repr(module.config).encode())
        weights = list(self.head.state_dict().items())
        weights += [] if self.tagger is None else [(f"tagger.{k}", v) for k, v in self.tagger.state_dict().items()]
        for name, tensor in weights:
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return f"reward:{digest.hexdigest()[:16]}"

    @classmethod
    def untrained(cls, base: str = "tiny", tagger=None, **head_config) -> "PreferenceModel":
        """A fresh head over the encoders of the pipeline ``base`` names (a spec or a folder), or over ``tagger``
        (an ``EventTagger`` that reads ``base``'s text encoder)."""
        from pipeline import load_pipeline

        pipe = load_pipeline(base, device="cpu", dtype=None)
        if tagger is not None:
            from .events import EventPreferenceHead

            if tagger.config.text_dim != pipe.text_encoder.config.d_model:
                raise InvalidInput(f"the event tagger reads a {tagger.config.text_dim}-wide text encoder, {base}'s is "
                                   f"{pipe.text_encoder.config.d_model}: train the tagger with --base {base}")
            head = EventPreferenceHead(audio_dim=tagger.audio_dim, text_dim=tagger.text_features_dim,
                                       n_types=len(tagger.config.event_types), **head_config)
            return cls(head, pipe.tokenizer, pipe.text_encoder, tagger=tagger)
        audio_dim = pipe.vae.config.latent_channels * pipe.latent_mel_bins
        head = _head_class()(audio_dim=audio_dim, text_dim=pipe.text_encoder.config.d_model, **head_config)
        return cls(head, pipe.tokenizer, pipe.text_encoder, pipe.vae)

    # -- features -------------------------------------------------------------------------

    def audio_features(self, waveform: np.ndarray) -> "torch.Tensor":
        """A 16 kHz clip as the head reads it: its VAE latent (mode of the posterior, times the scaling factor) as
        (frames, channels x bins), or with a tagger what it hears of each event type (types, features)."""
        if self.tagger is not None:
            from .events import log_mel

            return self.tagger.audio_events(log_mel([waveform]))[0]
        from pipeline.audio import mode_latents

        return mode_latents(self.vae, [waveform])[0].permute(1, 0, 2).flatten(1)

    def text_features(self, prompt: str) -> "torch.Tensor":
        """The prompt's hidden states from the pipeline's text encoder, (tokens, width), or with a tagger what it
        asks for of each event type (types, features)."""
        from .events import prompt_hidden_states

        hidden = prompt_hidden_states(self.tokenizer, self.text_encoder, prompt)
        return hidden if self.tagger is None else self.tagger.prompt_events(hidden)

    def rewards(self, audio: Sequence["torch.Tensor"], text: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """r for each (audio features, text features), batched with padding masks."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        slot = {}  # a clip named more than once (the same tensor) is encoded once
        clips = [slot.setdefault(id(a), (len(slot), a))[0] for a in audio]
        unique = [a for _, a in slot.values()]
        audio_mask = pad_sequence([torch.ones(len(a), dtype=torch.bool) for a in unique], batch_first=True)
        text_mask = pad_sequence([torch.ones(len(t), dtype=torch.bool) for t in text], batch_first=True)
        return self.head(pad_sequence(unique, batch_first=True), audio_mask, pad_sequence(list(text), batch_first=True),
                         text_mask, torch.tensor(clips))

    # -- a ranker -------------------------------------------------------------------------

    def __call__(self, waveforms: np.ndarray, sample_rate: int, prompt: str) -> list[float]:
        import torch

        from pipeline.audio import as_mono_16k

        audio = [self.audio_features(as_mono_16k(np.asarray(w, np.float32), sample_rate)) for w in waveforms]
        text = self.text_features(prompt)
        with torch.no_grad():
            return [float(r) for r in self.rewards(audio, [text] * len(audio))]

    # -- saving ---------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.head.save_pretrained(folder / "reward")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        if self.tagger is not None:
            self.tagger.save_pretrained(folder / "tagger")
        else:
            self.vae.save_pretrained(folder / "vae")
        if self.report is not None:
            (folder / TRAINING_FILE).write_text(json.dumps(asdict(self.report), indent=1) + "\n")
            (folder / "README.md").write_text(model_card(self.report))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "PreferenceModel":
        """Load a saved preference model; ``InvalidInput`` in one line naming the file for a folder that is not one,
        holds pickle weights, a malformed JSON file or a training record with unknown keys, or does not load."""
        from diffusers import AutoencoderKL
        from safetensors import SafetensorError
        from transformers import AutoTokenizer, T5EncoderModel

        folder = Path(folder)
        report = check_preference_folder(folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
            text_encoder = T5EncoderModel.from_pretrained(folder / "text_encoder")
            if (folder / "tagger").is_dir():
                from .events import EventPreferenceHead, EventTagger

                return cls(EventPreferenceHead.from_pretrained(folder / "reward"), tokenizer, text_encoder,
                           report=report, tagger=EventTagger.from_pretrained(folder / "tagger"))
            return cls(_head_class().from_pretrained(folder / "reward"), tokenizer, text_encoder,
                       AutoencoderKL.from_pretrained(folder / "vae"), report)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as err:
            raise model_load_error(folder, "a preference model", err) from None


def check_preference_folder(folder: str | Path) -> TrainingReport | None:
    """The training record of a saved preference model, once the folder is known to be one that loads only checked
    JSON and safetensors; ``InvalidInput`` in one line naming the file otherwise (a planted or damaged folder is
    refused before anything loads)."""
    folder = Path(folder)
    if not (folder / "reward" / "config.json").is_file():
        raise InvalidInput(f"{folder} is not a preference model folder (no reward/config.json): train one with "
                           "`python -m preference.reward train`")
    return check_model_folder(folder, "preference model", {TRAINING_FILE: TrainingReport}).get(TRAINING_FILE)


def model_card(report: TrainingReport) -> str:
    evaluations = "".join(
        f"| {name} | {result['pairs']} | {result['accuracy']:.3f} [{result['interval'][0]:.3f}, "
        f"{result['interval'][1]:.3f}] |\n" for name, result in report.evaluations.items())
    return (f"# Preference model\n\nBradley-Terry reward r(prompt, clip) over the frozen encoders of `{report.base}` "
            f"(`preference.reward`).\n\n- Data: {report.comparisons} comparisons on {report.prompts} prompts from "
            f"{report.source}\n"
            + (f"- Pretrained on: {report.pretrained_on}\n" if report.pretrained_on else "")
            + (f"- Hears clips through: {report.reads_through}\n" if report.reads_through else "")
            + f"- Validation: {report.validation_prompts} held-out prompts; best epoch "
            f"{report.best_epoch} of {report.epochs_run}, loss {report.validation_loss}, pair accuracy "
            f"{report.validation_accuracy}\n- Trained {report.trained_at} in {report.seconds:.0f} s\n\n"
            + (f"| evaluation | pairs | accuracy [95 %] |\n|---|---|---|\n{evaluations}" if evaluations else ""))


# -- training and evaluation ------------------------------------------------------------------


def _featurize(model: PreferenceModel, audio: Mapping[str, np.ndarray], keys, prompts, progress: bool = True):
    """Features of the clips ``keys`` (of ``audio``) and of ``prompts``."""
    from tqdm.auto import tqdm

    features = {key: model.audio_features(audio[key]) for key in tqdm(sorted(set(keys)), desc="audio features",
                                                                      disable=not progress)}
    return features, {prompt: model.text_features(prompt) for prompt in dict.fromkeys(prompts)}


def _featurize_comparisons(model: PreferenceModel, comparisons: Comparisons, progress: bool = True):
    keys = [key for c in comparisons.items for key in (c.better, c.worse)]
    return _featurize(model, comparisons.audio, keys, comparisons.prompts, progress)


def _all_margins(model: PreferenceModel, items: Sequence[Comparison], audio, text, batch_size: int = 256):
    """r(better) - r(worse) of every comparison, without gradients, in batches."""
    import torch

    with torch.no_grad():
        return torch.cat([_margins(model, items[start:start + batch_size], audio, text)
                          for start in range(0, len(items), batch_size)])


def _correct(margins: "torch.Tensor") -> "torch.Tensor":
    """1 where the better clip gets the higher reward, a half for a tie."""
    return (margins > 0).float() + 0.5 * (margins == 0).float()


def _margins(model: PreferenceModel, batch: Sequence[Comparison], audio, text) -> "torch.Tensor":
    rewards = model.rewards([audio[c.better] for c in batch] + [audio[c.worse] for c in batch],
                            [text[c.prompt] for c in batch] * 2)
    return rewards[:len(batch)] - rewards[len(batch):]


def caption_contrast_loss(own: "torch.Tensor", by_clip: "torch.Tensor", by_caption: "torch.Tensor") -> "torch.Tensor":
    """Pretraining loss of each captioned clip c of caption p, against clips c_j of its perturbed captions p_j
    and against those captions for the clip itself:

        L = -log softmax([r(p, c), r(p, c_1), ..., r(p, c_m)])_0 - log softmax([r(p, c), r(p_1, c), ..., r(p_m, c)])_0

    ``own`` (B,) is r(p, c); ``by_clip`` and ``by_caption`` (B, m) are r(p, c_j) and r(p_j, c), -inf where a
    group has fewer than m contrasts. Returns (B,)."""
    import torch

    def cross_entropy(contrasts):
        return torch.logsumexp(torch.cat([own[:, None], contrasts], 1), 1) - own

    return cross_entropy(by_clip) + cross_entropy(by_caption)


def _fit(model: PreferenceModel, train_items: list, held_items: list, batch_loss, *, epochs: int, batch_size: int,
         learning_rate: float, weight_decay: float, patience: int, seed: int, progress: bool):
    """Train ``model.head`` on ``batch_loss(items) -> (mean loss, per-item correctness)``; keep the epoch with the
    lowest held-out loss. Returns (history, best epoch, its loss, its accuracy), the last three None without
    held-out items."""
    import copy

    import torch

    optimizer = torch.optim.AdamW(model.head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    history, best = [], (math.inf, None, None, None)  # loss, epoch, accuracy, state
    for epoch in range(1, epochs + 1):
        model.head.train()
        order = rng.permutation(len(train_items))
        running = 0.0
        for start in range(0, len(order), batch_size):
            batch = [train_items[i] for i in order[start:start + batch_size]]
            loss, _ = batch_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.head.parameters(), 1.0)
            optimizer.step()
            running += loss.item() * len(batch)
        model.head.eval()
        record = {"epoch": epoch, "train_loss": round(running / len(train_items), 4)}
        if held_items:
            with torch.no_grad():
                results = [batch_loss(held_items[i:i + 256]) for i in range(0, len(held_items), 256)]
            held_loss = sum(float(loss) * len(correct) for loss, correct in results) / len(held_items)
            held_accuracy = float(torch.cat([correct for _, correct in results]).mean())
            record.update(validation_loss=round(held_loss, 4), validation_accuracy=round(held_accuracy, 4))
            if held_loss < best[0]:
                best = (held_loss, epoch, held_accuracy, copy.deepcopy(model.head.state_dict()))
        history.append(record)
        if progress:
            print(json.dumps(record), flush=True)
        if held_items and epoch - best[1] >= patience:
            break
    if best[3] is not None:
        model.head.load_state_dict(best[3])
    return history, best[1], None if best[1] is None else round(best[0], 4), None if best[1] is None else round(best[2], 4)


def _starting_model(base: str, init: "PreferenceModel | str | Path | None", head_config: dict,
                    tagger=None) -> PreferenceModel:
    """A fresh head over ``base``'s encoders (or over ``tagger``), or a copy of ``init`` (a model or its folder)
    to go on from."""
    import copy

    if init is None:
        return PreferenceModel.untrained(base, tagger=tagger, **head_config)
    if head_config or tagger is not None:
        raise ValueError("a model trained on from `init` keeps its head's size and encoders; leave out the head "
                         "settings and the tagger")
    init = PreferenceModel.from_pretrained(init) if isinstance(init, (str, Path)) else init
    return PreferenceModel(copy.deepcopy(init.head), init.tokenizer, init.text_encoder, init.vae, init.report,
                           init.tagger)


def train_preference_model(comparisons: Comparisons, *, base: str = "tiny", source: str = "", epochs: int = 40,
                           batch_size: int = 64, learning_rate: float = 3e-4, weight_decay: float = 0.01,
                           validation_fraction: float = 0.1, patience: int = 8, seed: int = 0,
                           progress: bool = True, init: "PreferenceModel | str | Path | None" = None,
                           tagger=None, reads_through: str = "", **head_config) -> PreferenceModel:
    """Fit a Bradley-Terry head on ``comparisons``; keep the epoch with the lowest loss on held-out prompts.
    ``init`` goes on from a model (e.g. ``pretrain_preference_model``'s) instead of a fresh head, whose size
    ``head_config`` sets (``width``, ``dropout``, layers: see ``PreferenceHead``); ``tagger`` (an
    ``preference.events.EventTagger``, described by ``reads_through`` on the card) makes the fresh head an
    ``EventPreferenceHead`` over what the tagger hears and reads."""
    import torch
    import torch.nn.functional as F

    from preference_data.dataset import split_validation  # whole prompts held out, as train_dpo.py validates

    if not comparisons.items:
        raise InvalidInput("no comparisons to learn from: rank some clips first (ties, skips and all-bad votes "
                           "carry no preference)")
    torch.manual_seed(seed)
    model = _starting_model(base, init, head_config, tagger)
    if init is not None and model.report is not None:  # it reads through the encoders it was pretrained with
        base, pretraining, reads_through = model.report.base, model.report.source, model.report.reads_through
    else:
        pretraining = ""
    audio, text = _featurize_comparisons(model, comparisons, progress)
    fraction = validation_fraction if len(comparisons.prompts) > 1 else 0  # one prompt: nothing to hold out
    train_index, held_index = split_validation([c.prompt for c in comparisons.items], fraction, seed)
    held_items = [comparisons.items[i] for i in held_index]

    def batch_loss(batch):
        margins = _margins(model, batch, audio, text)
        return -F.logsigmoid(margins).mean(), _correct(margins)

    started = time.perf_counter()
    history, best_epoch, loss, accuracy = _fit(
        model, [comparisons.items[i] for i in train_index], held_items, batch_loss, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay, patience=patience, seed=seed,
        progress=progress)
    model.report = TrainingReport(
        base=base, source=source, comparisons=len(comparisons.items), prompts=len(comparisons.prompts),
        validation_prompts=len({c.prompt for c in held_items}), epochs_run=len(history),
        best_epoch=best_epoch or len(history), validation_loss=loss, validation_accuracy=accuracy,
        trained_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), seconds=round(time.perf_counter() - started, 1),
        history=history, pretrained_on=pretraining, reads_through=reads_through)
    return model


def pretrain_preference_model(captions: CaptionedClips, *, base: str = "tiny", source: str = "", epochs: int = 20,
                              batch_size: int = 32, learning_rate: float = 3e-4, weight_decay: float = 0.01,
                              validation_fraction: float = 0.05, patience: int = 4, seed: int = 0,
                              progress: bool = True, **head_config) -> PreferenceModel:
    """Teach a fresh head which clip goes with which caption before it sees a ranking, as CLAP learns from
    captioned audio (and T-CLAP from reordered captions). Each group is contrasted both ways:

        L = CE([r(p, c), r(p, c_1), ..., r(p, c_m)], 0) + CE([r(p, c), r(p_1, c), ..., r(p_m, c)], 0)

    for a clip c of caption p and clips c_j of its perturbed captions p_j. The first term is what ranking clips
    for a prompt needs; the second makes the clip's own caption outscore captions that miss an event or its order.
    Validation holds out whole captions; its accuracy is the share of held-out clips that outscore all their
    contrasts for their caption. Fine-tune on rankings with ``train_preference_model(init=...)``."""
    import torch

    from preference_data.dataset import split_validation

    groups = [g for g in captions.groups if g.contrasts]
    if not groups:
        raise InvalidInput("no captioned clips with contrasts to pretrain on")
    torch.manual_seed(seed)
    model = PreferenceModel.untrained(base, **head_config)
    keys = [key for g in groups for key in (g.clip, *(clip for _, clip in g.contrasts))]
    audio, text = _featurize(model, captions.audio, keys,
                             [p for g in groups for p in (g.prompt, *(prompt for prompt, _ in g.contrasts))], progress)
    train_index, held_index = split_validation([g.prompt for g in groups], validation_fraction, seed)

    def batch_loss(batch):
        width = max(len(g.contrasts) for g in batch)
        pairs = [(g.prompt, g.clip) for g in batch]
        for g in batch:
            pairs += [(g.prompt, clip) for _, clip in g.contrasts] + [(prompt, g.clip) for prompt, _ in g.contrasts]
        rewards = model.rewards([audio[clip] for _, clip in pairs], [text[prompt] for prompt, _ in pairs])
        by_clip = torch.full((len(batch), width), -math.inf)
        by_caption = torch.full((len(batch), width), -math.inf)
        at = len(batch)
        for row, g in enumerate(batch):
            m = len(g.contrasts)
            by_clip[row, :m], by_caption[row, :m] = rewards[at:at + m], rewards[at + m:at + 2 * m]
            at += 2 * m
        own = rewards[:len(batch)]
        return caption_contrast_loss(own, by_clip, by_caption).mean(), (own[:, None] > by_clip).all(1).float()

    started = time.perf_counter()
    history, best_epoch, loss, accuracy = _fit(
        model, [groups[i] for i in train_index], [groups[i] for i in held_index], batch_loss, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay, patience=patience, seed=seed,
        progress=progress)
    model.report = TrainingReport(
        base=base, source=source or f"{len(groups)} captioned clips and {len(keys) - len(groups)} contrasts",
        comparisons=len(keys) - len(groups), prompts=len(groups), validation_prompts=len(held_index),
        epochs_run=len(history), best_epoch=best_epoch or len(history), validation_loss=loss,
        validation_accuracy=accuracy, trained_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        seconds=round(time.perf_counter() - started, 1), history=history)
    return model


def evaluate(model: PreferenceModel, comparisons: Comparisons, *, seed: int = 0, n_boot: int = 2000,
             progress: bool = False) -> dict:
    """Pair accuracy (a tie counts half) with a 95 % bootstrap interval that resamples whole prompts."""
    audio, text = _featurize_comparisons(model, comparisons, progress)
    correct = _correct(_all_margins(model, comparisons.items, audio, text)).numpy()
    prompts = comparisons.prompts
    index = {prompt: i for i, prompt in enumerate(prompts)}
    cluster = np.array([index[c.prompt] for c in comparisons.items])
    sums, counts = np.bincount(cluster, correct, len(prompts)), np.bincount(cluster, minlength=len(prompts))
    draws = np.random.default_rng(seed).integers(0, len(prompts), (n_boot, len(prompts)))
    resampled = sums[draws].sum(1) / np.maximum(counts[draws].sum(1), 1)
    return {"pairs": len(correct), "prompts": len(prompts), "accuracy": round(float(correct.mean()), 4),
            "interval": [round(float(np.percentile(resampled, 2.5)), 4), round(float(np.percentile(resampled, 97.5)), 4)]}


# -- command line -----------------------------------------------------------------------------------


def _comparisons(args: argparse.Namespace) -> tuple[Comparisons, str]:
    """Training reads every vote; evaluation the majority's pairs (agreement with the human majority)."""
    if args.dataset:
        return comparisons_from_dataset(args.dataset), f"the dataset {args.dataset}"
    from annotate.store import Store

    store = Store.existing(args.data_dir)
    return comparisons_from_store(store, majority=args.command == "evaluate"), f"the rankings in {args.data_dir}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preference.reward", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "learn a preference model from rankings or pairs"),
                            ("evaluate", "pair accuracy of a preference model on rankings or pairs")):
        command = commands.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        source = command.add_mutually_exclusive_group(required=True)
        source.add_argument("--data-dir", help="the annotation store's folder (its human rankings)")
        source.add_argument("--dataset", help="an exported preference dataset (folder or Hub id)")
    train = commands.choices["train"]
    train.add_argument("--base", help="the pipeline whose VAE and text encoder the model reads through "
                                      "(default: tiny, or the base the --tagger was trained with)")
    encoders = train.add_mutually_exclusive_group()
    encoders.add_argument("--tagger", help="hear clips through this event tagger (written by `tagger`): the head reads "
                                        "what each event type does in the clip and what the prompt asks of it")
    train.add_argument("--out", required=True, help="folder for the model")
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--validation-fraction", type=float, default=0.1, help="share of prompts held out")
    train.add_argument("--seed", type=int, default=0)
    encoders.add_argument("--init", help="go on from this model (e.g. one written by `pretrain`) instead of a fresh head")
    train.add_argument("--learning-rate", type=float, help="default: 3e-4 for a fresh head, 1e-3 for one over --tagger, 1e-4 from --init")
    commands.choices["evaluate"].add_argument("--model", required=True, help="a folder written by `train`")
    pretrain = commands.add_parser(
        "pretrain", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="sound world: learn which clip goes with which caption from rendered clips before any ranking")
    pretrain.add_argument("--world", type=int, required=True, help="training-split captions to render")
    pretrain.add_argument("--contrasts", type=int, default=3, help="clips of perturbed captions per caption")
    pretrain.add_argument("--added-event", action="store_true",
                          help="one contrast of each caption has an event added (what generated clips get wrong most)")
    pretrain.add_argument("--base", default="tiny", help="the pipeline whose VAE and text encoder the model reads through")
    pretrain.add_argument("--out", required=True, help="folder for the model (train on rankings with --init OUT)")
    pretrain.add_argument("--epochs", type=int, default=10)
    pretrain.add_argument("--seed", type=int, default=0)
    tagger = commands.add_parser(
        "tagger", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="sound world: train an event tagger (the encoder of `train --tagger`) on rendered clips with their "
             "timelines")
    tagger.add_argument("--world", type=int, required=True, help="training-split captions to render")
    tagger.add_argument("--round-trip-share", type=float, default=1.0,
                        help="share of the clips that come a second time, through the base's VAE and vocoder")
    tagger.add_argument("--base", default="tiny", help="the pipeline whose text encoder, VAE and vocoder it uses")
    tagger.add_argument("--out", required=True, help="folder for the tagger (train on rankings with --tagger OUT)")
    tagger.add_argument("--epochs", type=int, default=3)
    tagger.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.command == "tagger":
            from pipeline import load_pipeline

            from .events import rendered_timelines, save_tagger, train_event_tagger

            pipe = load_pipeline(args.base, device="cpu")
            clips = rendered_timelines(args.world, seed=args.seed, through=pipe if args.round_trip_share else None,
                                       through_share=args.round_trip_share)
            event_tagger, report = train_event_tagger(clips, pipe.tokenizer, pipe.text_encoder, base=args.base,
                                                      round_trip_share=args.round_trip_share, epochs=args.epochs,
                                                      seed=args.seed)
            save_tagger(event_tagger, report, args.out)
            print(f"{report.summary} -> {args.out}")
            return 0
        if args.command == "pretrain":
            model = pretrain_preference_model(sound_world_captions(args.world, contrasts=args.contrasts, seed=args.seed,
                                                                   added_event=args.added_event),
                                              base=args.base, epochs=args.epochs, seed=args.seed)
            model.save_pretrained(args.out)
            print(f"pretrained on {model.report.source}; held-out captions: their clip first "
                  f"{model.report.validation_accuracy} -> {args.out}")
            return 0
        comparisons, source = _comparisons(args)
        if args.command == "train":
            event_tagger, reads_through = None, ""
            if args.tagger:
                from .events import load_tagger

                event_tagger, tagger_report = load_tagger(args.tagger)
                reads_through = tagger_report.summary if tagger_report else f"the event tagger {args.tagger}"
            base = args.base or (event_tagger.config.base if event_tagger is not None else "tiny")
            learning_rate = args.learning_rate or (1e-4 if args.init else 3e-4 if event_tagger is None else 1e-3)
            model = train_preference_model(comparisons, base=base, source=source, epochs=args.epochs,
                                           validation_fraction=args.validation_fraction, seed=args.seed,
                                           init=args.init, learning_rate=learning_rate, tagger=event_tagger,
                                           reads_through=reads_through)
            model.save_pretrained(args.out)
            report = model.report
            print(f"trained on {report.comparisons} comparisons ({report.prompts} prompts); held-out prompts: "
                  f"accuracy {report.validation_accuracy} -> {args.out}")
        else:
            result = evaluate(PreferenceModel.from_pretrained(args.model), comparisons)
            print(json.dumps(result))
    except InvalidInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
