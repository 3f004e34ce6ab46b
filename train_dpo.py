"""Fine-tune a Tango pipeline with Diffusion-DPO (Tango 2's recipe) on a preference dataset.

    python train_dpo.py --pretrained_model tiny --dataset ./export --output_dir tiny-dpo --max_train_steps 300
    accelerate launch train_dpo.py ...                                     # several GPUs
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 train_dpo.py ...   # several CPU processes (gloo)
    python app.py --dpo-model tiny-dpo        # the app loads the result (any spec works)

Tango 2's official recipe (README: "Training"): base declare-lab/tango-full-ft-audiocaps,
--learning_rate 9.6e-7 --train_batch_size 4 (x 2 GPUs) --gradient_accumulation_steps 4
--num_train_epochs 5 --sft_first_epochs 1 --lr_scheduler linear --lr_warmup_steps 200
--beta_dpo 2000 --mixed_precision fp16.

The losses live in ``losses.py`` beside this file: ``denoising_loss`` (per-sample v/ε MSE) and
``preference_loss`` (``--loss`` dpo, crpo, hinge, ipo, mapo, sft: one call, loss + metrics).

The dataset is any Hugging Face dataset (Hub id or local folder) with ``prompt``, ``chosen``
and ``rejected`` columns (audio: an Audio feature with bytes or a path, or a path string),
like declare-lab/audio-alpaca or what ``python -m annotate export`` writes. Rows that cannot
be used (undecodable, non-finite or absurdly loud audio, audio whose bytes do not match the
content hash its file name states, empty prompt) are counted and reported; other sample rates
are resampled to 16 kHz. VAE posteriors and text embeddings are computed once and cached on
disk (safetensors), keyed by the dataset's content and the model, so each step runs only UNets.

Each step noises the chosen and rejected latents with the same noise and timestep and runs
them through the policy as one batch; the frozen reference (the loaded pipeline's own UNet:
the device holds two UNets) runs the same batch under no_grad and the same autocast. Every
process draws its own noise. Checkpoints are written under a temporary name and renamed when
complete, with the resolved configuration inside; ``--resume_from_checkpoint latest``
continues a killed run from the last complete one and refuses a changed configuration.
The output is a diffusers-format pipeline that ``load_pipeline`` loads, with a model card,
``train_metrics.json``, ``train_config.json`` and ``training_curve.png``; with validation, the
best pipeline so far is kept in ``OUTPUT_DIR/best``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from losses import LOSS_NAMES, PreferenceLossConfig, denoising_loss, preference_loss
from pipeline.tuning import add_lora, merged_unet, resume_mismatch, save_pipeline_atomically
from pipeline.specs import SpecError, missing_local_folder, resolve_spec

logger = logging.getLogger("train_dpo")
CACHE_VERSION = 3  # bump when what the cache holds changes
# Settings a resumed run may change; any other difference from the checkpoint's configuration is refused.
RESUMABLE_CHANGES = {"max_train_steps", "num_train_epochs", "checkpointing_steps", "checkpoints_total_limit",
                     "resume_from_checkpoint", "report_to", "push_to_hub", "hub_model_id", "output_dir", "cache_dir"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("model and data")
    group.add_argument("--pretrained_model", default="tiny", help="model spec: embedded name, folder or Hub id")
    group.add_argument("--dataset", required=True, help="Hub dataset id or local folder (prompt/chosen/rejected)")
    group.add_argument("--dataset_split", default="train", help="split trained on")
    group.add_argument("--validation_split", default=None, help="split validated on (instead of --validation_fraction)")
    group.add_argument("--validation_fraction", type=float, default=0.0,
                       help="share of the prompts whose pairs are held back for validation each epoch (0: none); "
                            "whole prompts, so validation sees prompts training never did")
    group.add_argument("--output_dir", required=True, help="where the tuned pipeline, checkpoints and metrics go")
    group.add_argument("--cache_dir", default=None, help="latent/embedding cache; none: OUTPUT_DIR/cache")
    group.add_argument("--audio_length_in_s", type=float, default=None, help="clip length trained on; none: the model's")
    group.add_argument("--latent_posterior", default=None, choices=["mode", "sample"],
                       help="how audio without stored latents is encoded: the VAE posterior's mode or a sample each "
                            "step; none: how the model was trained (its model_index.json; Tango 2 samples)")
    group = parser.add_argument_group("loss (losses.py)")
    group.add_argument("--loss", default="dpo", choices=LOSS_NAMES, help="preference loss (sft: chosen clips only)")
    group.add_argument("--beta_dpo", type=float, default=2000.0, help="β of the DPO-family losses (Tango 2: 2000)")
    group.add_argument("--sft_weight", type=float, default=1.0,
                       help="CRPO's weight of the chosen clip's loss, relative to β (1: as hard as DPO pulls at the start)")
    group.add_argument("--snr_gamma", type=float, default=None,
                       help="min-SNR-γ weighting of the denoising losses inside the preference loss (Tango: 5); off by default")
    group.add_argument("--beta_mapo", type=float, default=0.1, help="margin weight of MaPO")
    group.add_argument("--timestep_range", type=int, nargs=2, metavar=("LOW", "HIGH"), default=None,
                       help="draw the training timesteps from [LOW, HIGH) only (e.g. 500 1000: the noisy steps where a "
                            "clip's layout is set); validation still draws from all of them; default: all")
    group.add_argument("--mirror_batches", action="store_true",
                       help="a pair and its mirror (the same two clips the other way round, for another prompt: "
                            "autopairs.reorder's) go in one batch with the same noise and timestep, so what the clips "
                            "differ in cancels and the step sees what the prompt's order changes; a batch then holds "
                            "--train_batch_size pairs and their mirrors")
    group.add_argument("--mirror_margin", action="store_true",
                       help="with --mirror_batches (implied): one preference term per pair and its mirror, on the sum "
                            "of their margins [L(X|P) - L(Y|P)] - [L(X|P') - L(Y|P')] (policy minus reference), in "
                            "which the clips' own difference cancels and the stated order's effect remains")
    group.add_argument("--sft_first_epochs", type=int, default=0,
                       help="epochs of plain fine-tuning on the chosen clips before --loss (Tango 2: 1)")
    group = parser.add_argument_group("optimisation")
    group.add_argument("--learning_rate", type=float, default=1e-6, help="peak learning rate of AdamW")
    group.add_argument("--lr_scheduler", default="constant_with_warmup",
                       choices=["constant", "constant_with_warmup", "linear", "cosine"],
                       help="learning-rate schedule (diffusers.optimization.get_scheduler)")
    group.add_argument("--lr_warmup_steps", type=int, default=0, help="optimizer steps of linear warmup")
    group.add_argument("--train_batch_size", type=int, default=4, help="pairs per process per step")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    group.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps; overrides epochs")
    group.add_argument("--num_train_epochs", type=int, default=1, help="passes over the training pairs")
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm")
    group.add_argument("--adam_weight_decay", type=float, default=1e-2, help="AdamW weight decay")
    group.add_argument("--lora_rank", type=int, default=0, help="0 trains the full UNet; >0 LoRA on its attention")
    group.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"],
                       help="autocast for policy and reference alike (weights stay fp32)")
    group.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for activation memory")
    group.add_argument("--seed", type=int, default=0, help="shuffling, noise (offset per process) and validation noise")
    group = parser.add_argument_group("validation (each epoch)")
    group.add_argument("--judge_prompts", type=int, default=0,
                       help="sound-world models: clips for this many fixed training-split prompts are judged each "
                            "epoch and the best pipeline kept by mean judge score (0: off)")
    group.add_argument("--judge_seed", type=int, default=1234, help="seed of the judged prompts and their clips")
    group.add_argument("--judge_steps", type=int, default=None, help="denoising steps of judged clips; none: the model's")
    group = parser.add_argument_group("checkpoints, logging, Hub")
    group.add_argument("--checkpointing_steps", type=int, default=500, help="save a resumable state every N steps")
    group.add_argument("--checkpoints_total_limit", type=int, default=2, help="checkpoints kept (oldest removed)")
    group.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    group.add_argument("--report_to", default="none", help="tensorboard, wandb, ... or none")
    group.add_argument("--push_to_hub", action="store_true", help="upload the output to --hub_model_id")
    group.add_argument("--hub_model_id", default=None, help="owner/name of the model repo to push to")
    args = parser.parse_args(argv)
    if args.timestep_range is not None and not 0 <= args.timestep_range[0] < args.timestep_range[1]:
        parser.error(f"--timestep_range needs 0 <= LOW < HIGH, got {args.timestep_range}")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        parser.error("--max_train_steps must be >= 1")
    if not 0.0 <= args.validation_fraction < 1.0:
        parser.error(f"--validation_fraction must be in [0, 1), got {args.validation_fraction}")
    if args.validation_split and args.validation_fraction:
        parser.error("give --validation_split or --validation_fraction, not both")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (owner/name)")
    args.mirror_batches = args.mirror_batches or args.mirror_margin  # summed mirror margins need mirror batches
    # Checked here, before anything loads; one line, as the usage would bury it.
    try:
        resolve_spec(args.pretrained_model)
    except SpecError as err:
        parser.exit(2, f"error: --pretrained_model: {err}\n")
    missing = missing_local_folder(args.dataset)
    if missing:
        parser.exit(2, f"error: --dataset {missing}\n")
    return args


if __name__ == "__main__":
    parse_args()  # --help and wrong flags answer in a second: torch, accelerate and diffusers load below

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate import Accelerator  # noqa: E402

# Reading a preference dataset is the library's (the preference model reads it too).
from preference_data.dataset import (DatasetError, decode_audio, load_pairs, split_validation,  # noqa: E402
                                     stored_pair_latents)
from pipeline import load_pipeline  # noqa: E402
from pipeline.audio import AudioError, wav_to_fbank  # noqa: E402


# -- data ------------------------------------------------------------------------------------


class ConfigMismatch(ValueError):
    """A resumed run whose settings differ from its checkpoint's."""


