"""How many clips does one GRPO update need before its direction is more than noise? (issue 33)

    python experiments/grpo_gradient_probe.py --batches 4 --prompts 8 --group_size 8 \
        --out bench/results/grpo/gradient-probe.json          # ~8 min on 2 CPU cores

Draws ``--batches`` independent batches exactly as one ``train_grpo.py`` iteration does (fresh
training-split prompts, ``--group_size`` clips each from the stochastic sampler, the judge's reward,
group-normalised advantages) and computes each batch's policy gradient on the trainer's LoRA
parameters at the sampling policy (ratio 1, no KL: ``-mean(A * grad log p)`` over the recorded steps).
If a batch gradient is the true gradient g plus noise of variance s^2 / n (n clips), two independent
batch gradients have an expected cosine of |g|^2 / (|g|^2 + s^2 / n): the mean pairwise cosine gives
the signal-to-noise ratio, and from it the clips per update at which the cosine reaches 0.5 (direction
as much signal as noise). Pairwise cosines near 0 mean one update's direction is mostly noise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere: the repository's packages


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per batch")
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--stochastic_steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import copy

    import numpy as np
    import torch
    from peft import LoraConfig

    import train_grpo
    from losses import group_advantages
    from pipeline import load_pipeline
    from soundworld import judge

    torch.manual_seed(args.seed)
    torch.set_flush_denormal(True)
    base = load_pipeline(args.model)
    unet = copy.deepcopy(base.unet)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out"]))
    policy = base.with_components(unet=unet)
    policy.set_progress_bar_config(disable=True)
    trainer_args = train_grpo.parse_args(["--output_dir", "unused", "--beta_kl", "0",
                                          "--stochastic_steps", str(args.stochastic_steps)])
    scheduler = policy.trajectory_scheduler(trainer_args.num_inference_steps)
    guided = policy.guided_steps(scheduler.timesteps.tolist())
    prompts_of = train_grpo.prompt_source("train", train_grpo.validation_prompts("train", 64, 4321))
    trainable = [p for p in unet.parameters() if p.requires_grad]

    gradients, rewards_seen = [], []
    for batch_index in range(args.batches):
        prompts = prompts_of(args.seed * 1000 + batch_index, args.prompts)
        trajectory = policy.sample_trajectory(
            prompts, num_inference_steps=trainer_args.num_inference_steps, num_waveforms_per_prompt=args.group_size,
            stochastic_steps=args.stochastic_steps,
            generator=policy.clip_generators(range(batch_index * 10_000, batch_index * 10_000 + len(prompts) * args.group_size)))
        clip_prompts = [p for p in prompts for _ in range(args.group_size)]
        rewards = torch.tensor([judge(a, policy.sampling_rate, p).score for a, p in zip(trajectory.audios, clip_prompts)])
        advantages = group_advantages(rewards, args.group_size)
        rewards_seen.append(float(rewards.mean()))
        for parameter in trainable:
            parameter.grad = None
        for first in range(0, len(clip_prompts), 16):
            chosen = list(range(first, min(first + 16, len(clip_prompts))))
            with torch.no_grad():
                embeds, mask = policy.encode_prompt([clip_prompts[i] for i in chosen], "cpu", 1, True)
            batch = {"step_latents": trajectory.step_latents[chosen], "prompt_embeds": embeds, "attention_mask": mask}
            loss = 0.0
            for step in range(args.stochastic_steps):
                log_prob, _ = train_grpo.policy_step(policy, unet, None, batch, step, trainer_args, scheduler, guided)
                loss = loss - (advantages[chosen] * log_prob).sum() / (len(clip_prompts) * args.stochastic_steps)
            loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in trainable]).clone())
        print(f"batch {batch_index + 1}/{args.batches}: mean reward {rewards_seen[-1]:.3f}, "
              f"gradient norm {float(gradients[-1].norm()):.3e}", flush=True)

    cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0))
               for a, b in itertools.combinations(gradients, 2)]
    clips = args.prompts * args.group_size
    mean_cosine = float(np.mean(cosines))
    # cos = r / (1 + r) with r = |g|^2 n / s^2 at n clips; clips for cos 0.5 is where r = 1
    signal_to_noise = mean_cosine / (1 - mean_cosine) if 0 < mean_cosine < 1 else None
    report = {"model": args.model, "clips_per_batch": clips, "batches": args.batches,
              "stochastic_steps": args.stochastic_steps, "pairwise_cosines": cosines, "mean_cosine": mean_cosine,
              "clips_for_cosine_0_5": clips / signal_to_noise if signal_to_noise else None,
              "mean_rewards": rewards_seen}
    print(json.dumps({k: v for k, v in report.items() if k != "pairwise_cosines"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
