"""Side-by-side generation: the base model and its DPO-tuned version, same prompt, seeds and settings.

Both models are loaded once at start with ``pipeline.load_pipeline``. A model that cannot be
loaded (a spec naming nothing, ``tiny-dpo`` not trained yet, a broken checkpoint) does not
stop the app: its column says why and the other column still works.

Loaded pipelines are shared by every visitor (the registry caches them), so a call never
touches one: each call builds a light view of the pipeline with a fresh scheduler of the
chosen sampler (schedulers keep per-call state in ``set_timesteps``), sharing the weights.

Seeds: candidate ``i`` of Demo seed ``s`` is Demo seed ``s + i`` (``pipeline.clip_seeds``), in both
columns, so the two models start from the same noise. A Demo seed is not the generator's seed:
that is ``generator_seed``, keyed by the server's secret (``studio.secret``), so the same Demo
seed gives the same clips on this server while no Demo seed reaches the seeds pools are made
with (``annotate.pool``: 0..``MAX_POOL_SEED``), whatever seed a pool was made with, and an
annotator cannot regenerate a task's clips to learn their models. A clip sent to annotation is
stored with its generator seed (and is reproducible alone from it, drawn on the pipeline's device).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import torch

from annotate import Store
from annotate.pool import MAX_POOL_SEED
from annotate.store import latent_path
from annotate.validation import MAX_INT, MAX_PROMPT_CHARS, InvalidInput, check_text
from pipeline.audio import save_audio
from pipeline.registry import EMBEDDED, SpecError, load_pipeline, resolve_spec
from pipeline.tango import TangoPipeline, clip_seeds
from soundworld.judge import JudgeResult, judge

from .config import StudioConfig
from .spectrogram import save_spectrogram

try:  # ZeroGPU Spaces: a GPU is attached only while a decorated function runs
    import spaces
except ImportError:
    spaces = None

logger = logging.getLogger(__name__)

MODEL_DEFAULT = "model default"
# label -> (diffusers scheduler class, settings over the model's scheduler config); None: the model's own scheduler
_DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}
SAMPLERS: dict[str, tuple[str, dict] | None] = {
    MODEL_DEFAULT: None,
    "DPM-Solver++": ("DPMSolverMultistepScheduler", _DPM_2M),
    "DPM-Solver++ Karras": ("DPMSolverMultistepScheduler", {**_DPM_2M, "use_karras_sigmas": True}),
    "DPM-Solver++ 3M": ("DPMSolverMultistepScheduler", {**_DPM_2M, "solver_order": 3}),
    "UniPC": ("UniPCMultistepScheduler", {"solver_order": 2, "use_karras_sigmas": False}),
    "DEIS": ("DEISMultistepScheduler", {"solver_order": 2, "use_karras_sigmas": False}),
    "DDIM": ("DDIMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "DDPM (Tango's own)": ("DDPMScheduler", {}),
}
MAX_CANDIDATES = 4
MAX_STEPS = 1000  # the training schedule's length
MAX_SEED = 2**32 - 1 - MAX_CANDIDATES
MAX_DURATION_S = 30.72  # three times Tango's 10.24 s, the pipeline's own limit
KEEP_GENERATIONS = 200  # generation folders kept on disk (older ones are deleted)

# What the evaluations in docs/results.md measured between the embedded base and each tuned model at their default
# sampler (200 test and 200 held-out prompts, paired 95 % intervals). The Demo shows it under the columns so that one
# prompt's clips are not read as more than that; update it with that table when a model or default changes.
EVALUATION_LINES = {
    ("tiny", "tiny-dpo"): ("**Measured difference** (docs/results.md, \"Shipped models at the default sampler\", "
                           "200 prompts per split): `tiny-dpo` hears more of the prompt's events on unseen test "
                           "prompts (event recall +0.027 [+0.002, +0.053]) but does not follow order better (-0.014 "
                           "[-0.049, +0.021]); on a few clips, which column follows the prompt better is mostly chance."),
}
NO_EVALUATION_LINE = ("**No evaluation of these two models is on record**: on a few clips, which column follows the "
                      "prompt better may be chance; the Results tab counts many rankings.")

# Prompts in the style of AudioCaps (what Tango was trained and evaluated on), for real models.
AUDIOCAPS_PROMPTS = [
    "A dog barks in the distance while rain falls",
    "An audience cheering and clapping",
    "Rolling thunder with lightning strikes",
    "A man speaks, followed by a goat bleating",
    "Water flows in a stream as birds chirp",
    "A car engine revs, then accelerates away",
]


def generator_seed(secret: bytes, demo_seed: int) -> int:
    """The generator seed a Demo seed stands for on the server with ``secret``: above every pool seed
    (``MAX_POOL_SEED``), within SQLite's integers, and not computable without the secret."""
    digest = hmac.new(secret, str(demo_seed).encode(), hashlib.sha256).digest()
    return MAX_POOL_SEED + 1 + int.from_bytes(digest[:8], "big") % (MAX_INT - MAX_POOL_SEED)


