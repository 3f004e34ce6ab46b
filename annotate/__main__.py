"""Annotation backend from the command line.

    python -m annotate pool   --data-dir data --prompts prompts.txt --models tiny,tiny-dpo --k 2
    python -m annotate pool   --data-dir data --prompts prompts.txt --k 3 --ab      # two-clip A/B tasks
    python -m annotate gold   --data-dir data --prompts prompts.txt                  # sound-world prompts only
    python -m annotate stats  --data-dir data
    python -m annotate verdict --data-dir data --source human
    python -m annotate export --data-dir data --out exports/human-pairs
    python -m annotate push   --data-dir data --repo me/tango-preferences      # token: HF_TOKEN or `hf auth login`

Only pool and gold make a store; the other commands refuse a data folder without one, and a
refused command leaves no new store behind (an empty store would stop the app's Hub restore).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import suppress
from pathlib import Path

from .store import DB_NAME, Store
from .validation import InvalidInput, prompt_lines

PROG = "python -m annotate"  # the console command tango-annotate puts its own name here (entry_points.py)


def _read_prompts(path: str) -> list[str]:
    return prompt_lines(Path(path).read_text(encoding="utf-8"))


def pool(args: argparse.Namespace) -> int:
    from .pool import DEFAULT_MODELS, build_pool

    models = args.models.split(",") if args.models else DEFAULT_MODELS
    report = build_pool(Store(args.data_dir), _read_prompts(args.prompts), models, k=args.k, seed=args.seed,
                        steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, ab=args.ab)
    print(f"{len(report.task_ids)} tasks ready; {report.generated} clips generated, {report.reused} already stored")
    return 0


def export(args: argparse.Namespace) -> int:
    from .export import export_human_pairs

    result = export_human_pairs(Store.existing(args.data_dir), args.out, min_margin=args.min_margin,
                                min_votes=args.min_votes, min_gold_accuracy=args.min_gold_accuracy,
                                include_flagged=args.include_flagged)
    alpha = "n/a" if result.alpha is None else f"{result.alpha:.3f}"
    print(f"export {result.export_id}: {result.summary.rows} pairs in {result.summary.shards} shard(s) -> {args.out} "
          f"(Krippendorff's alpha {alpha}; {result.left_out_votes} vote(s) left out)")
    return 0


def gold(args: argparse.Namespace) -> int:
    import functools

    from pipeline import load_pipeline

    from .gold import add_gold_tasks, regular_clip_seconds
    from pipeline.audio import round_trip

    prompts = _read_prompts(args.prompts)
    pipe = load_pipeline(args.model, device="cpu")
    store = Store(args.data_dir)
    task_ids = add_gold_tasks(store, prompts, through=functools.partial(round_trip, pipe),
                              duration_s=args.duration or regular_clip_seconds(store) or pipe.default_audio_length_in_s,
                              distractors=args.distractors, seed=args.seed)
    print(f"{len(task_ids)} gold tasks ready")
    return 0


def verdict(args: argparse.Namespace) -> int:
    from .verdict import compute_verdict, verdict_markdown

    result = compute_verdict(Store.existing(args.data_dir), args.source, min_gold_accuracy=args.min_gold_accuracy,
                             include_flagged=args.include_flagged, demo_tasks=args.demo_tasks)
    print(json.dumps(result.rows, indent=2) if args.json else verdict_markdown([result]))
    return 0


def push(args: argparse.Namespace) -> int:
    from .export import push_to_hub

    folder = args.folder
    if folder is None:
        exports = Store.existing(args.data_dir).exports()
        if not exports:
            raise InvalidInput("nothing exported yet: run `python -m annotate export` first (or pass --folder)")
        folder = exports[-1].out_dir
    push_to_hub(folder, args.repo, private=args.private)
    print(f"pushed {folder} to https://huggingface.co/datasets/{args.repo}")
    return 0


def stats(args: argparse.Namespace) -> int:
    from .stats import dataset_stats

    summary = dataset_stats(Store.existing(args.data_dir))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    alpha = summary["krippendorff_alpha_ordinal"]
    print(f"tasks: {summary['tasks']} ({summary['tasks_at_target']} at target overlap, {summary['tasks_untouched']} "
          f"untouched; {summary['tasks_withdrawn']} withdrawn: a clip could not be read)")
    print(f"votes: {summary['votes']} ({summary['skipped']} skipped, {summary['all_bad']} all bad; "
          f"{summary['undone']} more undone, left out)")
    print(f"Krippendorff's alpha (ordinal): {'n/a' if alpha is None else f'{alpha:.3f}'}")
    print(f"{'annotator':<24} {'votes':>6} {'skips':>6} {'all bad':>8} {'gold':>10}  agreement with the others' majority")
    for name, row in sorted(summary["annotators"].items()):
        rate = "n/a" if row["agreement"] is None else f"{row['agreement']:.2f} over {row['compared']} pairs"
        gold = "n/a" if row["gold_accuracy"] is None else f"{row['gold_accuracy']:.2f}/{row['gold_answered']}"
        print(f"{name:<24} {row['votes']:>6} {row['skipped']:>6} {row['all_bad']:>8} {gold:>10}  {rate}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    shows_defaults = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                     formatter_class=shows_defaults)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, formatter_class=shows_defaults)
        sub.add_argument("--data-dir", default="data", help="store folder: database and clips")
        sub.set_defaults(handler=handler)
        return sub

    sub = command("pool", pool, "generate k clips per prompt per model and make one ranking task per prompt")
    sub.add_argument("--prompts", required=True, help="text file, one prompt per line (# comments, blanks ignored)")
    sub.add_argument("--models", default=None, help="comma-separated model specs; none: the embedded tiny,tiny-dpo")
    sub.add_argument("--k", type=int, default=2, help="clips per prompt per model (2: a 4-clip task)")
    sub.add_argument("--seed", type=int, default=None,
                     help="derive every clip's seed from this one, so anyone can make the same clips: for experiments, "
                          "not for pools ranked blind; none: each clip's seed drawn at random and stored")
    sub.add_argument("--steps", type=int, default=None, help="denoising steps; none: each model's own")
    sub.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    sub.add_argument("--batch-size", type=int, default=4, help="prompts per generation call (k clips each)")
    sub.add_argument("--ab", action="store_true",
                     help="two-clip tasks, voted A/B on the Annotate tab: k per prompt, clip i of the first model "
                          "against clip i of the second (two models only); two models with --k 1 make them too")

    sub = command("export", export, "write the human-ranked pairs as a dataset folder (atomically)")
    sub.add_argument("--out", required=True, help="dataset folder to (re)write")
    sub.add_argument("--min-margin", type=int, default=1, help="keep pairs whose majority leads by this many votes")
    sub.add_argument("--min-votes", type=int, default=1,
                     help="keep pairs backed by at least this many votes (the card counts the pairs 1, 2 and 3 keep)")
    sub.add_argument("--min-gold-accuracy", type=float, default=None,
                     help="leave out annotators whose gold-task accuracy is below this (0..1); none: keep everyone")
    sub.add_argument("--include-flagged", action="store_true",
                     help="count the annotators the hygiene rule flags (annotate.hygiene); off: left out")

    sub = command("gold", gold, "add gold tasks: a render of each sound-world prompt against renders of others")
    sub.add_argument("--prompts", required=True, help="text file of sound-world prompts, one per line")
    sub.add_argument("--distractors", type=int, default=None,
                     help="renders of other prompts per gold task; none: as many as make gold tasks as large as "
                          "the store's other tasks (renders use secret random seeds)")
    sub.add_argument("--seed", type=int, default=0, help="seed of the distractors' choice")
    sub.add_argument("--model", default="tiny", help="model spec whose VAE and vocoder every render goes through, so "
                     "that gold clips sound like its clips (the pool's model)")
    sub.add_argument("--duration", type=float, default=None,
                     help="seconds per gold clip; none: as long as the store's clips last most often, else the "
                          "model's default length")

    sub = command("verdict", verdict, "win rates and Bradley-Terry scores per model, with 95%% intervals")
    sub.add_argument("--source", choices=["human", "auto"], default="human", help="human rankings or the auto ranker")
    sub.add_argument("--min-gold-accuracy", type=float, default=None, help="as for export")
    sub.add_argument("--include-flagged", action="store_true", help="as for export")
    sub.add_argument("--demo-tasks", action="store_true",
                     help="count the tasks visitors sent from the app's Demo (they heard the models); off: left out")
    sub.add_argument("--json", action="store_true", help="print the rows as JSON")

    sub = command("push", push, "upload an export to a Hugging Face dataset repo")
    sub.add_argument("--repo", required=True, help="dataset repo id, owner/name")
    sub.add_argument("--folder", default=None, help="export folder; none: the latest export")
    sub.add_argument("--private", action="store_true", help="create the repo private")

    sub = command("stats", stats, "tasks done, votes per annotator, agreement")
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir = Path(args.data_dir)
    had_store = (data_dir / DB_NAME).exists()
    made = [folder for folder in (data_dir, *data_dir.parents) if not folder.exists()]  # deepest first
    try:
        return args.handler(args)
    except (ValueError, OSError) as err:  # bad input (InvalidInput, EmptyDataset, UnusableStore ...), files, PushError
        print(f"error: {err}", file=sys.stderr)
    # Refused (the handler's store is closed by now): a store it made that holds nothing goes, and so do the folders
    # it made for it (missing/sub: both).
    if not had_store and (data_dir / DB_NAME).exists() and Store(data_dir).remove_if_empty():
        for folder in made:
            with suppress(OSError):  # something else was put there meanwhile
                folder.rmdir()
    return 2


if __name__ == "__main__":
    sys.exit(main())
