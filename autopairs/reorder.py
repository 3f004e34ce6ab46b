"""Order contrasts cut from one clip: the model's own sampled events, put in another order.

Tango 2's temporal strategy generates the rejected clip from a reordered prompt, so the two
clips of a pair differ in everything a sample can differ in, and order is a small part of what
DPO sees. Here the sound world's judge locates each event of a sampled clip; the latent is cut
at the middle of the silences between the prompted events and the pieces are put in another
order. Both clips then hold the same sounds, and the pair contrasts their order alone:

* a clip heard in the prompt's order is the chosen one; the rejected one is its pieces in
  another order;
* a clip heard in another order is the rejected one; the chosen one is its pieces put in the
  prompt's order.

Half the chosen clips are the model's own samples and half are cut, so an artefact of cutting
is on both sides and cannot be what DPO learns. Every cut clip is decoded and judged again; a
pair is kept only when the judge hears the chosen one in the prompt's order and the rejected
one not, with the same event recall. ``mirrored=True`` adds the same two latents the other way
round for the prompt written in the rejected clip's order (kept out of the ``test`` split), so
the text alone tells which clip is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Collection, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from annotate.clips import encode_wav
from annotate.pool import PipelineGenerator
from preference_data.dataset import PreferenceRow
from soundworld.grammar import in_test_split, parse
from soundworld.judge import DetectedEvent, detect_events, heard_order, judge
from soundworld.perturb import perturb


@dataclass(frozen=True)
class EventRun:
    """Consecutive detections of one prompted type (a count of two is one run), in seconds."""

    type: str
    onset: float
    offset: float


def event_runs(events: Sequence[DetectedEvent], prompted_types: Sequence[str]) -> list[EventRun] | None:
    """The clip's events as one run per prompted type, in the order heard; ``None`` when the clip cannot be cut
    cleanly: a type the prompt never named, a prompted type missing, or a type heard in two places (A B A)."""
    runs: list[EventRun] = []
    for event in events:
        if event.type not in prompted_types:
            return None
        if runs and runs[-1].type == event.type:
            runs[-1] = EventRun(event.type, runs[-1].onset, event.offset)
        else:
            runs.append(EventRun(event.type, event.onset, event.offset))
    if sorted(run.type for run in runs) != sorted(prompted_types):
        return None
    return runs


def cut_frames(runs: Sequence[EventRun], seconds_per_frame: float, frames: int) -> list[int] | None:
    """Latent frames at which to cut: 0, the middle of each silence between two runs, ``frames``. ``None`` when two
    runs are closer than one latent frame (no silence to cut in)."""
    bounds = [0]
    for before, after in zip(runs, runs[1:]):
        cut = int(round((before.offset + after.onset) / 2 / seconds_per_frame))
        if after.onset - before.offset < seconds_per_frame or not bounds[-1] < cut < frames:
            return None
        bounds.append(cut)
    return [*bounds, frames]


def rearrange(latent: np.ndarray, bounds: Sequence[int], order: Sequence[int]) -> np.ndarray:
    """``latent`` (channels, frames, bins) with its pieces ``[bounds[i], bounds[i+1])`` along time in ``order``."""
    pieces = [latent[:, bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    return np.concatenate([pieces[i] for i in order], axis=1)


def prompt_in_order(prompt: str, types: Sequence[str], seed: int) -> str | None:
    """The prompt's temporal perturbation whose events come in ``types`` order, if one is in the training split."""
    for perturbation in perturb(prompt, seed=seed):
        if perturbation.strategy == "temporal" and parse(perturbation.prompt).types == list(types):
            return None if in_test_split(perturbation.prompt) else perturbation.prompt
    return None


@dataclass
class ReorderReport:
    """How many clips could be cut, and how many cut clips the judge heard as intended."""

    clips: int = 0
    cut: int = 0
    kept: int = 0
    mirrored: int = 0