def describe_skipped(skipped: dict[str, int]) -> str:
    """The rows left out, by reason, for people: "none" or "3 (empty prompt: 2, AudioError: 1)"."""
    if not skipped:
        return "none"
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items(), key=lambda item: -item[1]))
    return f"{sum(skipped.values())} ({reasons})"


LATENT_COLUMNS = ["chosen_latent", "rejected_latent", "latent_fingerprint"]


def dataset_content_hash(ds) -> str:
    """sha256 of the columns trained on (prompt, clips, stored latents): changes exactly when the data does."""
    digest = hashlib.sha256()
    columns = ["prompt", "chosen", "rejected"] + [c for c in LATENT_COLUMNS if c in ds.column_names]
    for batch in ds.select_columns(columns).data.to_batches():
        for column in batch.columns:
            for buffer in column.buffers():
                if buffer is not None:
                    digest.update(memoryview(buffer))
    return digest.hexdigest()


def training_frames(pipe, audio_length_in_s: float) -> int:
    """Mel frames of a training clip: the length asked for, cut down to what the UNet accepts."""
    frames = int(round(audio_length_in_s * pipe.sampling_rate / pipe.hop_length))
    return frames - frames % (pipe.vae_scale_factor * pipe.latent_frame_multiple)


def cache_key(ds, pretrained_model: str, pipe, audio_length_in_s: float, latent_posterior: str) -> str:
    configs = {n: getattr(pipe, n).config for n in ("unet", "vae", "text_encoder")}
    model = json.dumps({n: c.to_dict() if hasattr(c, "to_dict") else dict(c) for n, c in configs.items()},
                       sort_keys=True, default=str)
    key = (f"{CACHE_VERSION}|{dataset_content_hash(ds)}|{pretrained_model}|{model}|{audio_length_in_s}|"
           f"{latent_posterior}|{pipe.latent_fingerprint}")
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def expected_latent_shape(pipe, audio_length_in_s: float) -> tuple[int, int, int]:
    """(channels, frames, bins) of a training clip's latent."""
    frames = training_frames(pipe, audio_length_in_s) // pipe.vae_scale_factor
    return int(pipe.vae.config.latent_channels), frames, int(pipe.latent_mel_bins)


