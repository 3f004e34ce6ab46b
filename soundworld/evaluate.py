"""Score a text-to-audio model on sound-world prompts with the judge, with bootstrap intervals.

    python -m soundworld.evaluate --model tiny --prompts heldout --n 200 --seed 0 --out heldout.json
    python -m soundworld.evaluate --model tiny-dpo --prompts heldout --n 200 --seed 0 --out heldout-dpo.json \
        --compare heldout.json          # paired bootstrap of tiny-dpo minus tiny
    python -m soundworld.evaluate --model tiny --best-of 4 --out heldout-best4.json   # judge reranking

Prompt i is ``sample_prompts(split, n, seed)[i]`` and its clip is seeded ``seed + i``
(``pipeline.clip_seeds``) and drawn with the pipeline's ``clip_generators``, on the
pipeline's device, whatever the batch size: the very clip the app and the pools make
for that prompt and seed. Two models evaluated with the same arguments see the same
prompts and the same initial noise: compare them clip by clip with a paired bootstrap,
``compare(report_a["clips"], report_b["clips"])``.

``--best-of K`` generates K clips per prompt (clip j seeded ``seed + i + j * n``, so
clip 0 is the plain run's) and keeps the one the judge scores best: what reranking
alone buys at K times the inference cost (the judge both picks and scores, so this
is an upper bound on any reranker).

Every clip is also judged against another prompt of the set (a fixed random
derangement): the mean score of that *shuffled-prompt baseline* is what a model
that ignores its prompt would get.

Numbers (each with a 95% percentile-bootstrap interval over clips, seeded):
event recall and count accuracy over all clips, order accuracy over prompts
with two or more event types, mean judge score; the same per construction.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .grammar import CONSTRUCTIONS, SPLIT_CONSTRUCTIONS, sample_prompts
from .judge import JudgeResult, judge

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
METRICS = {  # name in the report -> per-clip field it averages
    "event_recall": "event_recall",
    "order_accuracy": "order_correct",
    "count_accuracy": "count_correct",
    "mean_score": "score",
}


def bootstrap_interval(values, seed: int = 0, n_boot: int = BOOTSTRAP_SAMPLES) -> list[float] | None:
    """95% percentile-bootstrap interval of the mean of ``values``; None when there are none."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def paired_bootstrap(a, b, seed: int = 0, n_boot: int = BOOTSTRAP_SAMPLES) -> dict:
    """Difference of means of two paired samples (same prompts and seeds, two models).

    Clips are resampled together, so prompt difficulty cancels out. Returns the
    mean difference ``a - b``, its 95% interval, and ``p_not_better``: the share of
    bootstrap resamples in which ``a`` does not beat ``b`` (a one-sided p-value).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"`a` and `b` must be paired 1-D samples of one non-zero length, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    differences = (a - b)[rng.integers(0, a.size, (n_boot, a.size))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    return {
        "difference": float((a - b).mean()),
        "interval": [float(np.percentile(differences, tail)), float(np.percentile(differences, 100 - tail))],
        "p_not_better": float((differences <= 0).mean()),
    }


def summarize(results, seed: int = 0) -> dict:
    """Event recall, order accuracy, count accuracy and mean score, overall and per construction.

    ``results`` are ``JudgeResult``s or their dicts. Order accuracy counts only
    prompts with two or more event types; a metric with no clips is None.
    """
    rows = [_as_dict(result) for result in results]
    summary = {"n": len(rows), **_metrics(rows, seed)}
    summary["extra_events_per_clip"] = float(np.mean([row["extra_events"] for row in rows])) if rows else None
    summary["failure_modes"] = failure_modes(rows)
    summary["by_construction"] = {
        construction: {"n": len(subset), **_metrics(subset, seed)}
        for construction in CONSTRUCTIONS
        if (subset := [row for row in rows if row["construction"] == construction])
    }
    return summary


def failure_modes(rows: list[dict]) -> dict:
    """How clips of multi-event prompts go wrong: each prompted event type missing, by its place in time
    (first, second, third); the first type drawn more often than asked; a type the prompt never named."""
    multi = [row for row in rows if len(row.get("expected", ())) > 1]  # summaries of bare scores have no timelines
    if not multi:
        return {}
    missing = []
    for place in range(max(len(row["expected"]) for row in multi)):
        asked = [row for row in multi if len(row["expected"]) > place]
        heard = [{name for name, _ in row["detected"]} for row in asked]
        missing.append(round(float(np.mean([row["expected"][place][0] not in h for row, h in zip(asked, heard)])), 4))
    first_repeated = [sum(name == row["expected"][0][0] for name, _ in row["detected"]) > row["expected"][0][1]
                      for row in multi]
    invented = [bool({name for name, _ in row["detected"]} - {name for name, _ in row["expected"]}) for row in multi]
    return {"n": len(multi), "missing_by_place": missing, "first_repeated": round(float(np.mean(first_repeated)), 4),
            "invented_type": round(float(np.mean(invented)), 4)}


def compare(results_a, results_b, seed: int = 0) -> dict:
    """Paired bootstrap of model A minus model B for each metric, on the same prompts in the same order."""
    rows_a, rows_b = [_as_dict(r) for r in results_a], [_as_dict(r) for r in results_b]
    if [row["prompt"] for row in rows_a] != [row["prompt"] for row in rows_b]:
        raise ValueError("`results_a` and `results_b` must judge the same prompts in the same order")
    comparison = {}
    for name, field in METRICS.items():
        pairs = [(x[field], y[field]) for x, y in zip(rows_a, rows_b) if x[field] is not None]
        comparison[name] = paired_bootstrap(*zip(*pairs), seed=seed) if pairs else None
    return comparison


def shuffled_partners(n: int, seed: int) -> list[int]:
    """A random derangement: clip i is judged against prompt ``partners[i] != i`` for the baseline."""
    if n < 2:
        return []
    order = np.random.default_rng(seed).permutation(n)
    partners = np.empty(n, dtype=int)
    partners[order] = np.roll(order, -1)
    return partners.tolist()


def evaluate_pipeline(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int,
    guidance: float,
    batch_size: int,
    baseline_seed: int = 0,
    progress: bool = True,
    **call_options,
) -> tuple[list[JudgeResult], list[JudgeResult]]:
    """Generate one clip per (prompt, seed) in batches and judge it.

    ``pipe`` is a text-to-audio pipeline called as ``pipe(prompts, num_inference_steps=...,
    guidance_scale=..., generator=pipe.clip_generators(seeds)).audios`` -> (batch, samples).
    ``call_options`` go to every call (e.g. ``guidance_interval``).
    Returns (results, shuffled): each clip judged against its own prompt, and
    against its ``shuffled_partners(len(prompts), baseline_seed)`` prompt.
    """
    from tqdm.auto import tqdm

    partners = shuffled_partners(len(prompts), baseline_seed)
    sample_rate = pipe.vocoder.config.sampling_rate
    results, shuffled = [], []
    with tqdm(total=len(prompts), unit="clip", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            batch = slice(start, start + batch_size)
            output = pipe(prompts[batch], num_inference_steps=steps, guidance_scale=guidance,
                          generator=pipe.clip_generators(seeds[batch]), **call_options)
            audios = output.audios
            for offset, audio in enumerate(np.asarray(audios, dtype=np.float32)):
                index = start + offset
                results.append(judge(audio, sample_rate, prompts[index]))
                if partners:
                    shuffled.append(judge(audio, sample_rate, prompts[partners[index]]))
            bar.update(len(audios))
    return results, shuffled


def report(results: list[JudgeResult], shuffled: list[JudgeResult], seeds: list[int], seed: int = 0) -> dict:
    """The JSON report: summary, shuffled-prompt baseline, and one record per clip."""
    summary = summarize(results, seed)
    baseline = [result.score for result in shuffled]
    summary["shuffled_baseline"] = {
        "mean_score": float(np.mean(baseline)) if baseline else None,
        "interval": bootstrap_interval(baseline, seed),
    }
    summary["clips"] = [{"seed": clip_seed, **result.to_dict()} for clip_seed, result in zip(seeds, results)]
    return summary


def format_table(summary: dict) -> str:
    """The summary as a plain-text table."""

    def cell(value, interval=None):
        if value is None:
            return "-"
        return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    lines = [f"{'metric':<16}{'value [95% CI]':>26}"]
    for name in METRICS:
        lines.append(f"{name:<16}{cell(summary[name], summary['intervals'][name]):>26}")
    baseline = summary.get("shuffled_baseline")
    if baseline:
        lines.append(f"{'shuffled score':<16}{cell(baseline['mean_score'], baseline['interval']):>26}")
    lines.append("")
    lines.append(f"{'construction':<14}{'n':>5}{'recall':>9}{'order':>9}{'count':>9}{'score':>9}")
    for construction, row in summary["by_construction"].items():
        values = "".join(f"{cell(row[name]):>9}" for name in METRICS)
        lines.append(f"{construction:<14}{row['n']:>5}{values}")
    return "\n".join(lines)


def format_comparison(comparison: dict) -> str:
    """Paired differences (this model minus the other) as a plain-text table."""
    lines = [f"minus {comparison['model']}" + (f" (best of {comparison['best_of']})" if comparison["best_of"] > 1 else ""),
             f"{'metric':<16}{'difference [95% CI]':>28}{'p(not better)':>15}"]
    for name in METRICS:
        row = comparison[name]
        if row is None:
            lines.append(f"{name:<16}{'-':>28}")
            continue
        low, high = row["interval"]
        lines.append(f"{name:<16}{row['difference']:>+10.3f} [{low:+.3f}, {high:+.3f}]{row['p_not_better']:>15.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model spec for pipeline.load_pipeline (e.g. tiny, a folder)")
    parser.add_argument("--prompts", default="heldout", choices=sorted(SPLIT_CONSTRUCTIONS), help="prompt split")
    parser.add_argument("--n", type=int, default=200, help="number of prompts (one clip each)")
    parser.add_argument("--seed", type=int, default=0, help="prompt sampling, clip seeds (seed + i) and bootstrap")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per pipeline call")
    parser.add_argument("--best-of", type=int, default=1, help="clips per prompt; the judge keeps the best")
    parser.add_argument("--compare", type=Path, help="a report of another model on the same prompts: paired differences")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.best_of < 1:
        parser.error(f"--n, --batch-size and --best-of must be positive, got {args.n}, {args.batch_size}, {args.best_of}")
    other = json.loads(args.compare.read_text()) if args.compare else None

    import pipeline  # torch and diffusers: only when a model is evaluated

    pipe = pipeline.load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    args.steps = args.steps or pipe.config.default_num_inference_steps
    prompts = sample_prompts(args.prompts, args.n, args.seed)
    all_seeds = pipeline.clip_seeds(args.seed, args.n * args.best_of)  # round j: seed + i + j * n
    seeds = all_seeds[:args.n]
    rounds = [
        evaluate_pipeline(pipe, prompts, all_seeds[j * args.n:(j + 1) * args.n], steps=args.steps,
                          guidance=args.guidance, batch_size=args.batch_size, baseline_seed=args.seed)
        for j in range(args.best_of)
    ]
    results = [max(candidates, key=lambda result: result.score) for candidates in zip(*(r[0] for r in rounds))]
    shuffled = rounds[0][1]
    summary = {
        "model": args.model,
        "best_of": args.best_of,
        "prompts": args.prompts,
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        **report(results, shuffled, seeds, args.seed),
    }
    print(format_table(summary))
    if other is not None:
        summary["compared_to"] = {"model": other["model"], "best_of": other.get("best_of", 1),
                                  **compare(summary["clips"], other["clips"], seed=args.seed)}
        print(format_comparison(summary["compared_to"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.out}")
    return summary


def _as_dict(result) -> dict:
    return result if isinstance(result, dict) else result.to_dict()


def _metrics(rows: list[dict], seed: int) -> dict:
    """Mean and interval of each metric over ``rows`` (None-valued entries skipped)."""
    metrics, intervals = {}, {}
    for name, field in METRICS.items():
        values = [float(row[field]) for row in rows if row[field] is not None]
        metrics[name] = float(np.mean(values)) if values else None
        intervals[name] = bootstrap_interval(values, seed)
    return {**metrics, "intervals": intervals}


if __name__ == "__main__":
    main()
