"""Event-level encoders for the preference model: what a clip contains and what a prompt asks for, per event type.

A preference head over raw audio latents has to learn from a few hundred ranked prompts both how to hear events
and how people weigh them; it memorises its prompts instead (``preference.reward``: 0.71 against the judge after
1,002 rankings). Real preference models start from encoders pretrained on labelled audio (CLAP on captions, sound
event detectors on AudioSet's strong labels). ``EventTagger`` is that encoder for the sound world, trained on
rendered clips whose timelines the renderer knows (no judge, no ranking):

* audio tower: the clip's log-mel (the pipeline's own ``wav_to_fbank``) through a small CRNN to per-frame
  probabilities of each event type (a sound event detector, trained with binary cross-entropy on the timeline);
* text tower: the prompt's hidden states from the pipeline's text encoder, one attention query per event type,
  to how many of that type the prompt asks for (0, 1, 2, 3+) and where it comes in the prompt's order.

Half of the rendered clips go through the generator's VAE and vocoder first (``pipeline.audio.round_trip``) so
that the detector hears the artefacts of the clips it will rank. ``audio_events`` summarises the frame
probabilities per type (onsets, segments after a median filter, active share, centre in time, first onset) and
``prompt_events`` gives the text tower's answer per type; ``EventPreferenceHead`` reads the two as one token per
event type and learns from the rankings how missing, extra and out-of-order events weigh.

    python -m preference.reward tagger --world 3000 --out event-tagger          # render, round-trip, train
    python -m preference.reward train --data-dir data --tagger event-tagger --out reward-model
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Collection, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

TRAINING_FILE = "training.json"
AUDIO_FEATURES = ("onsets", "segments", "active_share", "centre", "first_onset")
SEGMENT_THRESHOLD = 0.5
MERGE_GAP_FRAMES = 4  # shorter dips inside an event do not split it (the renderer leaves 0.2 s between events)
MIN_EVENT_FRAMES = 2  # a one-frame flicker is not an event (a click lasts 15-25 ms: two frames or more)


class TimedClip(NamedTuple):
    """A rendered clip and its ground truth: which event type sounds when (seconds)."""

    prompt: str
    waveform: np.ndarray
    events: list[tuple[str, float, float]]


class EventTagger(ModelMixin, ConfigMixin):
    """A sound event detector over the log-mel and a prompt reader over the text encoder's hidden states."""

    @register_to_config
    def __init__(self, event_types: Sequence[str] = (), n_mels: int = 64, channels: Sequence[int] = (16, 32, 32),
                 freq_pools: Sequence[int] = (2, 2, 4), hidden: int = 64, text_dim: int = 64, text_width: int = 64,
                 max_count: int = 3, base: str = "tiny"):
        super().__init__()
        if not event_types:
            raise ValueError("an EventTagger needs the event types it detects")
        self.mel_norm = nn.BatchNorm1d(n_mels)
        layers, width = [], 1
        for out, pool in zip(channels, freq_pools):
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d((1, pool))]
            width = out
        self.convs = nn.Sequential(*layers)
        self.gru = nn.GRU(width * (n_mels // int(np.prod(freq_pools))), hidden, batch_first=True, bidirectional=True)
        self.frame_out = nn.Linear(2 * hidden, len(event_types))
        self.text_in = nn.Linear(text_dim, text_width)
        self.type_queries = nn.Parameter(torch.randn(len(event_types), text_width) / text_width ** 0.5)
        self.text_attention = nn.MultiheadAttention(text_width, 4, batch_first=True)
        self.count_out = nn.Linear(text_width, max_count + 1)
        self.position_out = nn.Linear(text_width, 1)

    @property
    def audio_dim(self) -> int:
        return len(AUDIO_FEATURES)

    @property
    def text_features_dim(self) -> int:
        return self.config.max_count + 2

    def text_parameters(self) -> list[nn.Parameter]:
        """The text tower's parameters (it trains after the detector, on the prompts alone)."""
        return [self.type_queries, *(p for m in (self.text_in, self.text_attention, self.count_out, self.position_out)
                                     for p in m.parameters())]

    def frame_logits(self, mel: torch.Tensor) -> torch.Tensor:
        """(clips, frames, mel bins) log-mel -> (clips, frames, types) logits."""
        x = self.mel_norm(mel.transpose(1, 2)).transpose(1, 2).unsqueeze(1)
        x = self.convs(x).permute(0, 2, 1, 3).flatten(2)
        return self.frame_out(self.gru(x)[0])

    def prompt_logits(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompts, tokens, text_dim) hidden states, mask True where valid -> count logits (prompts, types,
        max_count + 1) and order positions (prompts, types): the type's place among the prompt's types / 3, 0 if
        absent."""
        x = self.text_in(hidden)
        queries = self.type_queries[None].expand(len(hidden), -1, -1)
        y, _ = self.text_attention(queries, x, x, key_padding_mask=~mask)
        return self.count_out(y), self.position_out(y).squeeze(-1)

    @torch.no_grad()
    def audio_events(self, mel: torch.Tensor) -> torch.Tensor:
        """Per clip and type the ``AUDIO_FEATURES``: expected onsets (sum of rises of the probability), segments
        (runs above 0.5, dips under ``MERGE_GAP_FRAMES`` closed, runs under ``MIN_EVENT_FRAMES`` dropped), mean
        probability (the share of the clip it sounds), centre in time and first onset (0-1 of the clip; 1 where the
        type never sounds). (clips, frames, mels) -> (clips, types, 5)."""
        from scipy.ndimage import binary_closing, binary_opening

        probability = torch.sigmoid(self.frame_logits(mel))
        frames = probability.shape[1]
        onsets = probability[:, 0] + torch.relu(probability[:, 1:] - probability[:, :-1]).sum(1)
        active = (probability > SEGMENT_THRESHOLD).numpy()
        active = binary_closing(active, np.ones((1, MERGE_GAP_FRAMES + 1, 1)), border_value=0) | active
        active = torch.from_numpy(binary_opening(active, np.ones((1, MIN_EVENT_FRAMES, 1)))).to(probability)
        segments = torch.relu(torch.diff(active, dim=1, prepend=torch.zeros_like(active[:, :1]))).sum(1)
        time_axis = torch.linspace(0, 1, frames)[None, :, None]
        mass = probability.sum(1)
        centre = (probability * time_axis).sum(1) / mass.clamp(min=1e-3)
        first = torch.where(active > 0, time_axis, torch.ones(())).amin(1)
        return torch.stack([onsets, segments, mass / frames, centre, first], -1)

    @torch.no_grad()
    def prompt_events(self, hidden: torch.Tensor) -> torch.Tensor:
        """One prompt's hidden states (tokens, text_dim) -> per type the count distribution and order position,
        (types, max_count + 2)."""
        counts, positions = self.prompt_logits(hidden[None], torch.ones(1, len(hidden), dtype=torch.bool))
        return torch.cat([counts.softmax(-1)[0], positions[0, :, None]], -1)


class EventPreferenceHead(ModelMixin, ConfigMixin):
    """r(prompt, clip) over event types: one token per type (what the clip has, what the prompt asks, and the two
    compared: how many asked-for events are missing and how many are extra, expected over the prompt's count
    distribution), a small transformer across the types (order is a relation between them), a linear reward of
    the pooled tokens. How much each kind of miss weighs is learned from the rankings."""

    @register_to_config
    def __init__(self, audio_dim: int = 5, text_dim: int = 5, n_types: int = 9, width: int = 32, heads: int = 4,
                 layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.token_in = nn.Linear(audio_dim + text_dim + 2, width)
        self.type_embedding = nn.Parameter(torch.randn(n_types, width) / width ** 0.5)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                audio_index: torch.Tensor | None = None) -> torch.Tensor:
        """The ``PreferenceHead`` signature: audio (A, types, audio_dim), text (B, types, text_dim); every type is
        always there, so the masks are all True. Returns (B,)."""
        if audio_index is not None:
            audio = audio[audio_index]
        heard = audio[..., AUDIO_FEATURES.index("segments"), None]
        count_probability = text[..., :-1]  # prompt_events: the count distribution, then the order position
        asked = torch.arange(count_probability.shape[-1], dtype=audio.dtype)
        missing = (count_probability * torch.relu(asked - heard)).sum(-1, keepdim=True)
        extra = (count_probability * torch.relu(heard - asked)).sum(-1, keepdim=True)
        tokens = self.token_in(torch.cat([audio, text, missing, extra], -1)) + self.type_embedding
        return self.out(self.encoder(tokens).mean(1)).squeeze(-1)


@dataclass
class TaggerReport:
    """What the tagger saw and how well it does on held-out captions; written to ``training.json``."""

    base: str
    clips: int
    captions: int
    round_trip_share: float
    validation_captions: int
    frame_f1: float
    count_accuracy: float  # held-out prompts whose every type's count the text tower reads right
    position_error: float  # mean absolute error of the order position (1/3 per place)
    epochs: int
    trained_at: str
    seconds: float
    history: list[dict] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line for a preference model's card: what the tagger learned from and how well it does."""
        return (f"an event tagger trained on {self.clips} rendered clips of {self.captions} captions "
                f"({self.round_trip_share:.0%} of them also through {self.base}'s VAE and vocoder); held-out captions: frame F1 "
                f"{self.frame_f1}, prompts whose every count it reads right {self.count_accuracy}")


def prompt_hidden_states(tokenizer, text_encoder, prompt: str) -> "torch.Tensor":
    """The prompt's hidden states from a pipeline's text encoder, (tokens, width), float32, no gradients."""
    inputs = tokenizer([prompt], truncation=True, return_tensors="pt")
    with torch.no_grad():
        return text_encoder(input_ids=inputs.input_ids).last_hidden_state[0].float()


def rendered_timelines(n: int, *, seed: int = 0, through=None, through_share: float = 1.0,
                       exclude: Collection[str] = ()) -> list[TimedClip]:
    """``n`` training-split prompts of the sound world rendered with their timelines (prompts in ``exclude``, the
    ones a model is evaluated on, left out); with ``through`` (a ``TangoPipeline``) a ``through_share`` of the
    clips comes a second time, through its VAE and vocoder as its generated clips are made (the same events, the
    generator's artefacts: the detector learns to hear past them)."""
    from soundworld import render, sample_prompts

    from pipeline.audio import round_trip

    rng = np.random.default_rng(seed)
    clips = []
    for prompt in dict.fromkeys(sample_prompts("train", n, seed)):
        if prompt not in exclude:
            waveform, _, events = render(prompt, seed=int(rng.integers(2**31)))
            clips.append(TimedClip(prompt, waveform, [tuple(event) for event in events]))
    if through is not None:
        from tqdm.auto import tqdm

        chosen = [i for i in range(len(clips)) if rng.random() < through_share]
        for start in tqdm(range(0, len(chosen), 16), desc="through the VAE and vocoder", disable=not chosen):
            batch = chosen[start:start + 16]
            for i, audio in zip(batch, round_trip(through, [clips[i].waveform for i in batch])):
                clips.append(clips[i]._replace(waveform=audio))
    return clips


def log_mel(waveforms: Sequence[np.ndarray]) -> torch.Tensor:
    """16 kHz clips -> (clips, frames, mels): the pipeline's log-mel, one frame per hop of the longest clip."""
    from pipeline.audio import TANGO_MEL, wav_to_fbank

    frames = max(1, -(-max(len(w) for w in waveforms) // TANGO_MEL.hop_length))
    return wav_to_fbank([np.asarray(w, np.float32) for w in waveforms], target_length=frames)[0]


def frame_labels(clip: TimedClip, frames: int, event_types: Sequence[str]) -> torch.Tensor:
    """(frames, types): 1 where the timeline has that type sounding (10 ms frames)."""
    from pipeline.audio import TANGO_MEL

    per_second = TANGO_MEL.sampling_rate / TANGO_MEL.hop_length
    labels = torch.zeros(frames, len(event_types))
    for name, onset, offset in clip.events:
        labels[int(round(onset * per_second)):int(round(offset * per_second)) + 1, event_types.index(name)] = 1
    return labels


def prompt_targets(prompt: str, event_types: Sequence[str], max_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the text tower learns to read: per type the count asked for (capped) and its place in the order / 3."""
    from soundworld import parse

    instances = parse(prompt).instances
    counts, positions = torch.zeros(len(event_types), dtype=torch.long), torch.zeros(len(event_types))
    for name in instances:
        counts[event_types.index(name)] += 1
    for place, name in enumerate(dict.fromkeys(instances), start=1):
        positions[event_types.index(name)] = place / 3
    return counts.clamp(max=max_count), positions


def train_event_tagger(clips: Sequence[TimedClip], tokenizer, text_encoder, *, base: str = "tiny",
                       round_trip_share: float = 0.0, epochs: int = 3, text_epochs: int = 30, batch_size: int = 32,
                       learning_rate: float = 2e-3, validation_fraction: float = 0.1, seed: int = 0,
                       progress: bool = True) -> tuple[EventTagger, TaggerReport]:
    """Train both towers on rendered clips with timelines; whole captions are held out for the report."""
    from soundworld import EVENT_TYPES
    from torch.nn.utils.rnn import pad_sequence
    from tqdm.auto import tqdm

    from preference_data.dataset import split_validation


    torch.manual_seed(seed)
    started = time.perf_counter()
    tagger = EventTagger(event_types=list(EVENT_TYPES), text_dim=text_encoder.config.d_model, base=base)
    train_index, held_index = split_validation([c.prompt for c in clips], validation_fraction, seed)
    mels = torch.cat([log_mel([c.waveform for c in clips[i:i + 64]]) for i in range(0, len(clips), 64)])
    labels = torch.stack([frame_labels(c, mels.shape[1], tagger.config.event_types) for c in clips])

    optimizer = torch.optim.AdamW(tagger.parameters(), learning_rate, weight_decay=1e-4)
    steps = epochs * -(-len(train_index) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=max(steps, 1))
    rng, history = np.random.default_rng(seed), []
    for epoch in range(1, epochs + 1):
        tagger.train()
        order = rng.permutation(train_index)
        for start in tqdm(range(0, len(order), batch_size), desc=f"tagger epoch {epoch}", disable=not progress):
            batch = order[start:start + batch_size]
            loss = F.binary_cross_entropy_with_logits(tagger.frame_logits(mels[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        history.append({"epoch": epoch, "frame_f1": _frame_f1(tagger, mels[held_index], labels[held_index])})
        if progress:
            print(json.dumps(history[-1]), flush=True)

    # The text tower reads the prompt; the audio tower is done (its layers get no gradient from this loss).
    prompts = list(dict.fromkeys(c.prompt for c in clips))
    hidden = [prompt_hidden_states(tokenizer, text_encoder, p) for p in prompts]
    mask = pad_sequence([torch.ones(len(h), dtype=torch.bool) for h in hidden], batch_first=True)
    hidden = pad_sequence(hidden, batch_first=True)
    counts, positions = map(torch.stack, zip(*[prompt_targets(p, tagger.config.event_types, tagger.config.max_count)
                                                 for p in prompts]))
    text_train, text_held = split_validation(prompts, validation_fraction, seed)
    text_optimizer = torch.optim.AdamW(tagger.text_parameters(), 3e-3)
    tagger.eval()  # the audio tower's batch norms stay as trained
    for epoch in range(text_epochs):
        order = rng.permutation(text_train)
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            count_logits, predicted = tagger.prompt_logits(hidden[batch], mask[batch])
            loss = F.cross_entropy(count_logits.flatten(0, 1), counts[batch].flatten()) + 10 * F.mse_loss(
                predicted, positions[batch])
            text_optimizer.zero_grad()
            loss.backward()
            text_optimizer.step()
    with torch.no_grad():
        count_logits, predicted = tagger.prompt_logits(hidden[text_held], mask[text_held])
    report = TaggerReport(
        base=base, clips=len(clips), captions=len(prompts), round_trip_share=round_trip_share,
        validation_captions=len(text_held), frame_f1=history[-1]["frame_f1"] if history else float("nan"),
        count_accuracy=round(float((count_logits.argmax(-1) == counts[text_held]).all(1).float().mean()), 4),
        position_error=round(float((predicted - positions[text_held]).abs().mean()), 4), epochs=epochs,
        trained_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        seconds=round(time.perf_counter() - started, 1), history=history)
    return tagger.eval(), report


def _frame_f1(tagger: EventTagger, mels: torch.Tensor, labels: torch.Tensor) -> float:
    """F1 of the frames called active (probability > 0.5) against the timeline, over every type."""
    tagger.eval()
    with torch.no_grad():
        active = torch.cat([torch.sigmoid(tagger.frame_logits(mels[i:i + 128])) for i in range(0, len(mels), 128)])
    active = active > SEGMENT_THRESHOLD
    truth = labels > 0
    return round(2 * float((active & truth).sum()) / max(1, int(active.sum() + truth.sum())), 4)


def save_tagger(tagger: EventTagger, report: TaggerReport, folder: str | Path) -> None:
    folder = Path(folder)
    tagger.save_pretrained(folder)
    (folder / TRAINING_FILE).write_text(json.dumps(asdict(report), indent=1) + "\n")


def load_tagger(folder: str | Path) -> tuple[EventTagger, TaggerReport | None]:
    """A saved event tagger and its training record; ``InvalidInput`` in one line naming the file for a folder that
    is not one, holds pickle weights or malformed JSON, or does not load."""
    from safetensors import SafetensorError

    from annotate.validation import (InvalidInput, UnusableModelFolder, check_model_folder, model_load_error,
                                     read_json_object)

    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file() or read_json_object(config, UnusableModelFolder).get("_class_name") != EventTagger.__name__:
        raise InvalidInput(f"{folder} is not an event tagger folder: train one with `python -m preference.reward tagger`")
    report = check_model_folder(folder, "event tagger", {TRAINING_FILE: TaggerReport}).get(TRAINING_FILE)
    try:
        return EventTagger.from_pretrained(folder).eval(), report
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as err:
        raise model_load_error(folder, "an event tagger", err) from None