@torch.no_grad()
def build_cache(pipe, ds, dataset: str, audio_length_in_s: float, latent_posterior: str, cache_file: Path) -> dict:
    """Both clips' latents (as posterior mean and std) and prompt embeddings, once per dataset and model.

    A pair that carries the latents its clips were decoded from, in this model's latent space
    (``latent_fingerprint``), trains on those: exactly the clips that were ranked, not their
    vocoded, re-encoded audio (which differed by about 47 % and lifted the base model's loss
    3-10x). Other pairs are VAE-encoded from their audio the way the base was trained:
    ``latent_posterior`` "mode" keeps the posterior mean (std 0), "sample" keeps mean and std
    and ``collate`` samples each step (Tango 2). Stored latents have std 0.

    Stored as safetensors (tensors only: a planted cache file cannot run code). Prompt
    embeddings are kept without padding, concatenated, with each prompt's token offset.
    """
    from safetensors.torch import load_file, save_file

    shape = expected_latent_shape(pipe, audio_length_in_s)
    if cache_file.exists():
        from safetensors import safe_open

        try:
            with safe_open(str(cache_file), framework="pt") as handle:
                meta = json.loads(handle.metadata()["meta"])
            cache = {**load_file(str(cache_file)), **meta}
            check_cache(cache, shape)
            return cache
        except Exception as err:  # truncated, inconsistent, planted or foreign: rebuilt, never executed
            logger.warning(f"ignoring unusable cache {cache_file} ({type(err).__name__}: {err}); rebuilding it")
    base_dir = Path(dataset) if Path(dataset).is_dir() else None
    fingerprint, scaling_factor = pipe.latent_fingerprint, pipe.vae.config.scaling_factor
    keep, bad, prompts, sources = [], {}, [], {}
    stored, to_encode = {}, {}  # position in keep -> (2, C, T, F) latents / [chosen, rejected] waveforms
    for index, row in enumerate(tqdm(ds, desc="read pairs")):
        prompt = row.get("prompt")
        try:
            if not isinstance(prompt, str) or not prompt.strip():
                raise DatasetError("empty prompt")
            latents, source = stored_pair_latents(row, fingerprint, shape)
            latents = None if latents is None else torch.from_numpy(latents)
            pair = None if latents is not None else [decode_audio(row[c], base_dir) for c in ("chosen", "rejected")]
        except (AudioError, DatasetError) as err:
            reason = str(err).split(":")[0].split(" (")[0] if isinstance(err, DatasetError) else type(err).__name__
            bad[reason] = bad.get(reason, 0) + 1
            continue
        sources[source] = sources.get(source, 0) + 1
        if latents is not None:
            stored[len(keep)] = latents / scaling_factor
        else:
            to_encode[len(keep)] = pair
        keep.append(index)
        prompts.append(prompt)
    if not keep:
        raise DatasetError(f"no usable pairs in {dataset!r}: {len(ds)} rows, skipped {describe_skipped(bad)}")
    means = torch.zeros(len(keep), 2, *shape)
    stds = torch.zeros(len(keep), 2, *shape)
    for position, latents in stored.items():
        means[position] = latents
    frames = training_frames(pipe, audio_length_in_s)
    positions = list(to_encode)
    for start in tqdm(range(0, len(positions), 8), desc="encode audio", disable=not positions):
        chunk = positions[start : start + 8]
        fbank, _, _ = wav_to_fbank([clip for p in chunk for clip in to_encode[p]], target_length=frames)
        posterior = pipe.vae.encode(fbank.unsqueeze(1).to(pipe.device, pipe.vae.dtype)).latent_dist
        means[chunk] = posterior.mean.float().cpu().unflatten(0, (-1, 2))
        if latent_posterior == "sample":
            stds[chunk] = posterior.std.float().cpu().unflatten(0, (-1, 2))
    embeds, lengths = [], []
    for start in tqdm(range(0, len(prompts), 8), desc="encode text"):
        hidden, mask = pipe.encode_prompt(prompts[start : start + 8], pipe.device, 1, do_classifier_free_guidance=False)
        for states, valid in zip(hidden.float().cpu(), mask.bool().cpu()):
            embeds.append(states[valid])
            lengths.append(int(valid.sum()))
    tensors = {
        "mean": means.contiguous(),  # (pairs, 2 = chosen/rejected, C, T, F)
        "std": stds.contiguous(),
        "embeds": torch.cat(embeds),  # (all prompts' tokens, D)
        "embed_offsets": torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.long),
    }
    meta = {"rows": keep, "prompts": prompts, "skipped": bad, "scaling_factor": scaling_factor,
            "latent_sources": sources, "stored_latent_pairs": len(stored), "latent_posterior": latent_posterior}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, cache_file)
    return {**tensors, **meta}


