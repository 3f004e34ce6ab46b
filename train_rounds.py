"""Iterative preference rounds (TangoFlux's CRPO loop) as one resumable command.

    python train_rounds.py --model tiny --rounds 3 --prompts 500 --k 4 --ranker judge --out runs/rounds
    accelerate launch train_rounds.py --model tiny --rounds 3 ...   # N processes share every stage
    python train_rounds.py ... --train-args "--loss crpo --learning_rate 1e-5 --num_train_epochs 2"

Tango 2 made Audio-Alpaca once; TangoFlux repeats generate -> rank -> train with the updated
model. Round r = 1..R, from the current model (round 1: ``--model``):

  1. pairs     ``--prompts`` fresh training-split prompts (seeded per round: TangoFlux found
               reused prompts degrade after round 2), ``--k`` candidates each from the current
               model, made into pairs by ``--strategies`` (inference, perturbed, temporal) and
               Tango 2's filter (``autopairs.autorank``, batched; the pairs keep their sampled
               latents) -> ``OUT/round-r/pairs``. Prompts are split across processes.
  2. train     ``train_dpo.py`` on those pairs from the current model -> ``OUT/round-r/model``
               (validated on held-out prompts and on ``--judge-prompts`` judged prompts;
               ``--train-args`` are passed through; the pipeline it keeps in ``model/best``
               becomes the next round's model).
  3. evaluate  the judge scores one clip per ``--eval-n`` fixed validation prompts (training
               split, a seed no round draws candidates with) -> ``OUT/round-r/eval.json``.
               Round 0 is the starting model.

Every stage writes its output atomically and is skipped when that output exists, so the
same command, rerun after a kill, continues where it stopped. ``OUT/rounds.json``,
``OUT/rounds.md`` (the per-round table) and ``OUT/rounds.png`` (the curve) are rewritten
after every round.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from annotate.validation import InvalidInput
from autopairs.autorank import (AutorankReport, add_pair_arguments, autorank_pairs, load_ranker, pair_filter,
                                pairing_rule)
from soundworld.perturb import load_perturbations

logger = logging.getLogger(__name__)
EVAL_SEED = 987_654  # validation prompts and clip seeds: no round's candidate seed comes near it
METRICS = ("mean_score", "event_recall", "order_accuracy", "count_accuracy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python train_rounds.py", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny", help="model spec the first round starts from")
    parser.add_argument("--rounds", type=int, default=3, help="generate -> rank -> train rounds")
    parser.add_argument("--prompts", type=int, default=500, help="training-split prompts per round")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps of candidates and evaluation clips "
                                                               "(default: the model's own)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance of every clip")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation call")
    parser.add_argument("--eval-n", type=int, default=64, help="validation prompts judged after each round")
    parser.add_argument("--seed", type=int, default=0, help="round r draws prompts and candidate seeds from seed + 1000 r")
    parser.add_argument("--train-args", default="", help="extra train_dpo.py flags, e.g. \"--loss crpo --learning_rate 1e-5\"")
    parser.add_argument("--judge-prompts", type=int, default=200,
                        help="training-split prompts train_dpo.py judges each epoch to keep the best pipeline")
    parser.add_argument("--out", required=True, help="folder of the rounds (rerun the same command to resume)")
    add_pair_arguments(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.prompts < 1 or args.eval_n < 1:
        parser.error(f"--rounds, --prompts and --eval-n must be positive, got {args.rounds}, {args.prompts}, {args.eval_n}")
    return args


def write_json_atomically(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def make_pairs(state, args, model: str, round_index: int, folder: Path) -> dict:
    """Stage 1: candidates from ``model`` for this round's prompts, split across processes, ranked into pairs."""
    from accelerate.utils import gather_object

    from annotate.pool import PipelineGenerator
    from preference_data.dataset import write_preference_dataset
    from soundworld import sample_prompts

    seed = args.seed + 1000 * round_index
    prompts = sample_prompts("train", args.prompts, seed)
    ranker = load_ranker(args.ranker, args.clap_model, device=str(state.device))
    generator = PipelineGenerator(model, device=state.device)
    steps = args.steps or generator.default_steps
    report = AutorankReport()
    started = time.perf_counter()
    with state.split_between_processes(prompts) as mine:
        rows = list(autorank_pairs(mine, generator, ranker, model=model, k=args.k, seed=seed, steps=steps,
                                   guidance=args.guidance, min_margin=pair_filter(args), batch_size=args.batch_size,
                                   report=report, pairing=args.pairs, strategies=args.strategies,
                                   perturbations=load_perturbations(args.perturbations) if args.perturbations else None))
    rows, below_margin = gather_object(rows), sum(gather_object([report.below_margin]))
    seconds = time.perf_counter() - started
    by_strategy = {}
    for row in rows:
        by_strategy[row.strategy] = by_strategy.get(row.strategy, 0) + 1
    stats = {"prompts": len(prompts), "pairs": len(rows), "pairs_by_strategy": by_strategy,
             "prompts_below_margin": below_margin,
             "candidate_seconds": round(seconds, 1), "pairs_per_hour": round(3600 * len(rows) / seconds, 1),
             "processes": state.num_processes}
    if state.is_main_process:
        how_made = (f"Round {round_index} of `python train_rounds.py`: `{model}` generated {args.k} candidates per "
                    f"prompt ({steps} steps, guidance {args.guidance}, seeds from {seed}); " + pairing_rule(args))
        write_preference_dataset(rows, folder, how_made=how_made, stats=stats)
        write_json_atomically(folder / "round_stats.json", stats)
    state.wait_for_everyone()
    return stats