def reordered_pairs(prompts: Sequence[str], generate: PipelineGenerator, *, model: str, seed: int = 0,
                    guidance: float = 3.0, batch_size: int = 8, mirrored: bool = True,
                    exclude: Collection[str] = (), report: ReorderReport | None = None) -> Iterator[PreferenceRow]:
    """One clip per multi-event prompt (``prompts[i]`` seeded ``seed + i``) at the model's default steps; yield the
    reordered pairs of the clips that can be cut (module docstring). A mirrored prompt is never one of ``exclude``
    (validation prompts)."""
    pipe, sample_rate, steps = generate.pipe, generate.sampling_rate, generate.default_steps
    seconds_per_frame = pipe.vae_scale_factor * pipe.hop_length / sample_rate
    report = report if report is not None else ReorderReport()
    rng = np.random.default_rng(seed)

    def row(prompt, chosen, rejected, latents, clip_seed, fingerprint) -> PreferenceRow:
        return PreferenceRow(
            prompt=prompt, chosen_wav=encode_wav(chosen), rejected_wav=encode_wav(rejected), strategy="reordered",
            ranker="judge", chosen_model=model, rejected_model=model, chosen_seed=clip_seed, rejected_seed=clip_seed,
            num_inference_steps=steps, guidance_scale=guidance, votes_for=1, votes_against=0, annotators=1,
            chosen_latent=latents[0], rejected_latent=latents[1], latent_fingerprint=fingerprint)

    for start in tqdm(range(0, len(prompts), batch_size), desc="reorder", unit="batch"):
        batch = list(prompts[start : start + batch_size])
        seeds = [seed + start + j for j in range(len(batch))]
        made = generate(batch, seeds, steps, guidance)
        plans = []  # (prompt, its types, seed, own waveform, own latent, cut latent, own clip is the chosen one)
        for j, prompt in enumerate(batch):
            report.clips += 1
            types = parse(prompt).types
            runs = event_runs(detect_events(made.waveforms[j], sample_rate), types)
            latent = made.latents[j]
            bounds = runs and cut_frames(runs, seconds_per_frame, latent.shape[1])
            if not bounds:
                continue
            heard = [run.type for run in runs]
            if heard == types:  # in order: the rejected clip is another order, drawn at random
                wrong = [order for order in permutations(range(len(runs))) if list(order) != sorted(order)]
                order, own_chosen = wrong[rng.integers(len(wrong))], True
            else:  # out of order: the chosen clip puts the pieces in the prompt's order
                order, own_chosen = [heard.index(name) for name in types], False
            plans.append((prompt, types, seeds[j], made.waveforms[j], latent, rearrange(latent, bounds, order),
                          own_chosen))
        report.cut += len(plans)
        if not plans:
            continue
        with torch.no_grad():
            mel = pipe.decode_latents(torch.from_numpy(np.stack([plan[5] for plan in plans])).to(pipe.device))
            cut_waveforms = pipe.mel_spectrogram_to_waveform(mel)[:, : made.waveforms.shape[1]].cpu().numpy()
        for (prompt, types, clip_seed, own_wave, own_latent, cut_latent, own_chosen), cut_wave in zip(plans, cut_waveforms):
            waves, latents = ((own_wave, cut_wave), (own_latent, cut_latent)) if own_chosen else (
                (cut_wave, own_wave), (cut_latent, own_latent))
            verdicts = [judge(wave, sample_rate, prompt) for wave in waves]
            if not (verdicts[0].order_correct and verdicts[1].order_correct is False
                    and verdicts[0].event_recall == verdicts[1].event_recall):
                continue
            report.kept += 1
            yield row(prompt, *waves, latents, clip_seed, made.latent_fingerprint)
            rejected_order = heard_order([name for name, _ in verdicts[1].detected], types)
            other = mirrored and prompt_in_order(prompt, rejected_order, seed)
            if other and other not in exclude and judge(waves[1], sample_rate, other).order_correct and \
                    judge(waves[0], sample_rate, other).order_correct is False:
                report.mirrored += 1
                yield row(other, waves[1], waves[0], latents[::-1], clip_seed, made.latent_fingerprint)