class GenerationError(ValueError):
    """Settings that cannot be generated (empty prompt, zero steps, ...)."""


@dataclass(frozen=True)
class GenerationSettings:
    prompt: str
    steps: int
    guidance: float
    seed: int
    candidates: int
    sampler: str = MODEL_DEFAULT
    duration: float | None = None  # seconds; None: the length each model was trained on

    @property
    def seeds(self) -> list[int]:
        """The Demo seed of each candidate, by the pipeline's convention (``clip_seeds``)."""
        return clip_seeds(self.seed, self.candidates)

    def made_with(self) -> str:
        """One markdown line over a generation's clips: the prompt and settings they were made with (the form's
        fields may since say something else)."""
        length = "each model's own length" if self.duration is None else f"{self.duration:g} s"
        return (f"**Clips of:** “{self.prompt}” · {self.steps} steps · guidance {self.guidance:g} · seed {self.seed} "
                f"· {self.candidates} candidate(s) per model · sampler {self.sampler} · {length}")

    @classmethod
    def checked(cls, prompt: object, steps: object, guidance: object, seed: object, candidates: object,
                sampler: object = MODEL_DEFAULT, duration: object = None, *, max_steps: int = MAX_STEPS,
                max_candidates: int = MAX_CANDIDATES,
                durations: tuple[float, float] = (0.0, MAX_DURATION_S)) -> GenerationSettings:
        """Validate what a form or an API call sent; raise ``GenerationError`` naming the bad field.

        ``duration`` None or 0 means each model's own clip length; otherwise seconds within ``durations``
        (the shortest and longest clip every loaded model can make: ``duration_range``).
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise GenerationError("`prompt` is empty: describe the sound to generate")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise GenerationError(f"`prompt` has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
        try:  # the store's rule for prompts: no control, bidi or invisible characters
            check_text(prompt.strip(), "prompt", MAX_PROMPT_CHARS)
        except InvalidInput as err:
            raise GenerationError(str(err)) from None
        steps = _whole(steps, "steps", 1, min(max_steps, MAX_STEPS))
        seed = _whole(seed, "seed", 0, MAX_SEED)
        candidates = _whole(candidates, "candidates", 1, min(max_candidates, MAX_CANDIDATES))
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= 30:
            raise GenerationError(f"`guidance` must be a number within 0..30, got {str(guidance)[:40]!r}")
        if not isinstance(sampler, str) or sampler not in SAMPLERS:
            raise GenerationError(f"`sampler` must be one of {', '.join(SAMPLERS)}, got {str(sampler)[:40]!r}")
        own_length = duration is None or (type(duration) in (int, float) and duration == 0)
        if not own_length and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                               or not durations[0] <= duration <= durations[1]):
            raise GenerationError(f"`duration` must be 0 or none (each model's own length) or seconds within "
                                  f"{durations[0]:g}..{durations[1]:g}, got {str(duration)[:40]!r}")
        return cls(prompt.strip(), steps, float(guidance), seed, candidates, sampler,
                   None if own_length else float(duration))


def _whole(value: object, name: str, low: int, high: int) -> int:
    """An integer within low..high; a float form value like 25.0 counts, 2.5 does not."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or not low <= value <= high):
        raise GenerationError(f"`{name}` must be a whole number within {low}..{high}, got {str(value)[:40]!r}")
    return int(value)