def check_cache(cache: dict, shape: tuple[int, int, int]) -> None:
    """Raise ``ValueError`` unless a loaded cache is one ``build_cache`` could have written for latents of
    ``shape``: one (chosen, rejected) mean and std per row, one prompt and one embedding span per row
    (offsets from 0, never decreasing, ending at the last token), every number finite."""
    rows = len(cache["rows"])
    mean, std, embeds, offsets = (cache[name] for name in ("mean", "std", "embeds", "embed_offsets"))
    if tuple(mean.shape) != (rows, 2, *shape) or std.shape != mean.shape:
        raise ValueError(f"latents of shape {tuple(mean.shape)} for {rows} rows of {shape}")
    if len(cache["prompts"]) != rows or embeds.ndim != 2 or tuple(offsets.shape) != (rows + 1,):
        raise ValueError(f"{len(cache['prompts'])} prompts and {tuple(offsets.shape)} offsets for {rows} rows")
    if offsets.is_floating_point() or offsets[0] != 0 or offsets[-1] != len(embeds) or (offsets.diff() < 0).any():
        raise ValueError("embedding offsets do not span the embeddings in order")
    if not all(torch.isfinite(t).all() for t in (mean, std, embeds)) or (std < 0).any():
        raise ValueError("non-finite latents or embeddings")
    if not math.isfinite(cache["scaling_factor"]):
        raise ValueError(f"scaling factor {cache['scaling_factor']}")


def collate(indices: list[int], cache: dict, generator: torch.Generator):
    """A batch of pairs: latents from the cached posteriors (std 0: the stored latent or the mode itself),
    embeddings padded to the longest."""
    mean, std = cache["mean"][indices], cache["std"][indices]
    latents = (mean + std * torch.randn(mean.shape, generator=generator)) * cache["scaling_factor"]
    offsets = cache["embed_offsets"]
    states = [cache["embeds"][offsets[i] : offsets[i + 1]] for i in indices]
    length = max(s.shape[0] for s in states)
    embeds = torch.stack([F.pad(s, (0, 0, 0, length - s.shape[0])) for s in states])
    masks = torch.stack([torch.arange(length) < s.shape[0] for s in states])
    return latents[:, 0], latents[:, 1], embeds, masks


# -- training --------------------------------------------------------------------------------


def process_generator(seed: int, process_index: int, step: int) -> torch.Generator:
    """Noise, timesteps and posterior samples: distinct per process (nanoGPT's seed_offset) and per resumed step."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, process_index, step]).generate_state(1)[0]))


def mirror_units(indices: list[int], cache: dict) -> list[list[int]]:
    """``indices`` grouped into training units: a pair with its mirror (the other's chosen latent is its rejected
    one and the other way round), every other pair alone; in the order of each unit's first index."""
    key = lambda i, side: cache["mean"][i, side].numpy().tobytes()  # noqa: E731
    by_clips = {(key(i, 0), key(i, 1)): i for i in indices}
    units, placed = [], set()
    for i in indices:
        if i in placed:
            continue
        mirror = by_clips.get((key(i, 1), key(i, 0)))
        unit = [i] if mirror is None or mirror in placed or mirror == i else [i, mirror]
        placed.update(unit)
        units.append(unit)
    return units


def preference_step(loss_config, policy, reference, scheduler, batch, generator, device, autocast, with_reference=True,
                    timestep_range: tuple[int, int] | None = None, groups: list[int] | None = None,
                    sum_groups: bool = False):
    """Loss, detached metrics and the noise drawn, for one batch: chosen and rejected share noise and timestep
    (drawn from ``timestep_range``, [low, high), or from all of the scheduler's); so do pairs of the same
    ``groups`` entry (one per pair; ``--mirror_batches``). ``sum_groups``: the loss takes one term per group, its
    pairs' denoising losses summed, so its margin is the sum of theirs (``--mirror_margin``).

    ``autocast`` is a context factory (``accelerator.autocast``): policy and reference run
    under the same one, so that with identical weights the margin is exactly 0. The reference
    runs when ``with_reference`` (for its metrics) or when the loss needs it.
    """
    latents_w, latents_l, embeds, masks = (x.to(device) for x in batch)
    low, high = timestep_range or (0, scheduler.config.num_train_timesteps)
    # one draw per group (without groups every pair is its own: the same draws as one per pair)
    distinct, row_group = np.unique(np.arange(len(latents_w)) if groups is None else np.asarray(groups),
                                    return_inverse=True)
    row_group = torch.from_numpy(row_group)
    noise = torch.randn((len(distinct), *latents_w.shape[1:]), generator=generator)[row_group].to(device)
    timesteps = torch.randint(low, high, (len(distinct),), generator=generator)[row_group].to(device)
    both = lambda x: torch.cat([x, x])  # noqa: E731
    inputs = (torch.cat([latents_w, latents_l]), both(noise), both(timesteps), both(embeds), both(masks.bool()))
    with autocast():
        policy_w, policy_l = denoising_loss(policy, scheduler, *inputs, snr_gamma=loss_config.snr_gamma).chunk(2)
    ref_w = ref_l = None
    if with_reference or loss_config.needs_reference:
        with torch.no_grad(), autocast():
            ref_w, ref_l = denoising_loss(reference, scheduler, *inputs, snr_gamma=loss_config.snr_gamma).chunk(2)
    if sum_groups:
        index = row_group.to(policy_w.device)
        policy_w, policy_l, ref_w, ref_l = (None if x is None else torch.zeros(len(distinct), dtype=x.dtype,
                                            device=x.device).index_add(0, index, x)
                                            for x in (policy_w, policy_l, ref_w, ref_l))
    loss, metrics = preference_loss(loss_config, policy_w, policy_l, ref_w, ref_l)
    return loss, metrics, noise


