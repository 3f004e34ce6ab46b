"""Does a model's likelihood prefer the chosen clip of each pair, measured without the noise of one draw?

    python experiments/pair_likelihood.py --dataset runs/reordered/a/merged/all --models tiny runs/reordered/a/dpo-from-tiny

A DPO step estimates each clip's denoising loss from one noise draw at one timestep; on pairs whose clips differ
in little (the reordered pairs: the same sounds in another order) that estimate is mostly noise. Here every pair
gets ``D = L(chosen) - L(rejected)`` averaged over ``--draws`` shared (noise, timestep) draws, timesteps
stratified over [0, 1000), for each model, on its stored latents (``train_dpo.py``'s cache) and the pipeline's
text states. Reported per model: the share of pairs with ``D < 0`` (the model finds the chosen clip more likely;
for the base model a zero-shot ranker), per timestep band, and for tuned models the implicit accuracy
``D_tuned - D_base < 0`` on the pairs ``train_dpo.py`` trained on and on its held-out prompts (its
``split_validation`` with the same fraction and seed).

Reordered pairs come with their mirror (the same two latents the other way round, for the prompt written in the
rejected clip's order). On those, ``S = D(prompt) + D(mirrored prompt)`` cancels whatever one clip has that the
other has not (the seams of the cut one) and keeps what the text's order does to the likelihood: the share of
mirror groups with ``S < 0`` is how often the model's likelihood follows the order the prompt states (0.5: it does
not read order at all). ``--sample N``: the sampler's side of the same question, on N mirror groups: each prompt
and its mirror sampled with one seed (the same starting noise), both clips heard by the judge; a model that reads
order puts the events of the two in opposite orders, an order-blind one in the same. Writes ``--out`` (JSON).

The answer: bench/results/order-pairs/reordered/pair-likelihood*.json; read in docs/results.md, "Pairs that contrast order and nothing else".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from latent_path import BANDS  # noqa: E402  (the same timestep bands as the data-path probe)


def pair_differences(pipe, latents_w, latents_l, embeds, masks, draws: int, seed: int) -> np.ndarray:
    """``(pairs, draws)`` of L(chosen) - L(rejected), draw ``d`` at timestep band ``d % 4``, the same for every model."""
    import torch
    from diffusers import DDPMScheduler

    from losses import denoising_loss

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    out = np.zeros((len(latents_w), draws))
    with torch.no_grad():
        for d in range(draws):
            low, high = BANDS[d % len(BANDS)]
            noise = torch.randn(latents_w.shape[1:], generator=generator).expand_as(latents_w)
            t = torch.full((len(latents_w),), int(torch.randint(low, high, (1,), generator=generator)))
            both = lambda x: torch.cat([x, x])  # noqa: E731
            losses = denoising_loss(pipe.unet, scheduler, torch.cat([latents_w, latents_l]), both(noise), both(t),
                                    both(embeds), both(masks))
            chosen, rejected = losses.chunk(2)
            out[:, d] = (chosen - rejected).numpy()
    return out


def mirror_groups(rows) -> list[tuple[int, int]]:
    """(row, its mirror) index pairs: the mirror's chosen latent is the row's rejected one and the other way round."""
    by_latents = {}
    for i, row in enumerate(rows):
        by_latents[row["chosen_latent"], row["rejected_latent"]] = i
    return [(i, by_latents[key[::-1]]) for key, i in by_latents.items() if key[::-1] in by_latents and
            i < by_latents[key[::-1]]]


def sampled_layouts(spec: str, prompt_pairs: list[tuple[str, str]], seed: int) -> dict:
    """Each prompt and its mirror sampled from the same seed: how often the judge hears the prompted events of the
    two clips in opposite orders (each following its text), in the same order, or cannot tell (an event missing)."""
    from pipeline import clip_seeds, load_pipeline
    from soundworld.judge import detect_events, heard_order
    from soundworld.grammar import parse

    pipe = load_pipeline(spec, device="cpu")
    seeds = clip_seeds(seed, len(prompt_pairs))
    flat = [prompt for pair in prompt_pairs for prompt in pair]
    out = pipe(flat, num_inference_steps=pipe.config.default_num_inference_steps,
               generator=pipe.clip_generators([s for s in seeds for _ in range(2)])).audios
    counts = {"opposite": 0, "same": 0, "event missing": 0}
    for k, (first, _) in enumerate(prompt_pairs):
        types = parse(first).types
        heard = [heard_order([e.type for e in detect_events(out[2 * k + i], pipe.sampling_rate)], types) for i in (0, 1)]
        if any(sorted(h) != sorted(types) for h in heard):
            counts["event missing"] += 1
        else:
            counts["same" if heard[0] == heard[1] else "opposite"] += 1
    return counts


def accuracy(values: np.ndarray) -> float:
    return round(float(np.mean(values < 0)), 3)


def main(argv: list[str] | None = None) -> dict:
    import torch

    from preference_data.latents import latent_from_bytes
    from pipeline import load_pipeline
    from train_dpo import load_pairs, split_validation

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a preference dataset folder with stored latents")
    parser.add_argument("--models", nargs="+", required=True, help="the base model first, then tuned ones")
    parser.add_argument("--pairs", type=int, default=240, help="pairs drawn from each side of the split")
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="train_dpo.py's --seed (its split)")
    parser.add_argument("--sample", type=int, default=0,
                        help="mirror groups sampled from one seed each (at most --pairs: the probed groups)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    rows = load_pairs(args.dataset, "train")
    train, held = split_validation([row["prompt"] for row in rows], args.validation_fraction, args.seed)
    rng = np.random.default_rng(0)
    sides = {name: sorted(rng.choice(idx, min(args.pairs, len(idx)), replace=False).tolist())
             for name, idx in (("trained", train), ("held_out", held))}
    mirrors = mirror_groups(rows)
    mirrors = [mirrors[i] for i in sorted(rng.choice(len(mirrors), min(args.pairs, len(mirrors)), replace=False))]
    sides["mirrored_first"], sides["mirrored_second"] = [a for a, _ in mirrors], [b for _, b in mirrors]
    result = {"dataset": args.dataset, "draws": args.draws, "pairs": {k: len(v) for k, v in sides.items()},
              "models": {}}
    differences = {}
    for spec in args.models:
        pipe = load_pipeline(spec, device="cpu", dtype=torch.float32)
        for side, indices in sides.items():
            picked = [rows[i] for i in indices]
            latents = [torch.from_numpy(np.stack([latent_from_bytes(row[key]) for row in picked]))
                       for key in ("chosen_latent", "rejected_latent")]
            embeds, masks = pipe.encode_prompt([row["prompt"] for row in picked], "cpu", 1, False)
            differences[spec, side] = pair_differences(pipe, *latents, embeds, masks.bool(), args.draws, seed=1)
        base = args.models[0]
        # D(P) + D'(P') = [L(X|P) - L(Y|P)] - [L(X|P') - L(Y|P')]: the clips' own difference cancels
        text_order = differences[spec, "mirrored_first"].mean(axis=1) + differences[spec, "mirrored_second"].mean(axis=1)
        # how far the stated order moves the likelihood, against how far the two clips of a pair are apart
        entry = {"likelihood_follows_stated_order": accuracy(text_order),
                 "mean_abs_stated_order_effect": float(np.abs(text_order / 2).mean()),
                 "mean_abs_pair_difference": float(np.abs(differences[spec, "mirrored_first"].mean(axis=1)).mean())}
        for side in ("trained", "held_out"):
            d = differences[spec, side]
            entry[side] = {
                "likelihood_prefers_chosen": accuracy(d.mean(axis=1)),
                "by_band": {f"{low}-{high - 1}": accuracy(d[:, i::len(BANDS)].mean(axis=1))
                            for i, (low, high) in enumerate(BANDS)},
                "one_draw": accuracy(d.ravel()),
            }
            if spec != base:
                implicit = d - differences[base, side]
                entry[side]["implicit_accuracy"] = accuracy(implicit.mean(axis=1))
                entry[side]["implicit_accuracy_one_draw"] = accuracy(implicit.ravel())
        if args.sample:
            groups = mirrors[: args.sample]
            entry["sampled_same_seed"] = sampled_layouts(spec, [(rows[a]["prompt"], rows[b]["prompt"]) for a, b in groups],
                                                         seed=424_242)
        result["models"][spec] = entry
        print(spec, json.dumps(entry), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