@dataclass
class LoadedModel:
    """One column's model: the pipeline, or why there is none."""

    role: str  # "base" or "dpo"
    title: str
    spec: str
    pipe: TangoPipeline | None
    error: str | None = None

    @property
    def default_steps(self) -> int | None:
        return None if self.pipe is None else int(self.pipe.config.default_num_inference_steps)

    @property
    def is_sound_world(self) -> bool:
        """An embedded sound-world model (they ship with the Griffin-Lim vocoder; real Tango has a HiFi-GAN)."""
        if self.pipe is None:
            return self.spec in EMBEDDED
        return self.pipe.reads_only_the_sound_world

    def status(self) -> str:
        if self.pipe is None:
            return f"**{self.title}** (`{self.spec}`): not available. {self.error}"
        return f"**{self.title}** (`{self.spec}`)"


def tuned_title(spec: str) -> str:
    """The tuned column's title, by how its model was tuned: "GRPO-tuned" for a folder ``train_grpo.py`` wrote (its
    ``train_config.json`` names a ``reward`` and a ``group_size``), "DPO-tuned" otherwise (``train_dpo.py``'s output,
    Hub models, anything unreadable)."""
    try:
        _, folder = resolve_spec(spec)
        saved = json.loads((folder / "train_config.json").read_text(encoding="utf-8")) if folder else {}
    except (SpecError, OSError, ValueError):
        return "DPO-tuned"
    return "GRPO-tuned" if isinstance(saved, dict) and {"reward", "group_size"} <= set(saved) else "DPO-tuned"


def load_models(config: StudioConfig, loader: Callable[..., TangoPipeline] = load_pipeline) -> list[LoadedModel]:
    """Base and DPO-tuned model; a model that fails to load becomes a column that says why."""
    dtype = getattr(torch, config.dtype) if config.dtype else None
    models = []
    for role, title, spec in (("base", "Base", config.base_model), ("dpo", tuned_title(config.dpo_model),
                                                                     config.dpo_model)):
        try:
            pipe = loader(spec, device=config.device, dtype=dtype)
        except Exception as err:  # the app must start whatever the spec: the column shows the reason
            logger.warning("could not load the %s model %r: %s", role, spec, err)
            models.append(LoadedModel(role, title, spec, None, f"{type(err).__name__}: {err}"))
        else:
            models.append(LoadedModel(role, title, spec, pipe))
    return models


def duration_range(models: list[LoadedModel]) -> tuple[float, float, float]:
    """(shortest, default, longest) clip length in seconds every loaded model can make."""
    pipes = [m.pipe for m in models if m.pipe is not None]
    if not pipes:
        return 1.0, 10.24, 10.24
    shortest = max(p.audio_length_range_in_s[0] for p in pipes)
    longest = min(p.audio_length_range_in_s[1] for p in pipes)
    return round(shortest, 2), round(min(p.default_audio_length_in_s for p in pipes), 2), round(longest, 2)


def check_prompt(models: list[LoadedModel], prompt: str) -> None:
    """Refuse a prompt the sound-world models cannot read (``soundworld.why_unreadable``, the check ``annotate``
    and the pipeline make too), naming the word and showing the vocabulary.

    Real Tango takes any text; the embedded models only know the sound world's grammar,
    which would turn "a dog barks" into a clip of something.
    """
    if not any(m.is_sound_world and m.pipe is not None for m in models):
        return
    from soundworld import why_unreadable

    reason = why_unreadable(prompt)
    if reason is not None:
        raise GenerationError(f"{reason}. Start the app with real Tango (--base-model declare-lab/tango) for free text.")