@torch.no_grad()
def validate(accelerator, policy, reference, scheduler, cache, indices, loss_config, batch_size, seed) -> dict:
    """DPO loss, implicit accuracy and reward margin on held-back pairs, with fixed noise; gathered."""
    dpo = PreferenceLossConfig("dpo", beta_dpo=loss_config.beta_dpo, snr_gamma=loss_config.snr_gamma)
    mine = indices[accelerator.process_index :: accelerator.num_processes]
    generator = process_generator(seed, 10_000 + accelerator.process_index, 0)  # the same noise every epoch
    policy.eval()
    totals = torch.zeros(4, device=accelerator.device)  # pairs, loss, acc, margin (sums)
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        loss, metrics, _ = preference_step(dpo, policy, reference, scheduler, collate(chunk, cache, generator),
                                           generator, accelerator.device, accelerator.autocast)
        totals += torch.tensor([len(chunk), loss.item() * len(chunk), metrics["implicit_acc"].item() * len(chunk),
                                metrics["reward_margin"].item() * len(chunk)], device=accelerator.device)
    policy.train()
    totals = accelerator.reduce(totals, "sum")
    n = max(totals[0].item(), 1)
    return {"val_loss": totals[1].item() / n, "val_implicit_acc": totals[2].item() / n,
            "val_reward_margin": totals[3].item() / n}


def judge_clips(accelerator, pipe, prompts: int, seed: int, steps: int) -> tuple[dict, list]:
    """Sound-world models: mean judge score etc. of one clip per fixed prompt, prompts split over processes."""
    from accelerate.utils import gather_object

    from soundworld import sample_prompts
    from soundworld.evaluate import evaluate_pipeline, summarize

    texts = sample_prompts("train", prompts, seed)
    seeds = [seed + i for i in range(prompts)]
    pipe.set_progress_bar_config(disable=True)
    with accelerator.split_between_processes(list(zip(texts, seeds))) as mine:
        results, _ = evaluate_pipeline(pipe, [t for t, _ in mine], [s for _, s in mine],
                                       steps=steps, guidance=3.0,
                                       batch_size=8, progress=False) if mine else ([], [])
    results = gather_object(results)
    summary = summarize(results)
    return {f"judge_{name}": summary[name] for name in ("mean_score", "event_recall", "order_accuracy",
                                                         "count_accuracy")}, results


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss or non-finite weights: the run stops, and nothing non-finite is saved."""


def check_finite_weights(model, what: str) -> None:
    """Raise ``TrainingDiverged`` before ``what`` is saved if any weight of ``model`` is NaN or infinite."""
    bad = sum(int((~torch.isfinite(p)).sum()) for p in model.parameters())
    if bad:
        raise TrainingDiverged(f"{bad} non-finite UNet weights: not saving {what}; lower --learning_rate or "
                               "check the dataset, then start again (or resume from the last checkpoint)")


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders that were completed (renamed into place with their config), oldest first."""
    found = [p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)
             and (p / "train_config.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator, model, output_dir: Path, step: int, config: dict, history: dict, limit: int) -> None:
    """Every rank writes its part into a temporary folder; the main process renames it into place when complete.
    ``model`` (the policy) must have finite weights: a non-finite one is never checkpointed."""
    check_finite_weights(model, f"checkpoint-{step}")
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".partial-checkpoint-{step}"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / "history.json").write_text(json.dumps(history))
        (partial / "train_config.json").write_text(json.dumps(config, indent=1))  # written last: the mark of completion
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in complete_checkpoints(output_dir)[:-limit] if limit > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def overfitting(record: dict, epoch_train_accuracy: list[float]) -> bool:
    """The signature measured on this project's data: the held-out-prompt DPO loss above log 2 (worse than the
    untouched model, whose loss is exactly log 2) while the training pairs' implicit accuracy is above chance."""
    return (record.get("val_loss") is not None and record["val_loss"] > math.log(2)
            and bool(epoch_train_accuracy) and float(np.mean(epoch_train_accuracy)) > 0.5)