def evaluate_model(state, args, model: str) -> dict:
    """Stage 3: the judge's scores of one clip per fixed validation prompt, prompts split across processes."""
    from accelerate.utils import gather_object

    from pipeline import load_pipeline
    from soundworld import sample_prompts
    from soundworld.evaluate import evaluate_pipeline, report

    pipe = load_pipeline(model, device=state.device)
    pipe.set_progress_bar_config(disable=True)
    prompts = sample_prompts("train", args.eval_n, EVAL_SEED)
    seeds = [EVAL_SEED + i for i in range(args.eval_n)]
    with state.split_between_processes(list(zip(prompts, seeds))) as mine:
        results, _ = evaluate_pipeline(pipe, [p for p, _ in mine], [s for _, s in mine],
                                       steps=args.steps or pipe.config.default_num_inference_steps,
                                       guidance=args.guidance, batch_size=args.batch_size, progress=False) \
            if mine else ([], [])
    return {"model": model, **report(gather_object(results), [], seeds)}


def train_argv(args, model: str, pairs: Path, output: Path, round_index: int) -> list[str]:
    """train_dpo.py's flags for a round: validation by the judge (so a best pipeline is kept), then the user's."""
    return ["--pretrained_model", model, "--dataset", str(pairs), "--output_dir", str(output),
            "--seed", str(args.seed + round_index), "--validation_fraction", "0.1",
            "--judge_prompts", str(args.judge_prompts),
            "--judge_seed", str(EVAL_SEED + 1), "--resume_from_checkpoint", "latest", *shlex.split(args.train_args)]


def tuned_model(output: Path) -> str:
    return str(output / "best") if (output / "best" / "model_index.json").is_file() else str(output)


def write_table(out: Path, table: list[dict]) -> None:
    """rounds.json, rounds.md and the curve rounds.png."""
    write_json_atomically(out / "rounds.json", table)
    header = ["round", "model", "pairs", "pairs/hour", "train steps", "implicit acc", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table:
        cells = [row["round"], f"`{row['model']}`", row.get("pairs", "-"), row.get("pairs_per_hour", "-"),
                 row.get("train_steps", "-"), row.get("implicit_acc", "-"), *(row.get(m) for m in METRICS)]
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    (out / "rounds.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2))
    for metric in METRICS:
        points = [(row["round"], row[metric]) for row in table if row.get(metric) is not None]
        if points:
            axis.plot(*zip(*points), "o-", label=metric)
    axis.set_xlabel("round (0: starting model)")
    axis.set_title("validation prompts, judged")
    axis.set_xticks([row["round"] for row in table])
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "rounds.png", dpi=100)
    plt.close(figure)


def evaluation(state, args, model: str, path: Path) -> dict:
    if not path.is_file():
        result = evaluate_model(state, args, model)
        if state.is_main_process:
            write_json_atomically(path, result)
        state.wait_for_everyone()
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # --help answers before torch, accelerate and datasets load
    from accelerate import PartialState

    import train_dpo
    from preference_data.dataset import EmptyDataset

    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    state = PartialState()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    base = evaluation(state, args, model, out / "round-0-eval.json")
    table = [{"round": 0, "model": model, **{m: base[m] for m in METRICS}}]
    for round_index in range(1, args.rounds + 1):
        folder = out / f"round-{round_index}"
        folder.mkdir(exist_ok=True)
        pairs, output = folder / "pairs", folder / "model"
        if not (pairs / "round_stats.json").is_file():
            logger.info(f"round {round_index}: candidates from {model}")
            try:
                make_pairs(state, args, model, round_index, pairs)
            except EmptyDataset:
                print(f"error: round {round_index}: no pair passed --min-margin {args.min_margin}; stopping",
                      file=sys.stderr)
                return 1
            except InvalidInput as err:  # --perturbations holds a prompt the model cannot read
                print(f"error: round {round_index}: {err}", file=sys.stderr)
                return 2
        stats = json.loads((pairs / "round_stats.json").read_text())
        if not (output / "train_metrics.json").is_file():
            logger.info(f"round {round_index}: training on {stats['pairs']} pairs")
            train_dpo.main(train_argv(args, model, pairs, output, round_index))
        trained = json.loads((output / "train_metrics.json").read_text())
        model = tuned_model(output)
        scores = evaluation(state, args, model, folder / "eval.json")
        table.append({"round": round_index, "model": model, "pairs": stats["pairs"],
                      "pairs_per_hour": stats["pairs_per_hour"], "train_steps": trained["steps"],
                      "implicit_acc": trained.get("implicit_acc"), **{m: scores[m] for m in METRICS}})
        if state.is_main_process:
            write_table(out, table)
            logger.info(f"round {round_index}: {table[-1]}")
    if state.is_main_process:
        print((out / "rounds.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
