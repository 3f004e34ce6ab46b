"""Does a preference model learned from simulated human rankings rank candidates well enough for DPO?

    python experiments/reward_dpo.py --clips runs/reward --reward runs/reward/model-1002 --out runs/reward-dpo

The candidates are ``experiments/reward_curve.py``'s held-out clips (prompts the preference model never saw; four clips
per prompt with the latents they were decoded from). Each ranker picks the best and the worst clip of every prompt
the judge does not score all alike: ``judge`` (the exact ranker, what the DPO experiment used), ``reward`` (the
learned model) or ``random`` (seeded random picks: what ranking is worth at all). Same prompts, same number of
pairs, same recipe (``dpo_experiment.COMMON``, β 2000): only who ranked differs. Each tuned model and the base are then judged on ``test`` and ``heldout`` prompts, with
paired differences against the base and against the random picks' run (what the ranking bought, clip by clip on
the same prompts and seeds). Stages resume; writes ``OUT/summary.json``.

The answer: bench/results/reward/dpo-*.json; read in docs/results.md, "Does its ranking make DPO pairs?".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dpo_experiment import COMMON, METRICS, difference, evaluate, run  # noqa: E402  (experiments/)

from annotate.clips import encode_wav  # noqa: E402
from preference_data.dataset import PreferenceRow, write_preference_dataset  # noqa: E402
from preference.reward import PreferenceModel  # noqa: E402
from reward_curve import MODELS, as_float  # noqa: E402  (experiments/)
from soundworld.evaluate import compare  # noqa: E402

RANKERS = ("judge", "reward", "random")


def random_scores(shape: tuple, seed: int = 0) -> np.ndarray:
    """The random ranker's scores: the same picks whenever asked."""
    return np.random.default_rng(seed).random(shape)


def write_pairs(clips: dict, rewards: np.ndarray, ranker: str, out: Path, fingerprint: str) -> int:
    """Best against worst of each prompt by ``ranker``'s scores, on the prompts the judge separates."""
    scores = {"judge": clips["scores"], "reward": rewards, "random": random_scores(clips["scores"].shape)}[ranker]
    rows = []
    for task, prompt in enumerate(clips["prompts"]):
        if clips["scores"][task].max() == clips["scores"][task].min():
            continue  # no pair anyone could prefer for sure: left out for every ranker alike
        best, worst = int(np.argmax(scores[task])), int(np.argmin(scores[task]))
        audio = as_float(clips["audio"][task])
        rows.append(PreferenceRow(
            prompt=str(prompt), chosen_wav=encode_wav(audio[best]), rejected_wav=encode_wav(audio[worst]),
            strategy="inference", ranker=ranker,
            chosen_model=MODELS[clips["models"][task, best]], rejected_model=MODELS[clips["models"][task, worst]],
            chosen_seed=int(clips["seeds"][task, best]), rejected_seed=int(clips["seeds"][task, worst]),
            num_inference_steps=0, guidance_scale=3.0, votes_for=1, votes_against=0, annotators=1,
            chosen_latent=clips["latents"][task, best].astype(np.float32),
            rejected_latent=clips["latents"][task, worst].astype(np.float32), latent_fingerprint=fingerprint))
    write_preference_dataset(rows, out, how_made=f"best vs worst of 4 candidates per prompt, ranked by {ranker}")
    return len(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, default=Path("runs/reward"), help="experiments/reward_curve.py's --out")
    parser.add_argument("--reward", type=Path, default=Path("runs/reward/model-1002"))
    parser.add_argument("--out", type=Path, default=Path("runs/reward-dpo"))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--eval-seed", type=int, default=424_242)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from pipeline import load_pipeline

    eval_chunks = sorted(args.clips.glob("eval-*.npz"))
    if not eval_chunks or "latents" not in np.load(eval_chunks[0]).files:
        raise SystemExit(f"{args.clips}: no held-out clips with latents; run experiments/reward_curve.py first")
    clips = {key: np.concatenate([np.load(path)[key] for path in eval_chunks]) for key in np.load(eval_chunks[0]).files}
    model = PreferenceModel.from_pretrained(args.reward)
    rewards = np.array([model(as_float(task), 16000, str(prompt))
                        for prompt, task in zip(clips["prompts"], clips["audio"])])
    fingerprint = load_pipeline(args.model, device="cpu").latent_fingerprint
    judged = clips["scores"]
    separated = judged.max(1) > judged.min(1)
    summary = {"prompts": len(judged), "pairs_per_ranker": int(separated.sum()), "agreement_with_judge": {},
               "runs": {}}
    for ranker in RANKERS:
        pairs = args.out / f"pairs-{ranker}"
        if not (pairs / "data").is_dir():
            write_pairs(clips, rewards, ranker, pairs, fingerprint)
        tuned = args.out / f"dpo-{ranker}"
        if not (tuned / "model_index.json").is_file():
            run([sys.executable, "train_dpo.py", "--pretrained_model", args.model, "--dataset", str(pairs),
                 "--output_dir", str(tuned), "--beta_dpo", "2000", "--seed", str(args.seed), *COMMON],
                args.out / f"train-{ranker}.log")
    for ranker, scores in (("reward", rewards), ("random", random_scores(judged.shape))):
        picked_best = judged[np.arange(len(judged)), scores.argmax(1)]
        picked_worst = judged[np.arange(len(judged)), scores.argmin(1)]
        summary["agreement_with_judge"][ranker] = {
            "chosen_beats_rejected_by_judge": float((picked_best > picked_worst)[separated].mean()),
            "chosen_is_judge_best": float((picked_best == judged.max(1))[separated].mean())}
    for split in ("test", "heldout"):
        base = args.out / "eval" / f"{split}-base.json"
        evaluate(args.model, split, args.eval_n, args.eval_seed, base)
        reports = {ranker: evaluate(str(args.out / f"dpo-{ranker}"), split, args.eval_n, args.eval_seed,
                                    args.out / "eval" / f"{split}-{ranker}.json", compare=base) for ranker in RANKERS}
        for ranker, report in reports.items():
            versus_random = compare(report["clips"], reports["random"]["clips"], seed=args.seed)
            summary["runs"].setdefault(ranker, {})[split] = {
                **{metric: report.get(metric) for metric in METRICS},
                **{f"{metric}_minus_base": difference(report["compared_to"], metric) for metric in METRICS},
                **({f"{metric}_minus_random": difference(versus_random, metric) for metric in METRICS}
                   if ranker != "random" else {})}
            print(f"{split:>8} {ranker:>7}: " + "  ".join(
                f"{metric} {summary['runs'][ranker][split][metric + '_minus_base']}"
                for metric in ("event_recall", "order_accuracy", "mean_score")), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