def plot_curves(history: dict, path: Path) -> None:
    """Training loss and implicit accuracy per step, validation points per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "val_loss", "loss"), ("implicit_acc", "val_implicit_acc", "implicit accuracy")]
    if any("judge_mean_score" in v for v in history["validation"]):
        panels.append((None, "judge_mean_score", "judge score (validation prompts)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2))
    for axis, (train_key, val_key, title) in zip(np.atleast_1d(axes), panels):
        if train_key:
            axis.plot([r["step"] for r in history["train"]], [r[train_key] for r in history["train"]], lw=1,
                      label="train")
        points = [(r["step"], r[val_key]) for r in history["validation"] if r.get(val_key) is not None]
        if points:
            axis.plot(*zip(*points), "o-", label="validation")
        axis.set_title(title)
        axis.set_xlabel("optimizer step")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_model_card(output_dir: Path, config: dict, stats: dict) -> None:
    lines = [
        "---", "library_name: diffusers", "tags:", "- text-to-audio", "- tango", "- dpo", "---", "",
        f"# {output_dir.name}", "",
        f"Tango fine-tuned with `{config['loss']}` (losses.py) by Tango DPO Studio's `train_dpo.py`.", "",
        "| | |", "| --- | --- |",
        f"| base model | `{config['pretrained_model']}` |",
        f"| dataset | `{config['dataset']}` ({stats['pairs']} usable pairs; rows skipped: {describe_skipped(stats['skipped'])}) |",
        f"| latents | {stats['stored_latent_pairs']} pairs trained on the latents their clips were sampled as; "
        f"{stats['pairs'] - stats['stored_latent_pairs']} encoded from audio (posterior {config['latent_posterior']}) |",
        f"| validation | {stats['validation_pairs']} pairs of held-out prompts; "
        f"{stats['judge_prompts']} training-split prompts judged per epoch |",
        f"| loss | `{config['loss']}`, beta_dpo {config['beta_dpo']}, beta_mapo {config['beta_mapo']}, "
        f"{config['sft_first_epochs']} SFT epoch(s) first |",
        f"| steps | {stats['steps']} x {config['train_batch_size']} pairs x {config['num_processes']} processes x "
        f"{config['gradient_accumulation_steps']} accumulation |",
        f"| learning rate | {config['learning_rate']} ({config['lr_scheduler']}, {config['lr_warmup_steps']} warmup) |",
        f"| LoRA rank | {config['lora_rank'] or 'full UNet'} |",
        f"| final implicit accuracy | {stats.get('implicit_acc', float('nan')):.3f} |", "",
        *([f"**Overfitting** after epoch(s) {', '.join(str(r['epoch']) for r in stats['validation'] if r.get('overfitting'))}: "
           "the held-out-prompt DPO loss rose above log 2 while training accuracy climbed.", ""]
          if any(r.get("overfitting") for r in stats["validation"]) else []),
        "```python", "from pipeline import load_pipeline", f"pipe = load_pipeline({str(output_dir)!r})", "```", "",
    ]
    (output_dir / "README.md").write_text("\n".join(lines))


@dataclass
class Run:
    """What the stages of ``main`` share: the models, the data, the optimizer and how far training has come."""

    args: argparse.Namespace
    accelerator: Accelerator
    output_dir: Path
    pipe: object = None  # the loaded TangoPipeline: its UNet is the frozen reference
    reference: torch.nn.Module = None
    policy: torch.nn.Module = None
    noise_scheduler: object = None
    config: dict = field(default_factory=dict)  # the resolved configuration: saved in checkpoints, checked on resume
    loss_config: PreferenceLossConfig = None
    sft_config: PreferenceLossConfig = None
    cache: dict = None  # the training pairs, encoded
    val_cache: dict = None
    train_indices: list = field(default_factory=list)
    val_indices: list = field(default_factory=list)
    group_of: dict = field(default_factory=dict)  # pair -> its mirror unit (--mirror_batches)
    trainable: list = field(default_factory=list)
    optimizer: torch.optim.Optimizer = None
    loader: torch.utils.data.DataLoader = None
    lr_scheduler: object = None
    max_steps: int = 0
    epochs: int = 0
    step: int = 0
    first_epoch: int = 0
    skip_batches: int = 0
    history: dict = field(default_factory=lambda: {"train": [], "validation": []})
    stats: dict = field(default_factory=dict)  # the last step's metrics
    first_noise: float | None = None  # each process's first noise draw (the summary shows they differ)


def load_models(run: Run) -> None:
    """The pipeline, its frozen UNet as the reference and a trainable copy as the policy (LoRA or full), the
    training noise scheduler and the losses."""
    args, accelerator = run.args, run.accelerator
    # The registry shares loaded pipelines: the reference is never changed; the policy is a copy. Two UNets.
    run.pipe = load_pipeline(args.pretrained_model, device=accelerator.device, dtype=torch.float32)
    run.reference = run.pipe.unet.eval()
    run.policy = copy.deepcopy(run.pipe.unet).train()
    if args.lora_rank > 0:
        add_lora(run.policy, args.lora_rank, ["to_k", "to_q", "to_v", "to_out.0"])
    if args.gradient_checkpointing:
        run.policy.enable_gradient_checkpointing()
    from diffusers import DDPMScheduler

    run.noise_scheduler = DDPMScheduler.from_config(run.pipe.scheduler.config)
    timesteps = run.noise_scheduler.config.num_train_timesteps
    run.config = {**vars(args), "audio_length_in_s": args.audio_length_in_s or run.pipe.default_audio_length_in_s,
                  "latent_posterior": args.latent_posterior or run.pipe.config.latent_posterior,
                  "num_processes": accelerator.num_processes}
    run.loss_config = PreferenceLossConfig(args.loss, beta_dpo=args.beta_dpo, sft_weight=args.sft_weight,
                                           beta_mapo=args.beta_mapo, snr_gamma=args.snr_gamma,
                                           num_train_timesteps=timesteps)
    run.sft_config = PreferenceLossConfig("sft", beta_dpo=args.beta_dpo, snr_gamma=args.snr_gamma)
    if args.timestep_range is not None and args.timestep_range[1] > timesteps:
        raise SystemExit(f"error: --timestep_range {args.timestep_range}: the model has {timesteps} training timesteps")


def load_data(run: Run) -> None:
    """The pairs encoded once (by the main process; the others read its cache) and split by prompt."""
    args, accelerator = run.args, run.accelerator
    audio_length_in_s, latent_posterior = run.config["audio_length_in_s"], run.config["latent_posterior"]
    cache_dir = Path(args.cache_dir) if args.cache_dir else run.output_dir / "cache"
    caches = {}
    for name, split in [("train", args.dataset_split), ("validation", args.validation_split)]:
        if split is None:
            continue
        ds = load_pairs(args.dataset, split)
        key = cache_key(ds, args.pretrained_model, run.pipe, audio_length_in_s, latent_posterior)
        with accelerator.main_process_first():
            caches[name] = build_cache(run.pipe, ds, args.dataset, audio_length_in_s, latent_posterior,
                                       cache_dir / f"pairs-{key}.safetensors")
        logger.info(f"{name}: {len(caches[name]['rows'])} usable pairs of {len(ds)}; "
                    f"skipped: {describe_skipped(caches[name]['skipped'])}; latents: {caches[name]['latent_sources']}")
    run.cache = caches["train"]
    run.train_indices, run.val_indices = split_validation(run.cache["prompts"], args.validation_fraction, args.seed)
    run.val_cache = caches.get("validation", run.cache)
    if "validation" in caches:
        run.val_indices = list(range(len(run.val_cache["rows"])))


def prepare_optimization(run: Run) -> None:
    """The loader (with --mirror_batches it draws units, a pair and its mirror), the optimizer, the learning-rate
    schedule and the step arithmetic, all prepared by accelerate."""
    args, accelerator = run.args, run.accelerator
    units = mirror_units(run.train_indices, run.cache) if args.mirror_batches else [[i] for i in run.train_indices]
    if args.mirror_batches:
        logger.info(f"--mirror_batches: {sum(len(u) == 2 for u in units)} pairs with their mirror, "
                    f"{sum(len(u) == 1 for u in units)} alone")
    run.group_of = {i: unit[0] for unit in units for i in unit}
    loader = torch.utils.data.DataLoader(units, batch_size=args.train_batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed),
                                         collate_fn=lambda batch: [i for unit in batch for i in unit])
    run.trainable = [p for p in run.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(run.trainable, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    run.policy, run.optimizer, run.loader = accelerator.prepare(run.policy, optimizer, loader)
    # Step arithmetic on the sharded loader: each process sees 1/N of the batches.
    steps_per_epoch = math.ceil(len(run.loader) / args.gradient_accumulation_steps)
    run.max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    run.epochs = math.ceil(run.max_steps / steps_per_epoch)
    from diffusers.optimization import get_scheduler

    # The prepared scheduler steps once per process per optimizer step, hence the factor.
    run.lr_scheduler = accelerator.prepare(get_scheduler(
        args.lr_scheduler, run.optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=run.max_steps * accelerator.num_processes))
    if args.report_to != "none":
        accelerator.init_trackers("tango-dpo", config={k: v for k, v in run.config.items()
                                                       if isinstance(v, (int, float, str, bool))})


def resume(run: Run) -> None:
    """With --resume_from_checkpoint: the weights, optimizer, history and step of a complete checkpoint whose
    configuration matches this run's."""
    args = run.args
    if not args.resume_from_checkpoint:
        return
    if args.resume_from_checkpoint == "latest":
        found = complete_checkpoints(run.output_dir)
        path = found[-1] if found else None
    else:
        path = Path(args.resume_from_checkpoint)
        if not (path / "train_config.json").is_file():
            raise CheckpointError(f"{path} is not a complete checkpoint of train_dpo.py (no train_config.json)")
    if path is None:
        logger.info("no complete checkpoint to resume from: starting fresh")
        return
    mismatch = resume_mismatch(json.loads((path / "train_config.json").read_text()), run.config, RESUMABLE_CHANGES)
    if mismatch:
        raise ConfigMismatch(mismatch)
    run.accelerator.load_state(str(path))
    run.history = json.loads((path / "history.json").read_text())
    run.step = int(path.name.split("-")[1])
    run.first_epoch, run.skip_batches = divmod(run.step * args.gradient_accumulation_steps, len(run.loader))
    logger.info(f"resumed from {path} at step {run.step}")


