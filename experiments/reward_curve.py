"""How many human rankings a preference model needs: simulated annotators, a learning curve, held-out prompts.

    python experiments/reward_curve.py --out runs/reward                       # generate, rank, train, evaluate
    python experiments/reward_curve.py --out runs/reward --sizes 201,1002      # other curve points (clips are reused)

1. Clips: ``--prompts`` training-split prompts (one ranking task each) and ``--eval-prompts`` other ones, K = 4
   clips per prompt (two of ``tiny``, two of ``tiny-dpo``, independent seeds), every clip scored by the judge.
   Stored in chunks under ``--out`` (a stopped run resumes).
2. ``--annotators`` simulated annotators rank each training task (the app's default target is three rankings per
   task), each by the judge's score plus their own Gaussian noise, its scale set so that ``--error`` of the pairs
   the judge tells apart come out reversed (20 %: a careless human); a task whose clips the judge scores all zero
   gets all-bad votes (no preference), as a person would give.
3. For each N in ``--sizes``, a preference model (``preference.reward``) trains on the rankings of the first
   N / annotators tasks; its pair accuracy against the judge is measured on the held-out prompts (every two clips
   the judge scores differently), with a 95 % interval over prompts. The model of the largest N is saved to
   ``--out``/model-<N>.

With ``--pretrain M`` the head first learns from M rendered training-split captions, each against clips of its
perturbed captions (``preference.reward.pretrain_preference_model``: captioned audio, as CLAP learned, and no judge;
the held-out prompts are never among the captions;
``--pretrain-round-trip`` passes that share of the clips through tiny's VAE and vocoder; ``--pretrain-added-event``
makes one contrast of each caption a clip with an event added), saved to ``--out``/pretrained-M-SHARE[-added] and
reused; its accuracy before any ranking is the curve's point 0, and every point
fine-tunes from it at ``--learning-rate``.

With ``--tagger M`` the model hears clips through an event tagger (``preference.events``) trained on M rendered
training-split captions with their timelines, each clip also through tiny's VAE and vocoder (``--tagger-round-trip``
of them; no judge; the held-out prompts are never among them), saved to ``--out``/tagger-M-SHARE and reused; each
point trains an event-level head over it.

``--check-split SPLIT`` also measures the largest model on ``--eval-prompts`` prompts of another split (``test``:
strings no ranking, caption or tagger clip ever used) with clips of their own seeds: an evaluation nothing was
tuned on.

Writes ``--out``/curve.json (``--name``) and prints a table. ``--width``, ``--dropout``, ``--weight-decay`` and
``--learning-rate`` set the head and its optimiser.

The answer: bench/results/reward/curve*.json; read in docs/results.md, "A preference model learned from votes".
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from preference.reward import (  # noqa: E402
    Comparison,
    Comparisons,
    PreferenceModel,
    evaluate,
    pretrain_preference_model,
    sound_world_captions,
    train_preference_model,
)
from soundworld import judge, sample_prompts  # noqa: E402

K_PER_MODEL = 2
MODELS = ("tiny", "tiny-dpo")
CHUNK = 50  # prompts per stored chunk
PROMPT_DRAW = 3600  # training-split prompts drawn (about 2600 distinct): the same list whatever the sizes asked


def generate(prompts: list[str], out: Path, name: str, steps: int | None, seed: int) -> dict:
    """Clips and judge scores for ``prompts``, stored in chunks; returns the arrays of all chunks."""
    import torch

    from pipeline import load_pipeline

    pipes = {}
    chunks = []
    for first in range(0, len(prompts), CHUNK):
        path = out / f"{name}-{first:05d}.npz"
        if not path.is_file():
            if not pipes:
                pipes = {model: load_pipeline(model, device="cpu", dtype=torch.float32) for model in MODELS}
                for pipe in pipes.values():
                    pipe.set_progress_bar_config(disable=True)
            batch = prompts[first:first + CHUNK]
            audio, latents, scores, models, seeds = [], [], [], [], []
            for m, (model, pipe) in enumerate(pipes.items()):
                clip_seeds = [seed + (first + i) * 100 + m * 10 + j for i in range(len(batch)) for j in range(K_PER_MODEL)]
                output = pipe(batch, num_inference_steps=steps, num_waveforms_per_prompt=K_PER_MODEL,
                              generator=pipe.clip_generators(clip_seeds))
                audio.append(output.audios.reshape(len(batch), K_PER_MODEL, -1))
                latents.append(output.latents.numpy().reshape(len(batch), K_PER_MODEL, *output.latents.shape[1:]))
                scores.append(np.array([[judge(clip, pipe.sampling_rate, prompt).score for clip in clips]
                                        for prompt, clips in zip(batch, audio[-1])]))
                models.append(np.full((len(batch), K_PER_MODEL), m))
                seeds.append(np.array(clip_seeds).reshape(len(batch), K_PER_MODEL))
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, audio=(np.clip(np.concatenate(audio, 1), -1, 1) * 32767).astype(np.int16),
                     latents=np.concatenate(latents, 1).astype(np.float16),  # what DPO would train on
                     scores=np.concatenate(scores, 1), models=np.concatenate(models, 1),
                     seeds=np.concatenate(seeds, 1), prompts=np.array(batch))
            tmp.replace(path)  # a chunk is there whole or not at all
            print(f"{name}: {first + len(batch)}/{len(prompts)} prompts", flush=True)
        chunks.append(dict(np.load(path)))
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[-1] if key in chunks[0]}


def clip_key(split: str, task: int, clip: int) -> str:
    return f"{split}-{task}-{clip}"


def as_float(samples: np.ndarray) -> np.ndarray:
    """Stored int16 clips back to float32 waveforms."""
    return samples.astype(np.float32) / 32767


def audio_of(split: str, data: dict) -> dict[str, np.ndarray]:
    return {clip_key(split, t, c): as_float(data["audio"][t, c])
            for t in range(len(data["prompts"])) for c in range(data["audio"].shape[1])}


def noise_for_error(scores: np.ndarray, error: float, seed: int) -> float:
    """The noise scale at which ``error`` of the judge-distinct pairs within a task come out reversed."""
    rng = np.random.default_rng(seed)
    draws = rng.standard_normal((20, *scores.shape))
    pairs = [(a, b) for a, b in combinations(range(scores.shape[1]), 2)]

    def flipped(sigma: float) -> float:
        noisy = scores[None] + sigma * draws
        rates = []
        for a, b in pairs:
            distinct = scores[:, a] != scores[:, b]
            judge_says = scores[:, a] > scores[:, b]
            rates.append(((noisy[:, :, a] > noisy[:, :, b]) != judge_says)[:, distinct])
        return float(np.concatenate([r.ravel() for r in rates]).mean())

    low, high = 0.0, 10.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if flipped(middle) < error else (low, middle)
    return (low + high) / 2


def simulated_rankings(data: dict, sigma: float, annotators: int, seed: int) -> list[list[Comparison]]:
    """Per task, each noisy annotator's ranking as comparisons (all-zero tasks: all-bad votes, no comparison)."""
    from annotate.pairs import ordered_pairs

    rng = np.random.default_rng(seed)
    tasks = []
    for task, (prompt, scores) in enumerate(zip(data["prompts"], data["scores"])):
        items = []
        for _ in range(annotators):
            noisy = scores + sigma * rng.standard_normal(len(scores))
            if scores.any():
                ranks = {clip_key("train", task, c): int(r) + 1 for c, r in enumerate(np.argsort(np.argsort(-noisy)))}
                items += [Comparison(str(prompt), better, worse) for better, worse in ordered_pairs(ranks)]
        tasks.append(items)
    return tasks