def prompt_hint(models: list[LoadedModel]) -> tuple[str, str]:
    """(placeholder, vocabulary note) for the prompt box: the sound world's words for its models, else free text."""
    if not models or not models[0].is_sound_world:
        return "Describe a sound, e.g. a dog barks in the distance while rain falls", ""
    from soundworld.grammar import vocabulary_markdown

    return "e.g. a hiss then two knocks", ("The embedded models know a small sound world, these words only:\n\n"
                                           + vocabulary_markdown())


def evaluation_line(models: list[LoadedModel]) -> str:
    """The one line under the Demo's columns on how much the two models were measured to differ."""
    return EVALUATION_LINES.get(tuple(m.spec for m in models), NO_EVALUATION_LINE)


def duration_note(models: list[LoadedModel]) -> str:
    """Beside the Duration control: the length the models were trained on, and what longer clips do."""
    _, trained, _ = duration_range(models)
    if any(m.is_sound_world for m in models):
        return f"The models were trained on {trained:g} s clips; longer clips repeat events."
    return f"The models were trained on {trained:g} s clips; longer clips go beyond their training."


def example_prompts(models: list[LoadedModel]) -> list[str]:
    """Held-out sound-world prompts for the embedded models, AudioCaps-style ones for real Tango."""
    if models[0].is_sound_world:
        from soundworld import sample_prompts

        return sample_prompts("heldout", 6, seed=0)
    return list(AUDIOCAPS_PROMPTS)


def with_sampler(pipe: TangoPipeline, sampler: str) -> TangoPipeline:
    """A view of ``pipe`` (same weights) with a fresh scheduler of the chosen kind; ``pipe`` is untouched."""
    class_name, settings = SAMPLERS[sampler] or (type(pipe.scheduler).__name__, {})
    scheduler = getattr(diffusers, class_name).from_config({**pipe.scheduler.config, **settings})
    view = pipe.with_components(scheduler=scheduler)
    view.set_progress_bar_config(disable=True)
    return view


def check_steps(pipe: TangoPipeline, settings: GenerationSettings) -> None:
    """Refuse (``GenerationError``) a step count the chosen sampler cannot take with this model: one whose noise
    levels repeat (DPM-Solver++ at ~1000 steps), which would end in NaN audio. Noise levels are the scheduler's
    sigmas where it has them (Karras sigmas may round to a repeated timestep and still be distinct levels, which
    sample fine), else its timesteps."""
    scheduler = with_sampler(pipe, settings.sampler).scheduler
    scheduler.set_timesteps(settings.steps)
    sigmas = getattr(scheduler, "sigmas", None)
    levels = scheduler.timesteps if sigmas is None else torch.as_tensor(sigmas)
    if len(torch.unique(levels)) != len(levels):
        raise GenerationError(f"`steps` {settings.steps} is too many for the {settings.sampler!r} sampler with this "
                              "model (its noise levels repeat): use fewer steps or another sampler")


def sampler_model_label(model: LoadedModel, sampler: str) -> str:
    """The model name stored with a clip: the spec, plus the scheduler (and the settings it changes) when it is
    not the model's own."""
    if SAMPLERS[sampler] is None:
        return model.spec
    class_name, settings = SAMPLERS[sampler]
    own = model.pipe.scheduler.config
    changed = {key: value for key, value in settings.items() if own.get(key) != value}
    if class_name == type(model.pipe.scheduler).__name__ and not changed:
        return model.spec
    return f"{model.spec}+{class_name}" + "".join(f"[{key}={value}]" for key, value in changed.items())


def _run_pipeline(pipe: TangoPipeline, settings: GenerationSettings, seeds: list[int],
                  on_step: Callable[[int], None] | None):
    """The pipeline's output: (candidates, samples) float32 ``audios`` and the ``latents`` they were decoded from;
    candidate i drawn with a generator seeded ``seeds[i]``."""
    view = with_sampler(pipe, settings.sampler)
    generators = pipe.clip_generators(seeds)

    def step_done(_pipe, step, _timestep, tensors):
        on_step(step + 1)
        return tensors

    return view(settings.prompt, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                num_waveforms_per_prompt=settings.candidates, generator=generators, audio_length_in_s=settings.duration,
                callback_on_step_end=step_done if on_step else None)