def run_validation(run: Run, epoch: int) -> None:
    """Held-out-prompt DPO metrics and, with --judge_prompts, the judge's scores of fresh clips; the pipeline is
    kept in OUTPUT_DIR/best when its score is the best so far."""
    args, accelerator, policy, pipe = run.args, run.accelerator, run.policy, run.pipe
    record = {"step": run.step, "epoch": epoch}
    if run.val_indices:
        record.update(validate(accelerator, policy, run.reference, run.noise_scheduler, run.val_cache,
                               run.val_indices, run.loss_config, args.train_batch_size, args.seed))
    if args.judge_prompts:
        candidate = pipe.with_components(unet=accelerator.unwrap_model(policy).eval())
        judge_steps = args.judge_steps or pipe.config.default_num_inference_steps
        scores, results = judge_clips(accelerator, candidate, args.judge_prompts, args.judge_seed, judge_steps)
        record.update(scores)
        policy.train()
        tracker = accelerator.get_tracker("tensorboard", unwrap=True) if "tensorboard" in args.report_to else None
        if tracker is not None and accelerator.is_main_process:
            audio = candidate(results[0].prompt, num_inference_steps=judge_steps,
                              generator=torch.Generator().manual_seed(args.judge_seed)).audios[0]
            tracker.add_audio("validation/clip_0", torch.as_tensor(audio), run.step, sample_rate=pipe.sampling_rate)
    if len(record) == 2:
        return
    score = record.get("judge_mean_score", -record.get("val_loss", 0.0))
    best = max((r["score"] for r in run.history["validation"]), default=-math.inf)
    record["score"] = score
    epoch_train = [r["implicit_acc"] for r in run.history["train"] if r["epoch"] == epoch]
    if overfitting(record, epoch_train):
        record["overfitting"] = True
        logger.warning(f"overfitting after epoch {epoch}: held-out-prompt DPO loss {record['val_loss']:.3f} is "
                       f"above log 2 (the untouched model's) while training accuracy is "
                       f"{np.mean(epoch_train):.2f}: the pairs are memorised, not learned")
    run.history["validation"].append(record)
    accelerator.log({k: v for k, v in record.items() if k not in ("step", "epoch")}, step=run.step)
    logger.info(f"validation {'before training' if epoch < 0 else f'after epoch {epoch}'}: {record}")
    if score > best:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            unet = merged_unet(copy.deepcopy(accelerator.unwrap_model(policy)), args.lora_rank > 0)
            check_finite_weights(unet, "best/")
            save_pipeline_atomically(pipe.with_components(unet=unet), run.output_dir / "best")
            (run.output_dir / "best" / "validation.json").write_text(json.dumps(record, indent=1))


