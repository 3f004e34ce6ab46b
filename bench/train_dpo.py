"""DPO training throughput: cached latents and embeddings (train_dpo.py) vs re-encoding every step
(tango2-train.py's way), and the peak memory of a DPO step vs a plain fine-tuning step.

    python bench/train_dpo.py --model tests/fixtures/tango-original-tiny --seconds 10.24 --batch 2
    python bench/train_dpo.py --model full-size-random --steps 2 --batch 1      # Tango's real sizes, random weights
    python bench/train_dpo.py --model declare-lab/tango --device cuda --batch 4
    python bench/train_dpo.py --model full-size-random --flops   # counts, computes nothing: the cache's ceiling

Same model, same batch, same pairs; prints pairs/s for both, the speedup, and peak memory
(CUDA: max allocated; CPU: the process's peak RSS growth), and writes bench/results/train_dpo-*.json.
``--flops`` builds the model on the meta device and counts the floating-point operations of
the DPO step and of the encoding that re-encoding adds (torch's FlopCounterMode): what the
cache can save at most, whatever the device.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import train_dpo  # noqa: E402
from losses import PreferenceLossConfig, denoising_loss  # noqa: E402
from pipeline import load_pipeline  # noqa: E402
from pipeline.audio import wav_to_fbank  # noqa: E402


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flop_counts(pipe, frames: int, prompts: list[str]) -> dict:
    """TFLOPs of one DPO step on cached latents (policy forward + backward and reference forward on the
    chosen and rejected clips) and of the encoding re-encoding adds (VAE posteriors, T5), for a pipeline
    on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    def counted(fn):
        with FlopCounterMode(display=False) as counter:
            out = fn()
        return out, counter.get_total_flops() / 1e12

    pairs = len(prompts)
    fbank = torch.zeros(2 * pairs, 1, frames, pipe.vocoder.config.model_in_dim, device="meta")
    ids = pipe.tokenizer(prompts, return_tensors="pt").input_ids.to("meta")
    with torch.no_grad():
        posterior, vae_tflops = counted(lambda: pipe.vae.encode(fbank).latent_dist)
        embeds, text_tflops = counted(lambda: pipe.text_encoder(input_ids=ids)[0])
    latents = posterior.sample()
    batch = (latents[:pairs], latents[pairs:], embeds, torch.ones(ids.shape, dtype=torch.bool, device="meta"))
    policy = copy.deepcopy(pipe.unet).train()

    def dpo_step():
        loss, _, _ = train_dpo.preference_step(PreferenceLossConfig("dpo", beta_dpo=2000.0), policy, pipe.unet,
                                               pipe.scheduler, batch, torch.Generator(), "meta", contextlib.nullcontext)
        loss.backward()

    _, step = counted(dpo_step)
    encoding = vae_tflops + text_tflops
    return {"tflops_dpo_step_cached": round(step, 3), "tflops_encoding_added": round(encoding, 3),
            "ceiling_speedup_from_cache": round((step + encoding) / step, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model spec, or full-size-random (Tango's architecture)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seconds", type=float, default=None, help="clip length (default: the model's)")
    parser.add_argument("--batch", type=int, default=2, help="pairs per step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sgd", action="store_true", help="SGD instead of AdamW: no optimizer state (full size on a small CPU)")
    parser.add_argument("--flops", action="store_true", help="count operations on the meta device instead of timing")
    args = parser.parse_args()
    if args.flops and args.model != "full-size-random":
        parser.error("--flops builds the model on the meta device: use it with --model full-size-random")

    if args.model == "full-size-random":
        from generate import full_size_random_tango  # bench/generate.py

        if args.flops:
            with torch.device("meta"):
                pipe = full_size_random_tango()
        else:
            pipe = full_size_random_tango().to(args.device or "cpu")
    else:
        pipe = load_pipeline(args.model, device=args.device, dtype=torch.float32)
    device = pipe.device
    seconds = args.seconds or pipe.default_audio_length_in_s
    frames = train_dpo.training_frames(pipe, seconds)
    prompts = [f"a dog barks {i} times" for i in range(args.batch)]
    if args.flops:
        results = {"model": args.model, "clip_seconds": frames * pipe.hop_length / pipe.sampling_rate,
                   "pairs_per_step": args.batch, **flop_counts(pipe, frames, prompts)}
        print(json.dumps(results, indent=2))
        (ROOT / "bench" / "results" / f"train_dpo-flops-{args.model}.json").write_text(json.dumps(results, indent=2) + "\n")
        return
    rng = np.random.default_rng(0)
    clips = [(0.3 * rng.standard_normal(frames * pipe.hop_length)).astype(np.float32) for _ in range(2 * args.batch)]
    policy = copy.deepcopy(pipe.unet).train()
    optimizer = (torch.optim.SGD if args.sgd else torch.optim.AdamW)(policy.parameters(), lr=1e-6)
    loss_config = PreferenceLossConfig("dpo", beta_dpo=2000.0)
    generator = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def encode():
        """What tango2-train.py does every step: audio -> fbank -> VAE posterior sample; prompts -> T5."""
        fbank, _, _ = wav_to_fbank(clips, target_length=frames)
        latents = pipe.vae.encode(fbank.unsqueeze(1).to(device)).latent_dist.sample() * pipe.vae.config.scaling_factor
        embeds, masks = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
        return latents[0::2].cpu(), latents[1::2].cpu(), embeds.cpu(), masks.cpu()

    cached_batch = encode()

    def step(batch, dpo=True):
        if dpo:
            loss, _, _ = train_dpo.preference_step(loss_config, policy, pipe.unet, pipe.scheduler, batch, generator, device,
                                                   contextlib.nullcontext)
        else:  # plain fine-tuning on the chosen clips: one UNet pass, no reference
            latents_w, _, embeds, masks = (x.to(device) for x in batch)
            noise = torch.randn(latents_w.shape, generator=generator).to(device)
            t = torch.randint(0, 1000, (len(latents_w),), generator=generator).to(device)
            loss = denoising_loss(policy, pipe.scheduler, latents_w, noise, t, embeds, masks.bool()).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps

    baseline = peak_memory_mb(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step(cached_batch, dpo=False)
    plain_memory = peak_memory_mb(device) - (0 if device.type == "cuda" else baseline)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step(cached_batch, dpo=True)
    dpo_memory = peak_memory_mb(device) - (0 if device.type == "cuda" else baseline)

    cached = timed(lambda: step(cached_batch))
    reencoded = timed(lambda: step(encode()))
    results = {
        "model": args.model,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "clip_seconds": frames * pipe.hop_length / pipe.sampling_rate,
        "pairs_per_step": args.batch,
        "optimizer": "SGD" if args.sgd else "AdamW",
        "pairs_per_s_cached": round(args.batch / cached, 3),
        "pairs_per_s_reencoding": round(args.batch / reencoded, 3),
        "speedup": round(reencoded / cached, 2),
        "peak_memory_mb_plain_finetune_step": round(plain_memory, 1),
        "peak_memory_mb_dpo_step": round(dpo_memory, 1),
        "memory_note": "CUDA: max allocated; CPU: growth of the process's peak RSS (the DPO step runs second, so it "
                       "counts only what it needs beyond the plain step)",
    }
    for key, value in results.items():
        print(f"{key:36s} {value}")
    out = ROOT / "bench" / "results" / f"train_dpo-{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.model)}-{device.type}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
