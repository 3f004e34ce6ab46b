"""Fine-tune a Tango pipeline online with GRPO on its own sampler's steps, rewarded by a ranker.

    python train_grpo.py --pretrained_model tiny --reward judge --output_dir tiny-grpo
    python train_grpo.py --reward reward:prefs/ --output_dir tiny-grpo-prefs    # a preference model learned from votes
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 train_grpo.py ...       # several CPU processes (gloo)
    accelerate launch train_grpo.py ...                                         # several GPUs
    python app.py --dpo-model tiny-grpo/best     # the app loads the result (any spec works)

Why beside train_dpo.py: Diffusion-DPO sees a preference only through a one-draw estimate of a
denoising-loss difference at a random timestep; what a prompt's order changes is set in the
first, noisiest sampler steps and that estimate barely sees it. Online RL (DDPO, Black et al.
2023; Flow-GRPO, Liu et al. 2025) instead trains on the exact log-probability of each step the
sampler took. One iteration:

1. Sample. ``--prompts_per_iteration`` fresh training prompts (never the validation prompts),
   ``--group_size`` clips each, with ``TangoPipeline.sample_trajectory``: DDIM on the model's own
   schedule, the first ``--stochastic_steps`` steps drawn with ``--eta`` and recorded with their
   log-probabilities, the rest deterministic. Each process samples its share of the prompts.
2. Reward. ``--reward``: ``judge`` (the sound world's exact judge), ``reward:PATH`` (a preference
   model learned from votes, ``python -m preference.reward``) or ``clap`` (real audio).
3. Advantages within each prompt's group (``losses.group_advantages``); groups whose clips all
   scored the same carry no signal and are not trained on.
4. Update. For ``--inner_epochs`` passes over the clips in mini-batches, the policy re-scores
   every recorded stochastic step: ``losses.grpo_loss`` (clipped ratio against the sampler's
   log-probability, plus ``--beta_kl`` times the KL to the frozen reference's step), one
   optimizer step per mini-batch. LoRA on the UNet's transformer blocks (``--lora_rank``), or the
   full UNet with ``--lora_rank 0``.

Every ``--validation_every`` iterations the policy generates clips for fixed validation prompts with
the model's own default sampler (what users get) and they are judged (sound-world models) and
rewarded. A resumable checkpoint is written after every iteration (``--resume``); the output
is a diffusers pipeline that ``load_pipeline`` loads, the best one on validation in
``OUTPUT_DIR/best``, with ``train_metrics.json``, ``train_config.json``, ``training_curves.png``
and a model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

logger = logging.getLogger("train_grpo")
REWARD_CHOICES = "judge (the sound world's judge), reward:PATH (a preference model folder), clap (real audio)"
# Settings a resumed run may change; any other difference from the checkpoint's configuration is refused.
RESUMABLE_CHANGES = {"iterations", "resume", "output_dir", "validation_every"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from autopairs.autorank import ranker_spec  # torch-free: checks the folder, loads nothing

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("model, reward and prompts")
    group.add_argument("--pretrained_model", default="tiny", help="model spec: embedded name, folder or Hub id")
    group.add_argument("--reward", type=ranker_spec, default="judge", help=f"the reward: {REWARD_CHOICES}")
    group.add_argument("--prompts", default="train",
                       help="'train' (the sound world's training split) or a prompts file (one a line, # comments)")
    group.add_argument("--output_dir", required=True, help="where the tuned pipeline, checkpoint and metrics go")
    group = parser.add_argument_group("sampling (each iteration)")
    group.add_argument("--prompts_per_iteration", type=int, default=8, help="fresh prompts per iteration (all processes)")
    group.add_argument("--group_size", type=int, default=8, help="clips per prompt, compared with each other")
    group.add_argument("--num_inference_steps", type=int, default=16, help="DDIM steps of the training sampler")
    group.add_argument("--stochastic_steps", type=int, default=6,
                       help="the first steps drawn with noise and trained on (where the layout is set)")
    group.add_argument("--eta", type=float, default=1.0, help="noise of the stochastic steps (1: DDPM posterior)")
    group.add_argument("--guidance_scale", type=float, default=3.0, help="classifier-free guidance, as users sample")
    group = parser.add_argument_group("optimisation (losses.grpo_loss)")
    group.add_argument("--iterations", type=int, default=30, help="sample-reward-update rounds")
    group.add_argument("--inner_epochs", type=int, default=1, help="passes over each iteration's clips")
    group.add_argument("--train_batch_size", type=int, default=16, help="clips per optimizer step (per process)")
    group.add_argument("--learning_rate", type=float, default=3e-4, help="AdamW; 1e-3 damaged tiny in 10 iterations")
    group.add_argument("--lora_rank", type=int, default=16, help="LoRA rank on the transformer blocks; 0: full UNet")
    group.add_argument("--clip_range", type=float, default=1e-3, help="PPO ratio clip epsilon")
    group.add_argument("--beta_kl", type=float, default=0.01, help="weight of the KL to the reference, per step")
    group.add_argument("--advantage_clip", type=float, default=5.0, help="advantages clipped to +-this")
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="gradients clipped to this norm")
    group.add_argument("--seed", type=int, default=0, help="prompts, clip noise and mini-batch order (per iteration)")
    group = parser.add_argument_group("validation and checkpoints")
    group.add_argument("--validation_prompts", type=int, default=64,
                       help="fixed training-split prompts judged with the model's default sampler (0: none)")
    group.add_argument("--validation_every", type=int, default=5, help="iterations between validations")
    group.add_argument("--validation_seed", type=int, default=4321, help="seed of the validation prompts and clips")
    group.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint (same settings)")
    args = parser.parse_args(argv)
    for name in ("prompts_per_iteration", "group_size", "num_inference_steps", "stochastic_steps", "iterations",
                 "inner_epochs", "train_batch_size", "validation_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.group_size < 2:
        parser.error("--group_size must be at least 2: advantages compare the clips of one prompt")
    if args.stochastic_steps > args.num_inference_steps:
        parser.error(f"--stochastic_steps ({args.stochastic_steps}) cannot exceed --num_inference_steps "
                     f"({args.num_inference_steps})")
    if not args.eta > 0:
        parser.error(f"--eta must be > 0 (the trained steps are stochastic), got {args.eta}")
    if args.prompts != "train" and not Path(args.prompts).is_file():
        parser.error(f"--prompts must be 'train' or a text file of prompts; {args.prompts!r} is neither")
    return args


# -- prompts ------------------------------------------------------------------------------------


def prompt_source(spec: str, validation: list[str]):
    """``prompts(iteration, n)``: the iteration's training prompts, deterministic in (seed, iteration) so a resumed
    run draws what the killed one would have, never one of the ``validation`` prompts."""
    held_out = set(validation)
    if spec == "train":
        from soundworld import sample_prompts

        def prompts(seed: int, n: int) -> list[str]:
            drawn = [p for p in sample_prompts("train", 2 * n + 8, seed) if p not in held_out]
            return drawn[:n]
        return prompts
    from autopairs.autorank import read_prompts

    pool = [line for line in dict.fromkeys(read_prompts(spec, None, 0)) if line not in held_out]
    if not pool:
        raise SystemExit(f"error: {spec} holds no prompt outside the validation prompts")

    def prompts(seed: int, n: int) -> list[str]:
        return [pool[i] for i in np.random.default_rng(seed).choice(len(pool), n, replace=len(pool) < n)]
    return prompts


def validation_prompts(spec: str, n: int, seed: int) -> list[str]:
    if n == 0:
        return []
    if spec == "train":
        from soundworld import sample_prompts

        return list(dict.fromkeys(sample_prompts("train", n, seed)))
    from autopairs.autorank import read_prompts

    return list(dict.fromkeys(read_prompts(spec, None, 0)))[:n]


# -- one iteration's pieces -----------------------------------------------------------------------


def iteration_seed(seed: int, iteration: int) -> int:
    return seed * 1_000_003 + iteration


def policy_step(pipe, unet, reference, batch: dict, step: int, args, scheduler, guided: list[bool]):
    """The policy's log-probability of the recorded transition at stochastic ``step`` for a mini-batch, and each
    clip's KL to the reference's step (both Gaussians share their std, so KL = |mean - mean_ref|^2 / 2 std^2)."""
    from pipeline.tango import ddim_step_mean_std, gaussian_log_prob

    timesteps = scheduler.timesteps.tolist()
    t, prev_t = timesteps[step], timesteps[step + 1] if step + 1 < len(timesteps) else -1
    latents, next_latents = batch["step_latents"][:, step], batch["step_latents"][:, step + 1]

    def step_mean(model):
        prediction = pipe.guided_prediction(latents, t, batch["prompt_embeds"], batch["attention_mask"],
                                            args.guidance_scale, guided[step], unet=model)
        return ddim_step_mean_std(prediction, t, prev_t, latents, scheduler.alphas_cumprod,
                                  scheduler.config.prediction_type, args.eta)

    mean, std = step_mean(unet)
    log_prob = gaussian_log_prob(next_latents, mean, std)
    kl = None
    if args.beta_kl > 0:
        with torch.no_grad(), reference() as reference_unet:
            reference_mean, _ = step_mean(reference_unet)
        kl = ((mean - reference_mean) ** 2).mean(dim=(1, 2, 3)) / (2 * std**2)
    return log_prob, kl


def validate(pipe, prompts: list[str], seed: int, ranker) -> dict:
    """The policy at the model's default sampler on fixed prompts: the ranker's mean reward and, for sound-world
    models, the judge's recall / order / count / score / extra events."""
    from pipeline.tango import clip_seeds

    seeds = clip_seeds(seed, len(prompts))
    rewards, judged = [], []
    for start in range(0, len(prompts), 16):
        batch = prompts[start:start + 16]
        audios = pipe(batch, generator=pipe.clip_generators(seeds[start:start + 16])).audios
        for audio, prompt in zip(audios, batch):
            rewards.extend(ranker(audio[None], pipe.sampling_rate, prompt))
            if pipe.reads_only_the_sound_world:
                from soundworld import judge

                judged.append(judge(audio, pipe.sampling_rate, prompt))
    record = {"reward": float(np.mean(rewards))}
    if judged:
        orders = [r.order_correct for r in judged if r.order_correct is not None]
        record.update(recall=float(np.mean([r.event_recall for r in judged])),
                      order=float(np.mean(orders)) if orders else None,
                      count=float(np.mean([r.count_correct for r in judged])),
                      score=float(np.mean([r.score for r in judged])),
                      extra_events=float(np.mean([r.extra_events for r in judged])))
    return record