def train_epoch(run: Run, epoch: int, progress) -> None:
    """One epoch of preference steps (SFT steps for the first --sft_first_epochs), with a checkpoint every
    --checkpointing_steps; stops early at --max_train_steps."""
    args, accelerator = run.args, run.accelerator
    step_config = run.sft_config if epoch < args.sft_first_epochs else run.loss_config
    loader = accelerator.skip_first_batches(run.loader, run.skip_batches) if epoch == run.first_epoch else run.loader
    generator = process_generator(args.seed, accelerator.process_index, run.step)
    window = []
    for indices in loader:
        with accelerator.accumulate(run.policy):
            batch = collate(indices, run.cache, generator)
            loss, metrics, noise = preference_step(step_config, run.policy, run.reference, run.noise_scheduler, batch,
                                                   generator, accelerator.device, accelerator.autocast,
                                                   with_reference=run.loss_config.needs_reference,
                                                   timestep_range=args.timestep_range,
                                                   groups=[run.group_of[i] for i in indices] if args.mirror_batches
                                                   else None, sum_groups=args.mirror_margin)
            if run.first_noise is None:
                run.first_noise = noise.flatten()[:4].sum().item()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(run.trainable, args.max_grad_norm)
            run.optimizer.step()
            run.lr_scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        window.append({"loss": loss.detach(), **metrics})
        if not accelerator.sync_gradients:
            continue
        # Metrics of the whole global batch: mean over the accumulation window and the processes.
        names = sorted(window[0])
        values = torch.stack([torch.stack([w[n].float() for w in window]).mean() for n in names])
        values = accelerator.reduce(values.to(accelerator.device), "mean")
        window = []
        run.step += 1
        run.stats = {**dict(zip(names, values.tolist())), "lr": run.lr_scheduler.get_last_lr()[0]}
        if not math.isfinite(run.stats["loss"]):  # the same on every process (reduced): all stop here
            raise TrainingDiverged(f"the loss is {run.stats['loss']} at step {run.step}: stopping, nothing saved "
                                   "since the last checkpoint; check the dataset or lower --learning_rate")
        run.history["train"].append({"step": run.step, "epoch": epoch, **run.stats})
        progress.update(1)
        progress.set_postfix(loss=f"{run.stats['loss']:.4f}", acc=f"{run.stats['implicit_acc']:.2f}")
        accelerator.log(run.stats, step=run.step)
        if run.step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, run.policy, run.output_dir, run.step, run.config, run.history,
                            args.checkpoints_total_limit)
        if run.step >= run.max_steps:
            break
    run.skip_batches = 0


def save_outputs(run: Run) -> None:
    """The trained pipeline, its card, configuration, curve and metrics (written last: the run's mark of
    completion), the LoRA adapter, and with --push_to_hub the folder on the Hub."""
    from accelerate.utils import gather_object

    args, accelerator, output_dir, cache = run.args, run.accelerator, run.output_dir, run.cache
    noise_per_process = gather_object([run.first_noise])
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unet = accelerator.unwrap_model(run.policy)
    check_finite_weights(unet, "the trained pipeline")
    if args.lora_rank > 0:
        unet.save_lora_adapter(str(output_dir / "lora"))
    run.pipe.with_components(unet=merged_unet(unet, args.lora_rank > 0)).save_pretrained(output_dir,
                                                                                        safe_serialization=True)
    history = run.history
    summary = {"steps": run.step, "pairs": len(cache["rows"]), "train_pairs": len(run.train_indices),
               "validation_pairs": len(run.val_indices), "skipped": cache["skipped"],
               "stored_latent_pairs": cache["stored_latent_pairs"], "latent_sources": cache["latent_sources"],
               "latent_posterior": run.config["latent_posterior"], "judge_prompts": args.judge_prompts,
               "processes": accelerator.num_processes, **run.stats, "first_noise_per_process": noise_per_process,
               "validation": history["validation"],
               "best": max(history["validation"], key=lambda r: r["score"], default=None)}
    write_model_card(output_dir, run.config, summary)
    (output_dir / "train_config.json").write_text(json.dumps(run.config, indent=1))
    if history["train"]:
        plot_curves(history, output_dir / "training_curve.png")
    tmp = output_dir / "train_metrics.json.tmp"
    tmp.write_text(json.dumps({**summary, "history": history["train"]}, indent=1))
    os.replace(tmp, output_dir / "train_metrics.json")  # last: the run's mark of completion
    logger.info(f"wrote {output_dir}")
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.hub_model_id, exist_ok=True)
        api.upload_folder(repo_id=args.hub_model_id, folder_path=output_dir,
                          ignore_patterns=["checkpoint-*", ".partial-*", "cache/*", "lora/*", "best/*"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision,
                              log_with=None if args.report_to == "none" else args.report_to,
                              project_dir=str(output_dir))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    run = Run(args, accelerator, output_dir)
    load_models(run)
    load_data(run)
    prepare_optimization(run)
    resume(run)
    if run.step == 0:  # the starting model's scores: the curve's origin, and "best" stays it if no epoch beats it
        run_validation(run, -1)
    progress = tqdm(total=run.max_steps, initial=run.step, desc="dpo", disable=not accelerator.is_local_main_process)
    for epoch in range(run.first_epoch, run.epochs):
        if run.step >= run.max_steps:  # resumed from the last checkpoint of a finished run
            break
        train_epoch(run, epoch, progress)
        run_validation(run, epoch)
        if run.step >= run.max_steps:
            break
    progress.close()
    save_outputs(run)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # shut gloo down cleanly: exiting with it open could hang a rank
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DatasetError, ConfigMismatch, CheckpointError, TrainingDiverged, SpecError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
