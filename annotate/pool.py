"""Candidate pools: ``k`` clips per prompt from each model, stored as blind ranking tasks.

Seeds: every clip of a task has a seed of its own (no two clips of a task share one, across
models too) and is drawn with its own generator on the pipeline's device
(``TangoPipeline.clip_generators``), so each clip is reproducible alone from its stored
settings. Clips made from the same initial noise sound alike, so shared seeds would tell an
annotator which clips belong together (one per model); the models are compared over many
independent draws instead.

By default the seeds are drawn from a secret random source, so nobody can regenerate a pool's
clips and learn which model made each. ``seed`` makes a pool reproducible (each clip's seed
derived from ``seed``, its model and its index): for experiments, not for pools annotators rank
blind, since anyone who has the models and the seed can make the same clips. Pool seeds are
within 0..``MAX_POOL_SEED``; the app's Demo only ever seeds above it (``studio.generation``).

Task composition: a task holds all ``len(models) * k`` clips of its prompt (default two
models x k=2: a 4-way ranking). Every clip of one model is ranked against every clip of
the other, and same-model comparisons are kept too: they are valid preference pairs.
Two-clip tasks are voted in the app's arena-style A/B form: two models with ``k=1`` make
one per prompt, and ``ab=True`` makes ``k`` per prompt (clip i of the first model against
clip i of the second).

Idempotent: a prompt that already has its clips under these models and settings (the seeds
derived from ``seed``; without it, any pool clips stored for the prompt, model, steps and
guidance) gets no new ones, and a task over the same clips is the same task, so an
interrupted or repeated run only fills what is missing.

The generator is injected (``make_generator(spec)`` returns a ``ClipGenerator``); the
default loads the real pipeline: ``annotate`` generates with ``pipeline`` only here.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from pipeline.registry import DEFAULT_DPO_SPEC, DEFAULT_SPEC, load_pipeline

from .store import MAX_TASK_CLIPS, Store
from .validation import MAX_PROMPT_CHARS, MAX_SPEC_CHARS, InvalidInput, check_float, check_int, check_text

logger = logging.getLogger(__name__)

DEFAULT_MODELS = (DEFAULT_SPEC, DEFAULT_DPO_SPEC)
MAX_POOL_SEED = 2**31 - 1  # every pool clip's seed is within 0..this


@dataclass(frozen=True)
class GeneratedClips:
    """What a ``ClipGenerator`` made: waveforms and, where the generator knows them, the latents behind them.

    ``latents`` (one per waveform, float32, the UNet's scaled latent space named by
    ``latent_fingerprint``) let DPO train on exactly the clips that were ranked.
    """

    waveforms: np.ndarray  # (clips, samples) float32
    latents: np.ndarray | None = None  # (clips, channels, frames, bins) float32
    latent_fingerprint: str | None = None

    @classmethod
    def of(cls, made) -> "GeneratedClips":
        """A generator's answer as ``GeneratedClips``: plain waveforms (a generator that has no latents) are wrapped."""
        return made if isinstance(made, cls) else cls(np.asarray(made))


