"""Does online GRPO teach the embedded model to follow a prompt's events and their order? (issue 33)

    python experiments/grpo_evaluation.py --models tiny tiny-dpo tiny-grpo --seed 2026 --n 200 \
        --out bench/results/grpo/evaluation.json          # ~25 min on 2 CPU cores for three models

Each model generates one clip per prompt at its own default settings (the sampler users get: DPM-Solver++ 12
steps, guidance 3 above t = 200 for the embedded models) for ``--n`` ``test`` and ``--n`` ``heldout`` prompts
drawn with ``--seed``, clip i seeded ``seed + i`` (``soundworld.evaluate``'s convention: every model hears
the same prompts from the same initial noise). Every model is compared with the first one clip by clip
(paired bootstrap, 95 %): event recall, order accuracy (prompts with 2-3 types), count accuracy, judge score
and extra events per clip. The Demo's six example prompts (``studio.generation.example_prompts``: held-out
prompts, seed 0) are sampled with 8 seeds each, and a clip counts when it renders every prompted event, in
order (recall 1 and order correct).

Writes the JSON report and, beside it, ``NAME-forest.png`` (each model minus the first, per metric and split,
with its interval) and ``NAME-demo-spectrograms.png`` (each model's seed-0 clip of every Demo prompt, with
what the judge heard). Use a ``--seed`` nobody tuned on: training samples ``train``-split prompts only,
and ``train_grpo.py`` chose its best iteration on ``train``-split validation prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere: the repository's packages

from experiments.figures import METRIC_LABELS, forest_plot  # noqa: E402  (the one forest plot of the docs' figures)

SPLITS = ("test", "heldout")
DEMO_SEEDS = 8


def demo_clips(pipe, prompts: list[str], seeds: int = DEMO_SEEDS) -> tuple[dict, dict]:
    """Per Demo prompt, how many of ``seeds`` clips (seeds 0, 1, ..., as the Demo's seed 0 with that many candidates)
    render every prompted event in order; and each prompt's seed-0 clip with what the judge heard in it."""
    from soundworld import judge

    counts, first_clips = {}, {}
    for prompt in prompts:
        audios = pipe([prompt] * seeds, generator=pipe.clip_generators(range(seeds))).audios
        results = [judge(audio, pipe.sampling_rate, prompt) for audio in audios]
        counts[prompt] = sum(r.event_recall == 1.0 and r.order_correct is not False for r in results)
        first_clips[prompt] = (audios[0], [name for name, _ in results[0].detected])
    return counts, first_clips


def spectrograms(clips: dict, sample_rate: int, path: Path) -> None:
    """One row per model, one column per Demo prompt: the seed-0 clip's spectrogram, titled with what was heard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, prompts = list(clips), list(next(iter(clips.values())))
    figure, axes = plt.subplots(len(models), len(prompts), figsize=(3.6 * len(prompts), 2.4 * len(models)),
                                squeeze=False)
    for row, model in enumerate(models):
        for column, prompt in enumerate(prompts):
            audio, heard = clips[model][prompt]
            axis = axes[row][column]
            axis.specgram(audio, NFFT=512, Fs=sample_rate, noverlap=352, cmap="magma")
            axis.set_title(f"{model}: {prompt}\nheard: {', '.join(heard) or 'nothing'}", fontsize=7)
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "tiny-dpo", "tiny-grpo"],
                        help="model specs; the first is the baseline the others are compared with")
    parser.add_argument("--n", type=int, default=200, help="prompts per split")
    parser.add_argument("--seed", type=int, default=2026, help="prompts, clip seeds and bootstrap (use an untuned one)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON report (the forest plot goes beside it)")
    parser.add_argument("--reuse", type=Path, help="an earlier report with the same --n and --seed: its models' clips "
                                                   "are taken from it instead of generated again")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("--models needs a baseline and at least one model to compare with it")

    import pipeline
    from soundworld import sample_prompts
    from soundworld.evaluate import compare, evaluate_pipeline, paired_bootstrap, summarize

    report = {"models": args.models, "seed": args.seed, "demo": {}}
    first_clips = {}
    demo_prompts = sample_prompts("heldout", 6, seed=0)  # the Demo's examples (studio.generation.example_prompts)
    clips = {split: {} for split in SPLITS}
    earlier = json.loads(args.reuse.read_text()) if args.reuse else {"seed": None}
    if args.reuse and (earlier["seed"] != args.seed or earlier["test"]["n"] != args.n):
        parser.error(f"--reuse {args.reuse} was made with --seed {earlier['seed']} --n {earlier['test']['n']}")
    for spec in args.models:
        pipe = pipeline.load_pipeline(spec)
        pipe.set_progress_bar_config(disable=True)
        if spec in earlier.get("demo", {}):
            for split in SPLITS:
                clips[split][spec] = earlier["clips"][split][spec]
            report["demo"][spec] = earlier["demo"][spec]
            _, first_clips[spec] = demo_clips(pipe, demo_prompts, seeds=1)
            continue
        for split in SPLITS:
            prompts = sample_prompts(split, args.n, args.seed)
            results, _ = evaluate_pipeline(pipe, prompts, pipeline.clip_seeds(args.seed, args.n),
                                           steps=pipe.config.default_num_inference_steps, guidance=3.0, batch_size=16)
            clips[split][spec] = [result.to_dict() for result in results]
        report["demo"][spec], first_clips[spec] = demo_clips(pipe, demo_prompts)
        print(f"{spec}: Demo prompts rendered in full and in order in {sum(report['demo'][spec].values())} of "
              f"{DEMO_SEEDS * len(demo_prompts)} clips", flush=True)
    baseline = args.models[0]
    for split in SPLITS:
        section = {"n": args.n, "summary": {}, "compared": {}}
        for spec in args.models:
            summary = summarize(clips[split][spec], seed=args.seed)
            section["summary"][spec] = {k: summary[k] for k in ("event_recall", "order_accuracy", "count_accuracy",
                                                                 "mean_score", "extra_events_per_clip", "intervals")}
            if spec != baseline:
                compared = compare(clips[split][spec], clips[split][baseline], seed=args.seed)
                compared["extra_events"] = paired_bootstrap([c["extra_events"] for c in clips[split][spec]],
                                                            [c["extra_events"] for c in clips[split][baseline]],
                                                            seed=args.seed)
                section["compared"][spec] = compared
        report[split] = section
        print(f"\n{split} ({args.n} prompts, seed {args.seed}), minus {baseline}:")
        for spec, compared in section["compared"].items():
            cells = "  ".join(f"{METRIC_LABELS[m]} {c['difference']:+.3f} [{c['interval'][0]:+.3f}, {c['interval'][1]:+.3f}]"
                              for m, c in compared.items() if c)
            print(f"  {spec}: {cells}")
    report["clips"] = clips
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    forest_plot(report, args.out.with_name(args.out.stem + "-forest.png"))
    spectrograms(first_clips, pipe.sampling_rate, args.out.with_name(args.out.stem + "-demo-spectrograms.png"))
    print(f"wrote {args.out}, {args.out.stem}-forest.png and {args.out.stem}-demo-spectrograms.png")
    return report


if __name__ == "__main__":
    main()