run_pipeline = spaces.GPU(duration=120)(_run_pipeline) if spaces is not None else _run_pipeline


@dataclass(frozen=True)
class GeneratedClip:
    audio_path: str
    spectrogram_path: str
    seed: int  # the generator's (``generator_seed``), stored with the clip when it is sent to annotation
    latent_fingerprint: str | None = None  # the clip's latent lies beside it (annotate.store.latent_path)
    judged: JudgeResult | None = None  # what the sound world's judge heard (sound-world models only)

    def heard(self) -> str:
        """Markdown under the clip: the events the judge heard in order, and the prompt's events ticked or missing;
        empty without a judge."""
        if self.judged is None:
            return ""
        result = self.judged
        heard = [name for name, _onset in result.detected]
        asked = []
        for name, count in result.expected:
            found = heard.count(name)
            wanted = _event_name(name, count)
            asked.append(f"✓ {wanted}" if found >= count else
                         f"✗ {wanted} (heard {found})" if found else f"✗ {wanted} missing")
        if result.order_correct is not None and all(name in heard for name, _count in result.expected):
            asked.append("✓ in order" if result.order_correct else "✗ out of order")  # (a missing event says itself)
        if result.extra_events:
            asked.append(f"+{result.extra_events} not asked for")
        return (f"**Judge heard:** {' → '.join(_event_name(name) for name in heard) or 'nothing'}  \n"
                f"**Prompt:** {' · '.join(asked)} — score {result.score:.2f}")


def _event_name(event_type: str, count: int = 1) -> str:
    name = event_type.replace("_", " ")
    return name if count == 1 else f"{count} × {name}"


@dataclass(frozen=True)
class ColumnResult:
    role: str
    title: str
    spec: str
    model_label: str | None  # what the store records as the clip's model
    clips: list[GeneratedClip] = field(default_factory=list)
    seconds_per_clip: float | None = None
    error: str | None = None

    @property
    def judge_score(self) -> float | None:
        """The mean judge score of the column's clips (how well they follow the prompt, 0..1); None without a judge."""
        scores = [clip.judged.score for clip in self.clips if clip.judged is not None]
        return float(np.mean(scores)) if scores and len(scores) == len(self.clips) else None

    def summary(self) -> str:
        if self.error:
            return f"**{self.title}** (`{self.spec}`): {self.error}"
        score = "" if self.judge_score is None else (
            f" · **judge score {self.judge_score:.2f}** (mean of {len(self.clips)} clip(s); 1 = follows the prompt)")
        # The title on a line of its own: a long model name or score then wraps below it, not into it.
        return f"**{self.title}** (`{self.spec}`)  \n{self.seconds_per_clip:.2f} s per clip{score}"


@dataclass(frozen=True)
class Generation:
    settings: GenerationSettings
    columns: list[ColumnResult]

    def as_dict(self) -> dict:
        """The API's details: settings, and per column the model, timing, seeds or the error."""
        return {
            "settings": vars(self.settings),
            "columns": [{"role": c.role, "model": c.spec, "stored_as": c.model_label,
                         "seconds_per_clip": c.seconds_per_clip, "seeds": self.settings.seeds[:len(c.clips)],
                         "judge_score": c.judge_score, "error": c.error} for c in self.columns],
        }


