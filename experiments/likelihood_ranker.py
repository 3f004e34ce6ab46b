"""The pipeline's own likelihood as a zero-shot ranker: does tiny's denoising loss agree with the judge?

    python experiments/likelihood_ranker.py --clips runs/reward --out bench/results/reward/likelihood-ranker.json

On ``experiments/reward_curve.py``'s held-out clips (four per prompt, with the latents they were decoded from), each clip
gets the UNet's denoising loss on its latent given the prompt (L_cond) and given the empty prompt (L_uncond),
averaged over ``--timesteps`` x ``--noises`` draws shared by the four clips of a prompt. Two rankers:
``-L_cond`` (the clip the model finds most likely for the prompt) and ``L_uncond - L_cond`` (how much the prompt
explains it: a diffusion classifier). Accuracy: the share of pairs the judge separates that each ranker orders
the same way.

The answer: bench/results/reward/likelihood-ranker.json; read in docs/results.md, "A preference model learned from votes".
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    import torch
    from diffusers import DDPMScheduler

    from losses import denoising_loss
    from pipeline import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, default=Path("runs/reward"))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--timesteps", default="100,300,500,700,900")
    parser.add_argument("--noises", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/reward/likelihood-ranker.json"))
    args = parser.parse_args(argv)
    chunks = sorted(args.clips.glob("eval-*.npz"))
    if not chunks:
        raise SystemExit(f"{args.clips}: no held-out clips; run experiments/reward_curve.py first")
    data = {key: np.concatenate([np.load(path)[key] for path in chunks]) for key in ("prompts", "scores", "latents")}
    pipe = load_pipeline(args.model, device="cpu", dtype=torch.float32)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    timesteps = [int(t) for t in args.timesteps.split(",")]
    conditional, unconditional = np.zeros(data["scores"].shape), np.zeros(data["scores"].shape)
    for task, prompt in enumerate(data["prompts"]):
        tokens = pipe.tokenizer([str(prompt), ""], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = pipe.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        latents = torch.from_numpy(data["latents"][task].astype(np.float32))
        clips = len(latents)
        generator = torch.Generator().manual_seed(task)
        for t in timesteps:
            for _ in range(args.noises):
                noise = torch.randn(latents.shape[1:], generator=generator).expand_as(latents).contiguous()
                for which, total in ((0, conditional), (1, unconditional)):
                    with torch.no_grad():
                        total[task] += denoising_loss(
                            pipe.unet, scheduler, latents, noise, torch.full((clips,), t),
                            hidden[which:which + 1].expand(clips, -1, -1),
                            tokens.attention_mask[which:which + 1].expand(clips, -1).bool()).numpy()
    rankers = {"-L_cond": -conditional, "L_uncond - L_cond": unconditional - conditional}
    report = {"clips": str(args.clips), "model": args.model, "timesteps": timesteps, "noises": args.noises,
              "prompts": len(data["prompts"]), "accuracy_vs_judge": {}}
    for name, reward in rankers.items():
        agree = [reward[task, a] > reward[task, b] if scores[a] > scores[b] else reward[task, b] > reward[task, a]
                 for task, scores in enumerate(data["scores"]) for a, b in combinations(range(len(scores)), 2)
                 if scores[a] != scores[b]]
        report["accuracy_vs_judge"][name] = {"pairs": len(agree), "accuracy": round(float(np.mean(agree)), 4)}
        print(f"{name}: {np.mean(agree):.3f} on {len(agree)} pairs", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
