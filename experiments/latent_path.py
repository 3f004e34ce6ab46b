"""Probe what DPO trains on: the base model's denoising loss on the exact latents ``train_dpo.py`` batches.

    python experiments/latent_path.py --model tiny --dataset runs/exp/pairs-all --pairs 64

For the pairs of a dataset written by ``autopairs.autorank`` (which keeps each clip's sampled
latent), the reference UNet's per-sample denoising loss, per timestep band, with the same noise
and timesteps in every row, on

* ``stored``: the cache ``train_dpo.py`` builds from the stored latents (what it trains on now);
* ``re-encoded (mode)`` / ``re-encoded (sample)``: the same clips' WAVs decoded, mel'd and
  VAE-encoded, as the training script did before (posterior sample) and as the base was trained;
* ``own training data``: mode latents of clean renders of the same prompts, the distribution the
  base model was trained on (the yardstick).

When the stored row is within a few percent of the yardstick, the per-sample losses DPO compares
are about the clips, not vocoder and encoder noise. Also prints how far the re-encoded latents are
from the sampled ones (relative L2). Writes ``bench/results/latent_path-<model>.json``.

The answer: bench/results/latent_path-tiny*.json; read in docs/results.md, "The data path".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_dpo  # noqa: E402
from losses import denoising_loss  # noqa: E402
from pipeline import load_pipeline  # noqa: E402
from pipeline.audio import wav_to_fbank  # noqa: E402

BANDS = [(0, 250), (250, 500), (500, 750), (750, 1000)]


def band_losses(pipe, latents: torch.Tensor, embeds, masks, noise, timesteps) -> list[float]:
    """Mean denoising loss of ``pipe.unet`` per timestep band; every latent sees every (noise, timestep)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    per_band = {band: [] for band in BANDS}
    with torch.no_grad():
        for t, eps in zip(timesteps, noise):
            steps = torch.full((len(latents),), int(t))
            losses = denoising_loss(pipe.unet, scheduler, latents, eps.expand_as(latents), steps, embeds, masks)
            band = next(b for b in BANDS if b[0] <= t < b[1])
            per_band[band].append(losses.mean().item())
    return [float(np.mean(per_band[band])) for band in BANDS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny", help="model spec whose pairs the dataset holds")
    parser.add_argument("--dataset", required=True, help="a dataset written by autopairs.autorank (with latents)")
    parser.add_argument("--pairs", type=int, default=64, help="pairs probed (the first N)")
    parser.add_argument("--timesteps", type=int, default=16, help="timesteps probed, spread evenly over 0..999")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON results (default bench/results/latent_path-<model>.json)")
    args = parser.parse_args(argv)

    pipe = load_pipeline(args.model, device="cpu")
    ds = train_dpo.load_pairs(args.dataset, "train")
    ds = ds.select(range(min(args.pairs, len(ds))))
    length = pipe.default_audio_length_in_s
    generator = torch.Generator().manual_seed(args.seed)
    rows, caches = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        audio_only = ds.remove_columns([c for c in train_dpo.LATENT_COLUMNS if c in ds.column_names])
        for name, data, posterior in [("stored", ds, "mode"), ("re-encoded (mode)", audio_only, "mode"),
                                      ("re-encoded (sample)", audio_only, "sample")]:
            caches[name] = train_dpo.build_cache(pipe, data, args.dataset, length, posterior,
                                                 Path(tmp) / f"{len(caches)}.safetensors")
    stored = caches["stored"]
    if stored["stored_latent_pairs"] == 0:
        print("error: the dataset holds no latents of this model: write it with autopairs.autorank", file=sys.stderr)
        return 1
    indices = list(range(len(stored["rows"])))
    timesteps = torch.linspace(0, 999, args.timesteps).round().long().tolist()
    shape = stored["mean"].shape[2:]
    noise = torch.randn((len(timesteps), 1, *shape), generator=generator)
    for name, cache in caches.items():
        chosen, rejected, embeds, masks = train_dpo.collate(indices, cache, torch.Generator().manual_seed(args.seed))
        rows[name] = band_losses(pipe, torch.cat([chosen, rejected]), torch.cat([embeds, embeds]),
                                 torch.cat([masks, masks]), noise, timesteps)
    from soundworld import render

    prompts = stored["prompts"]
    renders = [render(prompt, seed=args.seed + i)[0] for i, prompt in enumerate(prompts)]
    fbank, _, _ = wav_to_fbank(renders, target_length=train_dpo.training_frames(pipe, length))
    with torch.no_grad():
        clean = pipe.vae.encode(fbank.unsqueeze(1)).latent_dist.mode() * pipe.vae.config.scaling_factor
    _, _, embeds, masks = train_dpo.collate(indices, stored, generator)
    rows["own training data"] = band_losses(pipe, clean, embeds, masks, noise, timesteps)

    sampled = stored["mean"] * stored["scaling_factor"]
    reencoded = caches["re-encoded (mode)"]["mean"] * stored["scaling_factor"]
    distance = ((reencoded - sampled).flatten(1).norm(dim=1) / sampled.flatten(1).norm(dim=1)).mean().item()
    yardstick = np.mean(rows["own training data"])
    result = {"model": args.model, "dataset": args.dataset, "pairs": len(indices), "bands": BANDS,
              "loss_per_band": rows, "mean_loss": {k: float(np.mean(v)) for k, v in rows.items()},
              "ratio_to_own_training_data": {k: float(np.mean(v) / yardstick) for k, v in rows.items()},
              "relative_l2_reencoded_vs_sampled": distance}
    print(f"{'latents':24s} " + " ".join(f"t{a}-{b - 1:<6}" for a, b in BANDS) + "  mean   / own data")
    for name, values in rows.items():
        print(f"{name:24s} " + " ".join(f"{v:<9.4f}" for v in values)
              + f"  {np.mean(values):.4f} {result['ratio_to_own_training_data'][name]:.2f}x")
    print(f"re-encoded latents differ from the sampled ones by {distance:.1%} (relative L2)")
    out = Path(args.out or Path(__file__).parent / "results" / f"latent_path-{Path(args.model).name}.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
