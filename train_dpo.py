"""Fine-tune a Tango pipeline with Diffusion-DPO (Tango 2's recipe) on a preference dataset.

    accelerate launch train_dpo.py --pretrained_model declare-lab/tango --dataset declare-lab/audio-alpaca \\
        --output_dir tango-dpo --learning_rate 9.6e-7 --train_batch_size 4 --gradient_accumulation_steps 4 \\
        --beta_dpo 2000 --num_train_epochs 8 --mixed_precision fp16
    python train_dpo.py --pretrained_model tiny --dataset ./export --output_dir tiny-dpo --max_train_steps 300
    python app.py --dpo-model tiny-dpo        # the app loads the result (any spec works)

The dataset is any Hugging Face dataset (Hub id or local folder) with ``prompt``, ``chosen``
and ``rejected`` columns (audio: an Audio feature with bytes or a path, or a path string),
like declare-lab/audio-alpaca or what ``python -m annotate export`` writes. Rows that cannot
be used (undecodable audio, empty prompt) are counted and reported; other sample rates are
resampled to 16 kHz. VAE posteriors and text embeddings are computed once and cached on
disk, keyed by the dataset's fingerprint and the model, so each step only runs the UNet.

Each step noises the chosen and rejected latents with the same noise and timestep and
runs them through the UNet as one batch; the reference model (a frozen copy, or the same
UNet with its LoRA adapters disabled) runs under no_grad. ``--loss`` picks the preference
loss (pipeline/dpo.py). The output is a diffusers-format pipeline that ``load_pipeline``
loads, with a model card; ``--resume_from_checkpoint latest`` continues a killed run.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from pipeline import load_pipeline
from pipeline.audio import AudioError, load_audio, wav_to_fbank
from pipeline.dpo import PREFERENCE_LOSSES, mapo_loss, reward_margin

logger = logging.getLogger("train_dpo")
CACHE_VERSION = 1  # bump when what the cache holds changes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # model and data
    parser.add_argument("--pretrained_model", default="tiny", help="model spec: embedded name, folder or Hub id")
    parser.add_argument("--dataset", required=True, help="Hub dataset id or local folder (prompt/chosen/rejected)")
    parser.add_argument("--dataset_split", default="train")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--cache_dir", default=None, help="latent/embedding cache (default OUTPUT_DIR/cache)")
    parser.add_argument("--audio_length_in_s", type=float, default=None, help="clip length trained on (default: the model's)")
    # loss
    parser.add_argument("--loss", default="dpo", choices=sorted(PREFERENCE_LOSSES) + ["mapo"])
    parser.add_argument("--beta_dpo", type=float, default=2000.0, help="β of the DPO-family losses (Tango 2: 2000)")
    parser.add_argument("--sft_weight", type=float, default=1.0, help="weight of the chosen clip's loss in CRPO")
    parser.add_argument("--beta_mapo", type=float, default=0.1, help="margin weight of MaPO")
    # optimisation
    parser.add_argument("--learning_rate", type=float, default=1e-6)
    parser.add_argument("--lr_warmup_steps", type=int, default=0)
    parser.add_argument("--train_batch_size", type=int, default=4, help="pairs per device per step")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps; overrides epochs")
    parser.add_argument("--num_train_epochs", type=int, default=1)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--lora_rank", type=int, default=0, help="0 trains the full UNet; >0 LoRA on its attention")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    # checkpoints, logging, Hub
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=2)
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    parser.add_argument("--report_to", default="none", help="tensorboard, wandb, ... or none")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    args = parser.parse_args(argv)
    if args.max_train_steps is not None and args.max_train_steps < 1:
        parser.error("--max_train_steps must be >= 1")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (owner/name)")
    return args


# -- data ------------------------------------------------------------------------------------


class DatasetError(ValueError):
    """A preference dataset that cannot be trained on."""


def decode_audio(value, base_dir: Path | None) -> np.ndarray:
    """An Audio cell ({"bytes", "path"}) or a path string -> mono 16 kHz float32."""
    if isinstance(value, dict) and value.get("bytes"):
        return load_audio(value["bytes"])
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, str) or not path:
        raise AudioError("no audio bytes or path")
    path = Path(path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return load_audio(path)


def load_pairs(dataset: str, split: str):
    """Load the dataset with audio left undecoded (datasets' decoder needs torchcodec)."""
    from datasets import Audio, load_dataset

    # A local export is rewritten in place (same file names); never serve it from datasets' cache.
    # (The rows are checked below, not against split sizes a card may still state from before.)
    fresh = {"download_mode": "force_redownload", "verification_mode": "no_checks"} if Path(dataset).is_dir() else {}
    try:
        ds = load_dataset(dataset, split=split, **fresh)
    except Exception as err:  # datasets raises many types; say what failed
        raise DatasetError(f"cannot load dataset {dataset!r} (split {split!r}): {type(err).__name__}: {err}") from None
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in ds.column_names]
    if missing:
        raise DatasetError(f"dataset {dataset!r} lacks column(s) {missing}; it has {ds.column_names}")
    for column in ("chosen", "rejected"):
        if isinstance(ds.features[column], Audio):
            ds = ds.cast_column(column, Audio(decode=False))
    return ds