class ClipGenerator(Protocol):
    """Makes clips for one model: clip ``j`` is ``prompts[j]`` drawn with its own generator seeded ``seeds[j]``.

    Returns ``GeneratedClips`` (or plain float32 waveforms) of ``len(prompts)`` clips, in order.
    """

    sampling_rate: int
    default_steps: int  # denoising steps the model is meant to be sampled with
    # Optional, False when absent: the model reads only the sound world's grammar (``refuse_unreadable``).
    reads_only_the_sound_world: bool

    def __call__(self, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> GeneratedClips | np.ndarray: ...


class PipelineGenerator:
    """The real thing: ``pipeline.load_pipeline(spec)`` with one torch generator per clip; keeps the latents."""

    def __init__(self, spec: str, device=None, pipe=None):
        """``pipe``: a pipeline ``spec`` is already loaded as (the app's), else ``load_pipeline(spec, device)``."""
        self.pipe = load_pipeline(spec, device=device) if pipe is None else pipe
        self.sampling_rate = self.pipe.vocoder.config.sampling_rate
        self.default_steps = self.pipe.config.default_num_inference_steps
        self.reads_only_the_sound_world = self.pipe.reads_only_the_sound_world

    def __call__(self, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> GeneratedClips:
        output = self.pipe(list(prompts), num_inference_steps=steps, guidance_scale=guidance,
                           generator=self.pipe.clip_generators(seeds))
        return GeneratedClips(output.audios, output.latents.numpy(), self.pipe.latent_fingerprint)


def refuse_unreadable(generate: ClipGenerator, prompts: Iterable[str]) -> None:
    """Raise ``InvalidInput`` for the first prompt a sound-world model cannot read (the Demo's check,
    ``soundworld.why_unreadable``); real Tango reads any text."""
    if not getattr(generate, "reads_only_the_sound_world", False):
        return
    from soundworld.grammar import why_unreadable

    for prompt in prompts:
        reason = why_unreadable(prompt)
        if reason is not None:
            raise InvalidInput(reason)


def derived_seed(seed: int, model: str, index: int, attempt: int = 0) -> int:
    """The seed of clip ``index`` of ``model`` in a pool made with ``seed`` (``attempt`` > 0: another one,
    should that seed be taken in the task already): a hash, so no clip's seed follows from another's."""
    digest = hashlib.sha256(f"{seed}\0{model}\0{index}\0{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_POOL_SEED + 1)


def pool_seeds(store: Store, prompts: list[str], models: list[str], k: int, model_steps: dict[str, int],
               guidance: float, seed: int | None) -> dict[tuple[str, str], list[int]]:
    """(prompt, model) -> the seeds of its ``k`` clips, no two alike within a prompt's task.

    With ``seed``: derived from it (``derived_seed``). Without: the seeds of the pool clips already stored
    for the prompt and model under these settings, then fresh draws from a secret source.
    """
    stored: dict[tuple[str, str], list[int]] = {}
    if seed is None:
        for clip in store.candidates().values():
            if (clip.model in model_steps and clip.steps == model_steps[clip.model] and clip.guidance == guidance
                    and clip.seed <= MAX_POOL_SEED):
                stored.setdefault((clip.prompt, clip.model), []).append(clip.seed)
    plan = {}
    for prompt in prompts:
        taken: set[int] = set()
        for model in models:
            seeds = sorted(stored.get((prompt, model), []))[:k]
            for index in range(len(seeds), k):
                attempt = 0
                while True:
                    drawn = secrets.randbelow(MAX_POOL_SEED + 1) if seed is None else derived_seed(seed, model, index, attempt)
                    if drawn not in taken and drawn not in seeds:
                        break
                    attempt += 1
                seeds.append(drawn)
            taken.update(seeds)
            plan[prompt, model] = seeds
    return plan


@dataclass(frozen=True)
class PoolReport:
    """What a pool run did."""

    generated: int  # clips made by this run
    reused: int  # clips already in the store
    task_ids: list[int]  # one per prompt (``ab``: k per prompt), in prompt order


def build_pool(
    store: Store,
    prompts: Sequence[str],
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    k: int = 2,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float = 3.0,
    make_generator: Callable[[str], ClipGenerator] = PipelineGenerator,
    batch_size: int = 4,
    progress: bool = True,
    ab: bool = False,
) -> PoolReport:
    """Generate what is missing of ``k`` clips per prompt per model and make one task per prompt (with ``ab``:
    ``k`` two-clip tasks per prompt, clip i of one model against clip i of the other; two models only).

    ``steps=None`` samples each model with its own default steps (which loads that model).
    ``seed=None`` draws every clip's seed from a secret source (clips already pooled under these settings
    are kept), so nobody can regenerate a pool clip; a ``seed`` makes the pool reproducible by anyone.
    At most ``batch_size * k`` clips go to one generation call.
    """
    prompts = list(dict.fromkeys(check_text(p, "prompt", MAX_PROMPT_CHARS) for p in prompts))
    models = list(dict.fromkeys(check_text(m, "model", MAX_SPEC_CHARS) for m in models))
    k = check_int(k, "k", minimum=1)
    seed = None if seed is None else check_int(seed, "seed", minimum=0)
    steps = None if steps is None else check_int(steps, "steps", minimum=1)
    guidance = check_float(guidance, "guidance")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if not prompts:
        raise InvalidInput("`prompts` is empty")
    if ab and len(models) != 2:
        raise InvalidInput(f"A/B tasks pit two models against each other; got {len(models)}: {', '.join(models)}")
    if not ab and not 2 <= len(models) * k <= MAX_TASK_CLIPS:
        raise InvalidInput(f"a task would hold {len(models)} models x k={k} clips; it must be 2..{MAX_TASK_CLIPS}")

    generators: dict[str, ClipGenerator] = {}

    def generator(model: str) -> ClipGenerator:
        if model not in generators:
            generators[model] = make_generator(model)
        return generators[model]

    model_steps = {model: steps if steps is not None else generator(model).default_steps for model in models}
    seeds = pool_seeds(store, prompts, models, k, model_steps, guidance, seed)

    def stored(prompt: str, model: str, clip_seed: int):
        return store.find_candidate(prompt, model=model, seed=clip_seed, steps=model_steps[model], guidance=guidance)

    missing = {model: [(p, s) for p in prompts for s in seeds[p, model] if stored(p, model, s) is None]
               for model in models}
    for model, clips in missing.items():  # every model checked before any clip is made
        if clips:
            refuse_unreadable(generator(model), [prompt for prompt, _ in clips])
    todo = sum(len(clips) for clips in missing.values())
    with tqdm(total=todo, desc="generating clips", unit="clip", disable=not progress or not todo) as bar:
        for model, clips in missing.items():
            for start in range(0, len(clips), batch_size * k):
                batch = clips[start:start + batch_size * k]
                generate = generator(model)
                made = GeneratedClips.of(generate([p for p, _ in batch], [s for _, s in batch], model_steps[model],
                                                  guidance))
                waveforms = made.waveforms
                if waveforms.ndim != 2 or len(waveforms) != len(batch):
                    raise ValueError(f"generator for {model!r} returned shape {waveforms.shape}, wanted ({len(batch)}, samples)")
                for i, ((prompt, clip_seed), waveform) in enumerate(zip(batch, waveforms)):
                    latent = None if made.latents is None else made.latents[i]
                    store.add_candidate(prompt, waveform, model=model, seed=clip_seed, steps=model_steps[model],
                                        guidance=guidance, sample_rate=generate.sampling_rate, latent=latent,
                                        latent_fingerprint=None if latent is None else made.latent_fingerprint)
                bar.update(len(batch))

    if ab:
        clip_sets = [[stored(p, model, seeds[p, model][i]).id for model in models] for p in prompts for i in range(k)]
    else:
        clip_sets = [[stored(p, model, s).id for model in models for s in seeds[p, model]] for p in prompts]
    task_ids = [store.add_task(ids) for ids in clip_sets]
    logger.info("pool: %d clips generated, %d tasks", todo, len(task_ids))
    return PoolReport(generated=todo, reused=len(prompts) * len(models) * k - todo, task_ids=task_ids)