def same_events_as_judge(tagger, data: dict) -> float:
    """Share of the clips in which the tagger hears the same event types, each as often, as the judge does."""
    from collections import Counter

    from preference.events import AUDIO_FEATURES, log_mel
    from soundworld import EVENT_TYPES, detect_events

    same = []
    for clips in data["audio"]:
        waveforms = [as_float(clip) for clip in clips]
        segments = tagger.audio_events(log_mel(waveforms))[..., AUDIO_FEATURES.index("segments")]
        for waveform, counts in zip(waveforms, segments.int().tolist()):
            heard = Counter({name: n for name, n in zip(EVENT_TYPES, counts) if n})
            same.append(heard == Counter(event.type for event in detect_events(waveform, 16000)))
    return round(float(np.mean(same)), 4)


def judge_comparisons(split: str, data: dict) -> list[Comparison]:
    """Every two clips of a task the judge scores differently, the higher one better."""
    items = []
    for task, (prompt, scores) in enumerate(zip(data["prompts"], data["scores"])):
        for a, b in combinations(range(len(scores)), 2):
            if scores[a] != scores[b]:
                better, worse = (a, b) if scores[a] > scores[b] else (b, a)
                items.append(Comparison(str(prompt), clip_key(split, task, better), clip_key(split, task, worse)))
    return items


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reward"))
    parser.add_argument("--prompts", type=int, default=334, help="training tasks")
    parser.add_argument("--annotators", type=int, default=3, help="simulated rankings per training task")
    parser.add_argument("--eval-prompts", type=int, default=100, help="held-out prompts the accuracy is read on")
    parser.add_argument("--sizes", default="201,501,1002", help="rankings per curve point (multiples of --annotators)")
    parser.add_argument("--error", type=float, default=0.2, help="share of judge-distinct pairs an annotator reverses")
    parser.add_argument("--steps", type=int, default=12, help="sampling steps of the clips (model's sampler)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--width", type=int, help="the preference head's width (default 128; 32 over --tagger)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--learning-rate", type=float, help="default 3e-4; 1e-3 over --tagger")
    parser.add_argument("--name", default="curve", help="results go to OUT/NAME.json and OUT/NAME-model-<N>")
    parser.add_argument("--pretrain", type=int, default=0, help="rendered captions to pretrain the head on first")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--pretrain-added-event", action="store_true",
                        help="one contrast of each caption has an event added (soundworld.perturb.added_events)")
    parser.add_argument("--pretrain-round-trip", type=float, default=0.0,
                        help="share of the rendered clips passed through tiny's VAE and vocoder")
    parser.add_argument("--tagger", type=int, default=0, help="rendered captions to train an event tagger on first")
    parser.add_argument("--tagger-epochs", type=int, default=3)
    parser.add_argument("--tagger-round-trip", type=float, default=1.0,
                        help="share of the tagger's clips that come a second time, through tiny's VAE and vocoder")
    parser.add_argument("--check-split", help="also measure the largest model on this split's prompts (e.g. test)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    unique = list(dict.fromkeys(sample_prompts("train", PROMPT_DRAW, args.seed)))
    if len(unique) < args.prompts + args.eval_prompts:
        raise SystemExit(f"only {len(unique)} distinct training-split prompts for seed {args.seed}")
    train = generate(unique[:args.prompts], args.out, "train", args.steps, args.seed * 1_000_003)
    evaluated = unique[len(unique) - args.eval_prompts:]  # from the other end
    held = generate(evaluated, args.out, "eval", args.steps,
                    args.seed * 1_000_003 + 500_000_000)
    if args.generate_only:
        return {}
    sigma = noise_for_error(train["scores"], args.error, args.seed)
    annotated = simulated_rankings(train, sigma, args.annotators, args.seed)
    audio = {**audio_of("train", train), **audio_of("eval", held)}
    against_judge = Comparisons(judge_comparisons("eval", held), audio)
    report = {"settings": {key: str(value) for key, value in vars(args).items()}, "noise_sigma": sigma,
              "all_bad_tasks": int((~train["scores"].any(1)).sum()),
              "mean_judge_score_train": float(train["scores"].mean()), "points": []}
    sizes = [int(size) for size in args.sizes.split(",")]
    head = {"width": args.width or (32 if args.tagger else 128), "dropout": args.dropout}
    learning_rate = args.learning_rate or (1e-3 if args.tagger else 3e-4)
    pretrained, tagger, reads_through = None, None, ""
    if args.tagger:
        from preference.events import load_tagger, rendered_timelines, save_tagger, train_event_tagger
        from pipeline import load_pipeline

        folder = args.out / f"tagger-{args.tagger}-{args.tagger_round_trip:g}"
        if not (folder / "config.json").is_file():
            pipe = load_pipeline("tiny", device="cpu")
            clips = rendered_timelines(args.tagger, seed=args.seed, through=pipe, through_share=args.tagger_round_trip,
                                       exclude=set(evaluated))
            save_tagger(*train_event_tagger(clips, pipe.tokenizer, pipe.text_encoder,
                                            round_trip_share=args.tagger_round_trip,
                                            epochs=args.tagger_epochs, seed=args.seed), folder)
        tagger, tagger_report = load_tagger(folder)
        reads_through = tagger_report.summary
        report["tagger"] = {key: value for key, value in vars(tagger_report).items() if key != "history"}
        report["tagger"]["events_as_the_judge_hears_them"] = same_events_as_judge(tagger, held)
    if args.pretrain:
        folder = args.out / (f"pretrained-{args.pretrain}-{args.pretrain_round_trip:g}"
                             + ("-added" if args.pretrain_added_event else ""))
        if not (folder / "reward").is_dir():
            from pipeline import load_pipeline

            through = load_pipeline("tiny", device="cpu") if args.pretrain_round_trip else None
            captions = sound_world_captions(args.pretrain, seed=args.seed, through=through,
                                            through_share=args.pretrain_round_trip, exclude=set(evaluated),
                                            added_event=args.pretrain_added_event)
            pretrain_preference_model(captions, base="tiny", seed=args.seed, epochs=args.pretrain_epochs,
                                      **head).save_pretrained(folder)
        pretrained, head = PreferenceModel.from_pretrained(folder), {}
        sizes = [0, *sizes]
    for size in sizes:
        tasks = annotated[:size // args.annotators]
        comparisons = Comparisons([c for items in tasks for c in items], audio)
        if size == 0:
            model = pretrained
        else:
            model = train_preference_model(comparisons, base="tiny", epochs=args.epochs, seed=args.seed,
                                           progress=False, init=pretrained, tagger=tagger, reads_through=reads_through,
                                           source=f"{size} simulated rankings ({args.error:.0%} annotator error)",
                                           learning_rate=learning_rate, weight_decay=args.weight_decay, **head)
        result = evaluate(model, against_judge, seed=args.seed)
        model.report.evaluations["held-out prompts vs judge"] = result
        point = {"rankings": size, "tasks": len(tasks), "comparisons": len(comparisons.items),
                 "epochs": model.report.epochs_run,
                 "validation_accuracy_vs_annotators": model.report.validation_accuracy, "heldout_vs_judge": result}
        report["points"].append(point)
        print(f"{size:>5} rankings ({len(comparisons.items)} comparisons): held-out accuracy vs judge "
              f"{result['accuracy']:.3f} [{result['interval'][0]:.3f}, {result['interval'][1]:.3f}] on "
              f"{result['pairs']} pairs", flush=True)
        if size == max(sizes) and args.check_split:
            check = generate(sample_prompts(args.check_split, args.eval_prompts, args.seed), args.out,
                             f"check-{args.check_split}", args.steps, args.seed * 1_000_003 + 700_000_000)
            split_comparisons = Comparisons(judge_comparisons("check", check), audio_of("check", check))
            point[f"{args.check_split}_vs_judge"] = result = evaluate(model, split_comparisons, seed=args.seed)
            model.report.evaluations[f"{args.check_split} prompts vs judge"] = result
            print(f"      {args.check_split} prompts: accuracy vs judge {result['accuracy']:.3f} "
                  f"[{result['interval'][0]:.3f}, {result['interval'][1]:.3f}] on {result['pairs']} pairs", flush=True)
        if size == max(sizes):
            model.save_pretrained(args.out / (f"model-{size}" if args.name == "curve" else f"{args.name}-model-{size}"))
        (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