def training_frames(pipe, audio_length_in_s: float) -> int:
    """Mel frames of a training clip: the length asked for, cut down to what the UNet accepts."""
    frames = int(round(audio_length_in_s * pipe.sampling_rate / pipe.hop_length))
    return frames - frames % (pipe.vae_scale_factor * pipe.latent_frame_multiple)


@torch.no_grad()
def build_cache(pipe, ds, dataset: str, args, cache_file: Path) -> dict:
    """VAE posteriors (mean, std) of both clips and prompt embeddings, once per dataset and model."""
    if cache_file.exists():
        return torch.load(cache_file, weights_only=False)
    base_dir = Path(dataset) if Path(dataset).is_dir() else None
    frames = training_frames(pipe, args.audio_length_in_s)
    keep, bad, prompts, waves = [], {}, [], []
    for index, row in enumerate(tqdm(ds, desc="decode pairs")):
        prompt = row.get("prompt")
        try:
            if not isinstance(prompt, str) or not prompt.strip():
                raise DatasetError("empty prompt")
            pair = [decode_audio(row[c], base_dir) for c in ("chosen", "rejected")]
        except (AudioError, DatasetError) as err:
            reason = str(err).split(":")[0] if isinstance(err, DatasetError) else type(err).__name__
            bad[reason] = bad.get(reason, 0) + 1
            continue
        keep.append(index)
        prompts.append(prompt)
        waves.append(pair)
    if not keep:
        raise DatasetError(f"no usable pairs in {dataset!r}: {len(ds)} rows, skipped {bad}")
    means, stds, embeds, masks = [], [], [], []
    for start in tqdm(range(0, len(keep), 8), desc="encode latents and text"):
        clips = [clip for pair in waves[start : start + 8] for clip in pair]
        fbank, _, _ = wav_to_fbank(clips, target_length=frames)
        posterior = pipe.vae.encode(fbank.unsqueeze(1).to(pipe.device, pipe.vae.dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        hidden, mask = pipe.encode_prompt(prompts[start : start + 8], pipe.device, 1, do_classifier_free_guidance=False)
        embeds += list(hidden.float().cpu())
        masks += list(mask.cpu())
    cache = {
        "mean": torch.cat(means).unflatten(0, (-1, 2)),  # (pairs, 2 = chosen/rejected, C, T, F)
        "std": torch.cat(stds).unflatten(0, (-1, 2)),
        "embeds": embeds,
        "masks": masks,
        "rows": keep,
        "skipped": bad,
        "scaling_factor": pipe.vae.config.scaling_factor,
    }
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    torch.save(cache, tmp)
    os.replace(tmp, cache_file)
    return cache


def cache_key(ds, args, pipe) -> str:
    model = json.dumps({n: dict(getattr(pipe, n).config) for n in ("unet", "vae")}, sort_keys=True, default=str)
    key = f"{CACHE_VERSION}|{ds._fingerprint}|{args.pretrained_model}|{model}|{args.audio_length_in_s}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def collate(indices: list[int], cache: dict, generator: torch.Generator):
    """A batch of pairs: latents sampled from the cached posteriors, embeddings padded to the longest."""
    mean, std = cache["mean"][indices], cache["std"][indices]
    latents = (mean + std * torch.randn(mean.shape, generator=generator)) * cache["scaling_factor"]
    length = max(cache["embeds"][i].shape[0] for i in indices)
    embeds = torch.stack([F.pad(cache["embeds"][i], (0, 0, 0, length - cache["embeds"][i].shape[0])) for i in indices])
    masks = torch.stack([F.pad(cache["masks"][i], (0, length - cache["masks"][i].shape[0])) for i in indices])
    return latents[:, 0], latents[:, 1], embeds, masks


# -- training --------------------------------------------------------------------------------


def denoising_losses(unet, scheduler, latents, noise, timesteps, embeds, masks) -> torch.Tensor:
    """Per-sample MSE of the UNet's prediction (v or ε, as the scheduler is configured). Shape: `(batch,)`."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(noisy, timesteps, encoder_hidden_states=embeds, encoder_attention_mask=masks).sample
    return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


def preference_step(args, policy, reference, scheduler, batch, generator, device):
    """Loss and metrics for one batch: chosen and rejected share noise and timestep."""
    latents_w, latents_l, embeds, masks = (x.to(device) for x in batch)
    noise = torch.randn(latents_w.shape, generator=generator).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents_w),), generator=generator).to(device)
    both = lambda x: torch.cat([x, x])  # noqa: E731
    latents = torch.cat([latents_w, latents_l])
    inputs = (latents.to(policy.dtype), both(noise).to(policy.dtype), both(timesteps), both(embeds).to(policy.dtype), both(masks.bool()))
    model_w, model_l = denoising_losses(policy, scheduler, *inputs).chunk(2)
    if args.loss == "mapo":
        loss, accuracy = mapo_loss(model_w, model_l, args.beta_mapo, num_train_timesteps=scheduler.config.num_train_timesteps)
        return loss, {"implicit_acc": accuracy.item(), "loss_chosen": model_w.mean().item()}
    with torch.no_grad(), reference as ref_unet:
        ref_w, ref_l = denoising_losses(ref_unet, scheduler, *inputs).chunk(2)
    extra = {"sft_weight": args.sft_weight} if args.loss == "crpo" else {}
    loss, accuracy = PREFERENCE_LOSSES[args.loss](model_w, model_l, ref_w, ref_l, args.beta_dpo, **extra)
    margin = reward_margin(model_w, model_l, ref_w, ref_l, args.beta_dpo).detach()
    return loss, {"implicit_acc": accuracy.item(), "reward_margin": margin.mean().item(),
                  "loss_chosen": model_w.mean().item()}


class FrozenReference:
    """The reference model as a context manager: a frozen copy, or the policy with LoRA switched off."""

    def __init__(self, policy, lora: bool):
        self.policy, self.lora = policy, lora
        self.copy = None if lora else copy.deepcopy(policy).requires_grad_(False).eval()

    def __enter__(self):
        if self.lora:
            self.policy.disable_adapters()
            return self.policy
        return self.copy

    def __exit__(self, *exc):
        if self.lora:
            self.policy.enable_adapters()


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def write_model_card(output_dir: Path, args, stats: dict) -> None:
    lines = [
        "---", "library_name: diffusers", "tags:", "- text-to-audio", "- tango", "- dpo", "---", "",
        f"# {output_dir.name}", "",
        f"Tango fine-tuned with `{args.loss}` (pipeline/dpo.py) by Tango DPO Studio's `train_dpo.py`.", "",
        "| | |", "| --- | --- |",
        f"| base model | `{args.pretrained_model}` |",
        f"| dataset | `{args.dataset}` ({stats['pairs']} usable pairs, skipped {stats['skipped']}) |",
        f"| loss | `{args.loss}`, beta_dpo {args.beta_dpo}, beta_mapo {args.beta_mapo} |",
        f"| steps | {stats['steps']} x {args.train_batch_size} pairs x {args.gradient_accumulation_steps} accumulation |",
        f"| learning rate | {args.learning_rate} |",
        f"| LoRA rank | {args.lora_rank or 'full UNet'} |",
        f"| final implicit accuracy | {stats.get('implicit_acc', float('nan')):.3f} |", "",
        "```python", "from pipeline import load_pipeline", f"pipe = load_pipeline({str(output_dir)!r})", "```", "",
    ]
    (output_dir / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(output_dir),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(args.seed)

    # Model: the registry shares loaded pipelines, so the policy is a copy of its UNet.
    pipe = load_pipeline(args.pretrained_model, device=accelerator.device, dtype=torch.float32)
    args.audio_length_in_s = args.audio_length_in_s or pipe.default_audio_length_in_s
    policy = copy.deepcopy(pipe.unet).train()
    if args.lora_rank > 0:
        from peft import LoraConfig

        policy.requires_grad_(False)
        policy.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, init_lora_weights="gaussian",
                                      target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if args.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    reference = FrozenReference(policy, lora=args.lora_rank > 0)
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    # Data, encoded once.
    ds = load_pairs(args.dataset, args.dataset_split)
    cache_dir = Path(args.cache_dir) if args.cache_dir else output_dir / "cache"
    with accelerator.main_process_first():
        cache = build_cache(pipe, ds, args.dataset, args, cache_dir / f"pairs-{cache_key(ds, args, pipe)}.pt")
    pairs = len(cache["rows"])
    logger.info(f"{pairs} usable pairs of {len(ds)}; skipped: {cache['skipped'] or 'none'}")
    loader = torch.utils.data.DataLoader(list(range(pairs)), batch_size=args.train_batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed), collate_fn=list)
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    epochs = math.ceil(max_steps / steps_per_epoch)

    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, args.lr_warmup_steps)))
    policy, optimizer, loader, lr_scheduler = accelerator.prepare(policy, optimizer, loader, lr_scheduler)
    if args.report_to != "none":
        accelerator.init_trackers("tango-dpo", config={k: v for k, v in vars(args).items() if v is not None})

    step, first_epoch, skip_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        path = latest_checkpoint(output_dir) if args.resume_from_checkpoint == "latest" else Path(args.resume_from_checkpoint)
        if path is None:
            logger.info("no checkpoint to resume from: starting fresh")
        else:
            accelerator.load_state(str(path))
            step = int(path.name.split("-")[1])
            first_epoch, skip_batches = divmod(step * args.gradient_accumulation_steps, len(loader))
            logger.info(f"resumed from {path} at step {step}")

    generator = torch.Generator().manual_seed(args.seed + step)
    progress = tqdm(total=max_steps, initial=step, desc="dpo", disable=not accelerator.is_local_main_process)
    stats = {}
    for epoch in range(first_epoch, epochs):
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if epoch == first_epoch else loader
        for indices in epoch_loader:
            with accelerator.accumulate(policy):
                batch = collate(indices, cache, generator)
                loss, stats = preference_step(args, policy, reference, noise_scheduler, batch, generator, accelerator.device)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            stats.update(loss=loss.item(), lr=lr_scheduler.get_last_lr()[0])
            progress.update(1)
            progress.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['implicit_acc']:.2f}")
            accelerator.log(stats, step=step)
            if step % args.checkpointing_steps == 0 and accelerator.is_main_process:
                accelerator.save_state(str(output_dir / f"checkpoint-{step}"))
                for old in sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[: -args.checkpoints_total_limit]:
                    shutil.rmtree(old)
            if step >= max_steps:
                break
        if step >= max_steps:
            break
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(policy)
        if args.lora_rank > 0:
            unet.save_lora_adapter(str(output_dir / "lora"))
            unet.fuse_lora()
            unet.unload_lora()
        # Same components and settings (e.g. the default sampling steps) with the tuned UNet.
        tuned = type(pipe)(**{**pipe.components, "unet": unet.eval()},
                           default_num_inference_steps=pipe.config.default_num_inference_steps)
        tuned.save_pretrained(output_dir, safe_serialization=True)
        write_model_card(output_dir, args, {"pairs": pairs, "skipped": cache["skipped"], "steps": step, **stats})
        (output_dir / "train_metrics.json").write_text(json.dumps({"steps": step, "pairs": pairs, "skipped": cache["skipped"], **stats}, indent=1))
        logger.info(f"wrote {output_dir}")
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(args.hub_model_id, exist_ok=True)
            api.upload_folder(repo_id=args.hub_model_id, folder_path=output_dir,
                              ignore_patterns=["checkpoint-*", "cache/*", "lora/*"])
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
