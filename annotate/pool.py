"""Candidate pools: ``k`` clips per prompt from each model, stored as one blind ranking task per prompt.

Seeds: clip ``i`` of every (prompt, model) is drawn with its own generator seeded
``seed + i`` (``pipeline.clip_seeds``, on the pipeline's device), so each clip is reproducible alone from its
stored settings, and clip ``i`` of every model starts from the same initial noise: the
models are compared on paired noise, so a preference reflects the model, not the luck of
the draw.

Task composition: a task holds all ``len(models) * k`` clips of its prompt (default two
models x k=2: a 4-way ranking). Every clip of one model is ranked against every clip of
the other, and same-model comparisons are kept too: they are valid preference pairs.

Idempotent: a clip already stored under (prompt, model, seed, steps, guidance) is not
generated again, and a task over the same clips is the same task, so an interrupted or
repeated run only fills what is missing.

The generator is injected (``make_generator(spec)`` returns a ``ClipGenerator``); the
default loads the real pipeline: ``annotate`` generates with ``pipeline`` only here.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from pipeline.registry import DEFAULT_DPO_SPEC, DEFAULT_SPEC, load_pipeline
from pipeline.tango import clip_seeds

from .store import MAX_TASK_CLIPS, Store
from .validation import MAX_PROMPT_CHARS, MAX_SPEC_CHARS, InvalidInput, check_float, check_int, check_text

logger = logging.getLogger(__name__)

DEFAULT_MODELS = (DEFAULT_SPEC, DEFAULT_DPO_SPEC)
MAX_POOL_SEED = 2**31 - 1 - MAX_TASK_CLIPS  # a random base seed is drawn in 0..this


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
    """Makes clips for one model: ``k`` per prompt, clip ``i`` of each prompt seeded ``seed + i``.

    Returns ``GeneratedClips`` (or plain float32 waveforms) of ``len(prompts) * k`` clips, grouped by prompt.
    """

    sampling_rate: int
    default_steps: int  # denoising steps the model is meant to be sampled with

    def __call__(self, prompts: list[str], k: int, seed: int, steps: int, guidance: float) -> GeneratedClips | np.ndarray: ...


class PipelineGenerator:
    """The real thing: ``pipeline.load_pipeline(spec)`` with one torch generator per clip; keeps the latents."""

    def __init__(self, spec: str, device=None):
        self.pipe = load_pipeline(spec, device=device)
        self.sampling_rate = self.pipe.vocoder.config.sampling_rate
        self.default_steps = self.pipe.config.default_num_inference_steps

    def __call__(self, prompts: list[str], k: int, seed: int, steps: int, guidance: float) -> GeneratedClips:
        generators = self.pipe.clip_generators([s for _ in prompts for s in clip_seeds(seed, k)])
        output = self.pipe(
            prompts, num_inference_steps=steps, guidance_scale=guidance, num_waveforms_per_prompt=k, generator=generators
        )
        return GeneratedClips(output.audios, output.latents.numpy(), self.pipe.latent_fingerprint)


def pool_seeds(store: Store, prompts: list[str], models: list[str], model_steps: dict[str, int], guidance: float,
               seed: int | None) -> dict[str, int]:
    """Each prompt's base seed (its clip ``i`` is seeded ``base + i``): ``seed`` when given; else the one
    already stored for the prompt under these models and settings, or one random draw shared by the rest."""
    if seed is not None:
        return dict.fromkeys(prompts, seed)
    stored: dict[str, int] = {}
    for clip in store.candidates().values():
        if clip.model in model_steps and clip.steps == model_steps[clip.model] and clip.guidance == guidance:
            stored[clip.prompt] = min(clip.seed, stored.get(clip.prompt, clip.seed))
    fresh = secrets.randbelow(MAX_POOL_SEED + 1)
    return {prompt: stored.get(prompt, fresh) for prompt in prompts}


@dataclass(frozen=True)
class PoolReport:
    """What a pool run did."""

    generated: int  # clips made by this run
    reused: int  # clips already in the store
    task_ids: list[int]  # one per prompt, in prompt order


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
) -> PoolReport:
    """Generate what is missing of ``k`` clips per prompt per model and make one task per prompt.

    ``steps=None`` samples each model with its own default steps (which loads that model).
    ``seed=None`` draws the base seed at random (a prompt already pooled under these settings keeps
    its stored one), so nobody can regenerate a pool clip from guessed seeds 0, 1, ...
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
    if not 2 <= len(models) * k <= MAX_TASK_CLIPS:
        raise InvalidInput(f"a task would hold {len(models)} models x k={k} clips; it must be 2..{MAX_TASK_CLIPS}")

    generators: dict[str, ClipGenerator] = {}

    def generator(model: str) -> ClipGenerator:
        if model not in generators:
            generators[model] = make_generator(model)
        return generators[model]

    model_steps = {model: steps if steps is not None else generator(model).default_steps for model in models}

    base_seed = pool_seeds(store, prompts, models, model_steps, guidance, seed)

    def stored(prompt: str, model: str, i: int):
        return store.find_candidate(prompt, model=model, seed=clip_seeds(base_seed[prompt], k)[i],
                                    steps=model_steps[model], guidance=guidance)

    missing = {model: [p for p in prompts if any(stored(p, model, i) is None for i in range(k))] for model in models}
    todo = sum(len(todo_prompts) for todo_prompts in missing.values()) * k
    with tqdm(total=todo, desc="generating clips", unit="clip", disable=not progress or not todo) as bar:
        for model, todo_prompts in missing.items():
            if not todo_prompts:
                continue
            generate = generator(model)
            batches = [(base, group[start:start + batch_size])  # one call per base seed and batch
                       for base in dict.fromkeys(base_seed[p] for p in todo_prompts)
                       for group in [[p for p in todo_prompts if base_seed[p] == base]]
                       for start in range(0, len(group), batch_size)]
            for base, batch in batches:
                made = GeneratedClips.of(generate(batch, k, base, model_steps[model], guidance))
                waveforms = made.waveforms
                if waveforms.ndim != 2 or len(waveforms) != len(batch) * k:
                    raise ValueError(f"generator for {model!r} returned shape {waveforms.shape}, wanted ({len(batch) * k}, samples)")
                for j, prompt in enumerate(batch):
                    for i in range(k):
                        latent = None if made.latents is None else made.latents[j * k + i]
                        store.add_candidate(prompt, waveforms[j * k + i], model=model, seed=base + i, steps=model_steps[model],
                                            guidance=guidance, sample_rate=generate.sampling_rate, latent=latent,
                                            latent_fingerprint=None if latent is None else made.latent_fingerprint)
                bar.update(len(batch) * k)

    task_ids = [store.add_task([stored(p, model, i).id for model in models for i in range(k)]) for p in prompts]
    logger.info("pool: %d clips generated, %d tasks", todo, len(task_ids))
    return PoolReport(generated=todo, reused=len(prompts) * len(models) * k - todo, task_ids=task_ids)