def validation_rank(record: dict) -> tuple:
    """What "best" means on validation: the judge's mean score where there is one (it holds recall, order and
    extra events), else the mean reward; the later iteration on a tie."""
    return record.get("score", record["reward"]), record["iteration"]


# -- saving ------------------------------------------------------------------------------------------


def save_pipeline(pipe, unet, folder: Path, lora: bool) -> None:
    """The policy as a plain diffusers pipeline (LoRA fused into a copy of the UNet), written atomically."""
    save_pipeline_atomically(pipe.with_components(unet=merged_unet(copy.deepcopy(unet), lora)), folder)


def save_checkpoint(accelerator, output_dir: Path, iteration: int, config: dict, history: dict) -> None:
    """Model, optimizer and RNG state plus the history, written under a temporary name and renamed when complete."""
    final, partial = output_dir / "checkpoint", output_dir / ".partial-checkpoint"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / "history.json").write_text(json.dumps(history))
        (partial / "progress.json").write_text(json.dumps({"iterations_done": iteration + 1, "config": config}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    accelerator.wait_for_everyone()


def plot_curves(history: dict, path: Path) -> None:
    """Training reward, KL and clip fraction per iteration; validation judge metrics, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, validation = history["train"], history["validation"]
    panels = [("reward_mean", "mean reward of the sampled clips"), ("kl", "KL to the reference (per step)"),
              ("clip_fraction", "clipped ratio fraction")]
    figure, axes = plt.subplots(1, 4, figsize=(18, 3.4))
    for axis, (key, title) in zip(axes, panels):
        axis.plot([r["iteration"] for r in train], [r[key] for r in train], lw=1)
        axis.set_title(title)
        axis.set_xlabel("iteration")
    for key in ("score", "recall", "order", "reward"):
        points = [(r["iteration"], r[key]) for r in validation if r.get(key) is not None]
        if points:
            axes[3].plot(*zip(*points), "o-", label=key)
    axes[3].set_title("validation prompts, default sampler")
    axes[3].set_xlabel("iteration")
    axes[3].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_model_card(output_dir: Path, config: dict, history: dict, best: dict | None) -> None:
    first = history["validation"][0] if history["validation"] else None
    lines = [
        "---", "library_name: diffusers", "tags:", "- text-to-audio", "- tango", "- grpo", "---", "",
        f"# {output_dir.name}", "",
        f"Tango fine-tuned online with GRPO on its sampler's own steps by Tango DPO Studio's `train_grpo.py`, "
        f"rewarded by `{config['reward']}`.", "",
        "| | |", "| --- | --- |",
        f"| base model | `{config['pretrained_model']}` |",
        f"| iterations | {len(history['train'])} x {config['prompts_per_iteration']} prompts x "
        f"{config['group_size']} clips ({sum(r['clips'] for r in history['train'])} clips sampled) |",
        f"| sampler | DDIM {config['num_inference_steps']} steps, the first {config['stochastic_steps']} "
        f"stochastic (eta {config['eta']}) and trained |",
        f"| update | clip {config['clip_range']}, KL weight {config['beta_kl']}, lr {config['learning_rate']}, "
        f"{'LoRA rank ' + str(config['lora_rank']) if config['lora_rank'] else 'full UNet'}, "
        f"{config['inner_epochs']} inner epoch(s) of {config['train_batch_size']} clips |",
    ]
    if first and best:
        keys = [k for k in ("score", "recall", "order", "extra_events", "reward") if first.get(k) is not None]
        lines += ["", f"Validation ({config['validation_prompts']} training-split prompts, the model's default "
                      f"sampler): before -> best (iteration {best['iteration']})", "",
                  "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys),
                  "| " + " | ".join(f"{first[k]:.3f} -> {best[k]:.3f}" for k in keys) + " |"]
    lines += ["", "```python", "from pipeline import load_pipeline", f"pipe = load_pipeline({str(output_dir)!r})",
              "```", ""]
    (output_dir / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    parse_args()  # --help and wrong flags answer at once: torch, accelerate and diffusers load below

import contextlib  # noqa: E402
import copy  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from autopairs.autorank import load_ranker  # noqa: E402
from losses import group_advantages, grpo_loss  # noqa: E402
from pipeline import load_pipeline  # noqa: E402
from pipeline.tuning import add_lora, merged_unet, resume_mismatch, save_pipeline_atomically  # noqa: E402


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the stages of ``main`` share: the models, the prompts and how far training has come."""

    args: argparse.Namespace
    accelerator: Accelerator
    output_dir: Path
    config: dict  # the resolved configuration: saved beside the outputs and in the checkpoint, checked on resume
    base: object = None  # the loaded pipeline: shared by the registry, never changed
    unet: torch.nn.Module = None  # the policy's UNet (a copy of the base's), prepared by accelerate
    policy: object = None  # the base pipeline with the policy's UNet
    trainable: list = field(default_factory=list)
    optimizer: torch.optim.Optimizer = None
    scheduler: object = None  # the training sampler's DDIM schedule
    guided: list = field(default_factory=list)  # per step of that schedule: whether guidance runs
    ranker: object = None
    held_out: list = field(default_factory=list)  # the validation prompts, never trained on
    training_prompts: object = None  # (seed, n) -> an iteration's prompts
    history: dict = field(default_factory=lambda: {"train": [], "validation": []})
    start: int = 0  # iterations done (by a resumed run)

    @property
    def lora(self) -> bool:
        return self.args.lora_rank > 0

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference UNet: the policy with its adapters off, or the base's own UNet."""
        if not self.lora:
            yield self.base.unet
            return
        plain = self.accelerator.unwrap_model(self.unet)
        plain.disable_adapters()
        try:
            yield plain
        finally:
            plain.enable_adapters()


@dataclass
class Samples:
    """One iteration's clips from every process, in prompt order: what they were rewarded and what the sampler
    recorded of them."""

    prompts: list[str]  # one per clip
    rewards: torch.Tensor  # (clips,)
    step_latents: torch.Tensor  # (clips, stochastic_steps + 1, C, T, F)
    log_probs: torch.Tensor  # (clips, stochastic_steps): the sampler's log-probability of each recorded step
    sample_seconds: float
    reward_seconds: float


def load_models(run: Run) -> None:
    """The base pipeline, the policy (a copy of its UNet, with LoRA adapters or whole), the optimizer, the training
    sampler's schedule, the reward and the prompts."""
    args, accelerator = run.args, run.accelerator
    torch.manual_seed(args.seed)  # the adapters' initial weights: a resumed run rebuilds them before loading its state
    run.base = load_pipeline(args.pretrained_model, device=accelerator.device, dtype=torch.float32)
    run.base.set_progress_bar_config(disable=True)
    unet = copy.deepcopy(run.base.unet)
    if run.lora:
        add_lora(unet, args.lora_rank, ["to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out"])
    run.trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(run.trainable, lr=args.learning_rate, weight_decay=1e-4)
    run.unet, run.optimizer = accelerator.prepare(unet, optimizer)
    run.policy = run.base.with_components(unet=accelerator.unwrap_model(run.unet))
    run.policy.set_progress_bar_config(disable=True)
    run.scheduler = run.policy.trajectory_scheduler(args.num_inference_steps)
    run.guided = run.policy.guided_steps(run.scheduler.timesteps.tolist())
    run.ranker = load_ranker(args.reward, device=str(accelerator.device))
    run.held_out = validation_prompts(args.prompts, args.validation_prompts, args.validation_seed)
    run.training_prompts = prompt_source(args.prompts, run.held_out)


def resume(run: Run) -> None:
    """With --resume and a checkpoint in OUTPUT_DIR: its weights, optimizer, RNG state and history, when it was
    trained with the same settings; then the configuration is written beside the outputs."""
    checkpoint = run.output_dir / "checkpoint"
    if run.args.resume and (checkpoint / "progress.json").is_file():
        progress = json.loads((checkpoint / "progress.json").read_text())
        mismatch = resume_mismatch(progress["config"], run.config, RESUMABLE_CHANGES)
        if mismatch:
            raise SystemExit(f"error: {mismatch}")
        run.accelerator.load_state(str(checkpoint))
        run.history = json.loads((checkpoint / "history.json").read_text())
        run.start = progress["iterations_done"]
        logger.info(f"resumed after iteration {run.start}")
    elif run.args.resume:
        logger.info(f"--resume: no checkpoint in {run.output_dir}, starting from the beginning")
    if run.accelerator.is_main_process:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        (run.output_dir / "train_config.json").write_text(json.dumps(run.config, indent=1))


def run_validation(run: Run, iteration: int) -> None:
    """The policy on the validation prompts (main process); the pipeline is kept in OUTPUT_DIR/best when it is the
    best so far."""
    if not run.held_out or not run.accelerator.is_main_process:
        return
    run.unet.eval()
    record = {"iteration": iteration, **validate(run.policy, run.held_out, run.args.validation_seed, run.ranker)}
    run.history["validation"].append(record)
    logger.info("validation " + " ".join(f"{k} {v:.3f}" for k, v in record.items() if isinstance(v, float)))
    if record is max(run.history["validation"], key=validation_rank):
        save_pipeline(run.base, run.accelerator.unwrap_model(run.unet), run.output_dir / "best", run.lora)


def sample_and_reward(run: Run, iteration: int) -> Samples:
    """Steps 1-2: this process's share of the iteration's prompts, ``--group_size`` clips each on the training
    sampler, rewarded; then everything gathered from every process."""
    args, accelerator, policy = run.args, run.accelerator, run.policy
    world, rank = accelerator.num_processes, accelerator.process_index
    began = time.time()
    seed = iteration_seed(args.seed, iteration)
    prompts = run.training_prompts(seed, args.prompts_per_iteration)
    per_process = args.prompts_per_iteration // world
    mine = prompts[rank * per_process:(rank + 1) * per_process]
    run.unet.eval()
    first_clip = rank * per_process * args.group_size
    clip_seeds = [seed * 10_000 + first_clip + i for i in range(per_process * args.group_size)]
    trajectory = policy.sample_trajectory(
        mine, num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
        num_waveforms_per_prompt=args.group_size, eta=args.eta, stochastic_steps=args.stochastic_steps,
        generator=policy.clip_generators(clip_seeds))
    sampled = time.time()
    rewards = []
    for index, prompt in enumerate(mine):
        group = trajectory.audios[index * args.group_size:(index + 1) * args.group_size]
        rewards.extend(run.ranker(group, policy.sampling_rate, prompt))
    device = accelerator.device
    return Samples(prompts=[p for p in prompts for _ in range(args.group_size)],
                   rewards=accelerator.gather(torch.tensor(rewards, dtype=torch.float32, device=device)).cpu(),
                   step_latents=accelerator.gather(trajectory.step_latents.to(device)).cpu(),
                   log_probs=accelerator.gather(trajectory.log_probs.to(device)).cpu(),
                   sample_seconds=sampled - began, reward_seconds=time.time() - sampled)


def update(run: Run, samples: Samples, iteration: int) -> dict:
    """Steps 3-4: advantages within each prompt's group (groups that all scored the same are left out), then
    ``--inner_epochs`` passes of clipped policy-gradient updates on the recorded stochastic steps; the metrics."""
    args, accelerator, policy = run.args, run.accelerator, run.policy
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    rewards = samples.rewards
    advantages = group_advantages(rewards, args.group_size).clamp(-args.advantage_clip, args.advantage_clip)
    informative = rewards.reshape(-1, args.group_size).std(dim=1) > 1e-6
    kept = torch.nonzero(informative.repeat_interleave(args.group_size)).flatten()
    generator = torch.Generator().manual_seed(iteration_seed(args.seed, iteration))
    order = kept[torch.randperm(len(kept), generator=generator)]
    order = order[: len(order) - len(order) % world]  # every process trains the same number of clips
    my_clips = order[rank::world]
    run.unet.train()
    losses_seen, kls, clipped = [], [], []
    for _ in range(args.inner_epochs):
        for first in range(0, len(my_clips), args.train_batch_size):
            chosen = my_clips[first:first + args.train_batch_size]
            with torch.no_grad():
                embeds, mask = policy.encode_prompt([samples.prompts[i] for i in chosen], device, 1,
                                                    args.guidance_scale > 1.0)
            batch = {"step_latents": samples.step_latents[chosen].to(device), "prompt_embeds": embeds,
                     "attention_mask": mask}
            total = 0.0
            for step in range(args.stochastic_steps):
                log_prob, kl = policy_step(policy, run.unet, run.reference, batch, step, args, run.scheduler,
                                           run.guided)
                loss, metrics = grpo_loss(log_prob, samples.log_probs[chosen, step].to(device),
                                          advantages[chosen].to(device), args.clip_range, kl, args.beta_kl)
                total = total + loss / args.stochastic_steps
                kls.append(metrics["kl"])
                clipped.append(metrics["clip_fraction"])
            if not torch.isfinite(total):
                raise SystemExit(f"error: non-finite loss at iteration {iteration}: lower --learning_rate")
            accelerator.backward(total)
            accelerator.clip_grad_norm_(run.trainable, args.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            losses_seen.append(float(total.detach()))
    return {"groups_trained": int(informative.sum()),
            "loss": float(np.mean(losses_seen)) if losses_seen else 0.0,
            "kl": float(np.mean(kls)) if kls else 0.0,
            "clip_fraction": float(np.mean(clipped)) if clipped else 0.0}


def save_outputs(run: Run) -> None:
    """The final policy, the metrics, curves and card; ``best/`` and ``final/`` each get a copy of them."""
    if not run.accelerator.is_main_process:
        return
    output_dir, history = run.output_dir, run.history
    save_pipeline(run.base, run.accelerator.unwrap_model(run.unet), output_dir / "final", run.lora)
    best = max(history["validation"], key=validation_rank, default=None)
    (output_dir / "train_metrics.json").write_text(json.dumps({**history, "best": best}, indent=1))
    plot_curves(history, output_dir / "training_curves.png")
    write_model_card(output_dir, run.config, history, best)
    for folder in ("best", "final"):  # each a model that travels alone: its card and how it was trained
        if (output_dir / folder).is_dir():
            for name in ("README.md", "train_config.json", "train_metrics.json", "training_curves.png"):
                shutil.copy(output_dir / name, output_dir / folder / name)
    logger.info(f"done: {output_dir / 'best'} (validation-best), {output_dir / 'final'} (last iteration)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    accelerator = Accelerator()
    # Subnormal activations ran the tiny UNets 2-3x slower on x86 CPUs (pipeline.tango.flush_denormals): the
    # updates' forward and backward passes get the same treatment as sampling.
    torch.set_flush_denormal(True)
    if args.prompts_per_iteration % accelerator.num_processes:
        raise SystemExit(f"error: --prompts_per_iteration ({args.prompts_per_iteration}) must be a multiple of the "
                         f"number of processes ({accelerator.num_processes}): each samples its share")
    run = Run(args, accelerator, Path(args.output_dir), {**vars(args), "num_processes": accelerator.num_processes})
    load_models(run)
    resume(run)
    if run.start == 0:
        run_validation(run, 0)
    bar = tqdm(range(run.start, args.iterations), initial=run.start, total=args.iterations, unit="iteration",
               disable=not accelerator.is_main_process)
    for iteration in bar:
        began = time.time()
        samples = sample_and_reward(run, iteration)
        rewarded = time.time()
        metrics = update(run, samples, iteration)
        record = {"iteration": iteration + 1, "reward_mean": float(samples.rewards.mean()),
                  "reward_std": float(samples.rewards.reshape(-1, args.group_size).std(dim=1).mean()),
                  "clips": len(samples.rewards), **metrics, "seconds": time.time() - began,
                  "sample_seconds": samples.sample_seconds, "reward_seconds": samples.reward_seconds,
                  "update_seconds": time.time() - rewarded}
        run.history["train"].append(record)
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl']:.2e}",
                        clipped=f"{record['clip_fraction']:.2f}", s=f"{record['seconds']:.0f}")
        if (iteration + 1) % args.validation_every == 0 or iteration + 1 == args.iterations:
            run_validation(run, iteration + 1)
        save_checkpoint(accelerator, run.output_dir, iteration, run.config, run.history)
    save_outputs(run)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