def generate_both(models: list[LoadedModel], settings: GenerationSettings, out_dir: str | Path,
                  progress: Callable[[float, str], None] | None = None, *, secret: bytes) -> Generation:
    """Generate ``settings.candidates`` clips with each model; write WAVs and spectrogram PNGs under ``out_dir``;
    the judge hears each clip of a sound-world model (``GeneratedClip.judged``).

    Candidate ``i`` of both columns is drawn with ``generator_seed(secret, settings.seeds[i])``.

    Raises ``GenerationError`` for a prompt the sound-world models cannot know (``check_prompt``).
    """
    check_prompt(models, settings.prompt)
    for model in models:
        if model.pipe is not None:
            check_steps(model.pipe, settings)
    seeds = [generator_seed(secret, demo_seed) for demo_seed in settings.seeds]
    folder = Path(out_dir) / uuid.uuid4().hex
    folder.mkdir(parents=True)
    columns = []
    for index, model in enumerate(models):
        if model.pipe is None:
            columns.append(ColumnResult(model.role, model.title, model.spec, None, error=f"not available: {model.error}"))
            continue

        def on_step(step: int, index=index, model=model) -> None:
            if progress is not None:
                # The bar's percent is of the whole generation; the text says which model, not its own step count.
                progress((index + step / settings.steps) / len(models),
                         f"{model.title}, model {index + 1} of {len(models)}")

        started = time.perf_counter()
        try:
            output = run_pipeline(model.pipe, settings, seeds, on_step)
            waveforms = output.audios
        except (RuntimeError, ValueError) as err:  # e.g. out of memory: this column fails, the other one stands
            logger.exception("generation with %r failed", model.spec)  # the trace (and any paths) stay in the log
            columns.append(ColumnResult(model.role, model.title, model.spec, None,
                                        error=f"generation failed ({type(err).__name__}); the server log has the details"))
            continue
        if not np.isfinite(waveforms).all():  # nothing that is not audio reaches a file
            logger.error("%r produced non-finite audio for %s", model.spec, settings)
            columns.append(ColumnResult(model.role, model.title, model.spec, None,
                                        error="the model produced non-finite audio (NaN) with these settings: "
                                              "try fewer steps or another sampler"))
            continue
        seconds = time.perf_counter() - started
        clips = []
        for i, waveform in enumerate(waveforms):
            audio_path, picture_path = folder / f"{model.role}-{i}.wav", folder / f"{model.role}-{i}.png"
            save_audio(audio_path, waveform, model.pipe.sampling_rate)
            save_spectrogram(waveform, model.pipe.sampling_rate, picture_path)
            np.save(latent_path(audio_path), output.latents[i].numpy(), allow_pickle=False)
            judged = judge(waveform, model.pipe.sampling_rate, settings.prompt) if model.is_sound_world else None
            clips.append(GeneratedClip(str(audio_path), str(picture_path), seeds[i], model.pipe.latent_fingerprint,
                                       judged))
        columns.append(ColumnResult(model.role, model.title, model.spec, sampler_model_label(model, settings.sampler),
                                    clips, seconds / len(clips)))
    _prune(Path(out_dir), KEEP_GENERATIONS)
    return Generation(settings, columns)


def _prune(out_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest generation folders."""
    folders = sorted((p for p in out_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in folders[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def send_to_annotation(store: Store, generation: Generation, senders: Sequence[str] = ()) -> int:
    """Store every clip of a generation as a candidate and make one ranking task of them, never to be given to
    ``senders`` (who sent it: they heard its models); return its id."""
    settings = generation.settings
    clip_ids = []
    for column in generation.columns:
        for clip in column.clips:
            candidate = store.add_candidate(settings.prompt, clip.audio_path, model=column.model_label, seed=clip.seed,
                                            steps=settings.steps, guidance=settings.guidance,
                                            latent=None if clip.latent_fingerprint is None else np.load(
                                                latent_path(clip.audio_path), allow_pickle=False),
                                            latent_fingerprint=clip.latent_fingerprint)
            clip_ids.append(candidate.id)
    clip_ids = list(dict.fromkeys(clip_ids))  # the same spec in both columns stores each clip once
    if len(clip_ids) < 2:
        raise GenerationError(f"a ranking task needs at least 2 distinct clips; this generation has {len(clip_ids)}: "
                              "generate more candidates (or with both models)")
    return store.add_task(clip_ids, senders=senders)
