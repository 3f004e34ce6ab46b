"""The app's configuration: command-line flags, each with an environment variable behind it.

A flag wins over its variable, the variable over the default. On a Space, set the
variables in the Space's settings (``TANGO_BASE_MODEL=declare-lab/tango`` ...); gradio's
own ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (which Spaces set) pick host and port.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from annotate.store import EXPORT_DIR, MIN_HEARD_FRACTION
from pipeline.specs import DEFAULT_DPO_SPEC, DEFAULT_SPEC  # torch-free: the flags are read before torch loads

from .serving import MAX_SERVED_BYTES

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class StudioConfig:
    base_model: str = DEFAULT_SPEC
    dpo_model: str = DEFAULT_DPO_SPEC
    data_dir: Path = Path("data")
    hub_dataset: str | None = None
    admins: frozenset[str] = frozenset()
    auth_file: Path | None = None
    device: str | None = None  # None: CUDA when present, else CPU
    dtype: str | None = None  # None: float16 on CUDA, float32 on CPU
    host: str = "127.0.0.1"
    port: int = 7860
    # What one visitor may ask of the device (see studio.limits).
    max_steps: int = 200
    max_candidates: int = 4
    generate_per_minute: int = 6
    generate_queue: int = 4
    generate_threads: int = 0  # CPU threads generation may use; 0: all cores but one (studio.limits)
    push_every: float | None = None  # minutes between background export + backup pushes; None: no pushes
    allow_shrinking_backup: bool = False  # a push may replace a Hub backup holding votes or clips the store lacks
    min_gold_accuracy: float | None = None  # annotators below it on gold tasks are left out of export and verdict
    reveal_models: bool = False  # show the annotator the models behind the clips after each vote
    show_gold_accuracy: bool = False  # show each annotator their own accuracy on gold tasks
    informative_first: bool = False  # hand out the tasks the automatic ranker is least sure about first
    reward_model: Path | None = None  # a preference model (preference.reward) as the automatic ranker; None: the judge
    trust_proxy: bool = False  # a proxy in front of the app sets X-Forwarded-For (studio.limits.visitor_of)
    leaderboard_every: int = 20  # the public results count human rankings in whole batches of this many
    min_comparisons: int = 10  # the public results show a model's numbers once it was in this many comparisons
    # ... and mark them preliminary under this many: at 100 comparisons the 95 % interval of a win rate near 0.5
    # spans about +-0.1 (1.96 * sqrt(0.25 / 100)), enough to tell 0.6 from 0.4. (TTS Arena: preliminary under 300
    # votes of one comparison each; a ranking of four clips here makes four.)
    preliminary_under: int = 100
    max_sessions: int = 50  # gradio sessions kept (the least recently used beyond it end): 0.3 MB each
    max_served_mb: int = MAX_SERVED_BYTES >> 20  # served copies of clips (and gradio's copies of them) at most
    include_flagged: bool = False  # count annotators annotate.hygiene flags in the verdict and the export
    verdict_demo_tasks: bool = False  # count the tasks visitors sent from the Demo in the verdict
    min_heard_fraction: float = MIN_HEARD_FRACTION  # a vote counts once each clip was heard this share of its length

    @property
    def export_dir(self) -> Path:
        """Where the Dataset tab's Export writes (and Push uploads from)."""
        return self.data_dir / EXPORT_DIR


# flag -> (environment variable, help)
_FLAGS = {
    "--base-model": ("TANGO_BASE_MODEL", "model spec of the left column"),
    "--dpo-model": ("TANGO_DPO_MODEL", "model spec of the DPO-tuned column"),
    "--data-dir": ("TANGO_DATA_DIR", "annotation store: database, clips, exports"),
    "--hub-dataset": ("TANGO_HUB_DATASET", "dataset repo the Dataset tab pushes to, owner/name; none: Push disabled"),
    "--admins": ("TANGO_ADMINS", "comma-separated names allowed on the Dataset tab; none: the tab is disabled"),
    "--auth-file": ("TANGO_AUTH_FILE", "file of 'name:password' lines: log-in required, names from it"),
    "--device": ("TANGO_DEVICE", "torch device for both models, e.g. cuda, cuda:1, cpu; none: cuda if present, "
                                 "else cpu"),
    "--dtype": ("TANGO_DTYPE", f"UNet/VAE dtype, one of {', '.join(DTYPES)}; none: float16 on CUDA, float32 on CPU"),
    "--host": ("GRADIO_SERVER_NAME", "interface to serve on"),
    "--port": ("GRADIO_SERVER_PORT", "port to serve on"),
    "--max-steps": ("TANGO_MAX_STEPS", "most denoising steps one request may ask for"),
    "--max-candidates": ("TANGO_MAX_CANDIDATES", "most candidates per model one request may ask for, 1..4"),
    "--generate-per-minute": ("TANGO_GENERATE_PER_MINUTE", "generations one visitor may start per minute"),
    "--generate-queue": ("TANGO_GENERATE_QUEUE", "generations that may wait behind the running one; more are "
                                                 "answered 'busy, try again in N s'"),
    "--generate-threads": ("TANGO_GENERATE_THREADS", "CPU threads generation may use; 0 leaves one core to the "
                           "annotation endpoints, so votes stay fast while generating"),
    "--push-every": ("TANGO_PUSH_EVERY", "minutes between background exports + store backups pushed to --hub-dataset; "
                     "an empty --data-dir then restores the last backup at start ; none: off"),
    "--allow-shrinking-backup": ("TANGO_ALLOW_SHRINKING_BACKUP", "let the background push replace a Hub backup "
                                 "that holds votes or clips this store lacks (the repo's history keeps the old one)"),
    "--min-gold-accuracy": ("TANGO_MIN_GOLD_ACCURACY", "leave out annotators whose gold-task accuracy is below this "
                            "(0..1) from the export and the verdict; none: keep everyone"),
    "--reveal-models": ("TANGO_REVEAL_MODELS", "show annotators which model made each clip after they vote "
                        "(such a vote can no longer be undone)"),
    "--show-gold-accuracy": ("TANGO_SHOW_GOLD_ACCURACY", "show each annotator their own accuracy on gold tasks "
                             "(over answers past the undo window, in steps of 5: it never points at one task)"),
    "--informative-first": ("TANGO_INFORMATIVE_FIRST", "hand out first the tasks whose clips the automatic ranker "
                            "scores closest"),
    "--reward-model": ("TANGO_REWARD_MODEL", "folder of a preference model learned from votes (python -m "
                       "preference.reward train): it scores every stored clip for the automatic verdict and "
                       "--informative-first; none: the sound world's judge, for sound-world models"),
    "--trust-proxy": ("TANGO_TRUST_PROXY", "the app runs behind a proxy that sets X-Forwarded-For (a Space does): "
                      "count visitors by the address it saw, not by the connection's"),
    "--leaderboard-every": ("TANGO_LEADERBOARD_EVERY", "the public results (Results tab, /leaderboard) take in "
                            "human rankings in batches of this many, so a vote's effect cannot be read off them"),
    "--min-comparisons": ("TANGO_MIN_COMPARISONS", "the public results show a model's win rate, score and intervals "
                          "once it took part in this many comparisons; fewer: 'too few votes'"),
    "--preliminary-under": ("TANGO_PRELIMINARY_UNDER", "the public results mark a model 'preliminary' while it took "
                            "part in fewer comparisons than this"),
    "--max-sessions": ("TANGO_MAX_SESSIONS", "gradio sessions (open pages, API clients) kept, about 0.3 MB each; the "
                       "least recently used beyond it end (its page then asks for Next task again)"),
    "--max-served-mb": ("TANGO_MAX_SERVED_MB", "megabytes of clip copies served to annotators (gradio's own copies of "
                        "them go with them); the oldest go first"),
    "--include-flagged": ("TANGO_INCLUDE_FLAGGED", "count the votes of annotators the hygiene rule flags (position "
                          "bias, against the majority, failed gold, too fast, too many per hour) in the verdict and "
                          "the export; off: they are left out"),
    "--verdict-demo-tasks": ("TANGO_VERDICT_DEMO_TASKS", "count the tasks visitors sent from the Demo in the verdict "
                             "(their sender heard the models); off: left out"),
    "--min-heard-fraction": ("TANGO_MIN_HEARD_FRACTION", "a vote counts (verdict, export, a task's target, a "
                             "reveal) only if each clip could have been heard for this share of its length, timed "
                             "by the server from the plays; 0: every vote counts"),
}
_INT_FLAGS = {"port": (0, 65535), "max_steps": (1, 1000), "max_candidates": (1, 4), "generate_per_minute": (1, 10**6),
              "generate_queue": (0, 1000), "generate_threads": (0, 1024), "leaderboard_every": (1, 10**6),
              "min_comparisons": (0, 10**9), "preliminary_under": (0, 10**9), "max_served_mb": (1, 10**6),
              "max_sessions": (1, 10**6)}
# on/off flags: `--reveal-models` alone, or the variable = 1/true
_SWITCHES = {"reveal_models", "show_gold_accuracy", "informative_first", "allow_shrinking_backup", "trust_proxy",
             "include_flagged", "verdict_demo_tasks"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


PROG = "python app.py"  # the console command tango-studio puts its own name here (entry_points.py)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Tango DPO Studio: side-by-side demo, blind ranking, dataset admin.",
        epilog="Every flag falls back to the environment variable named in its help, then to its default "
               "(shown: the variable's value where it is set).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = StudioConfig()
    for flag, (variable, help_text) in _FLAGS.items():
        attribute = flag[2:].replace("-", "_")
        default = environ.get(variable, getattr(defaults, attribute))
        if isinstance(default, frozenset):  # --admins: shown and parsed as the flag's text
            default = ",".join(sorted(default)) or None
        if attribute in _SWITCHES:
            parser.add_argument(flag, default=str(default), nargs="?", const="1", help=f"{help_text} [env {variable}]")
        else:
            parser.add_argument(flag, default=default, help=f"{help_text} [env {variable}]",
                                type=str)
    return parser


def _number(parser: argparse.ArgumentParser, value: object, flag: str, low: float, high: float) -> float | None:
    """A number within low..high from a flag or variable; None when not given."""
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        parser.error(f"{flag} must be a number, got {value!r}")
    if not low <= number <= high:
        parser.error(f"{flag} must be within {low:g}..{high:g}, got {value!r}")
    return number


def _switch(parser: argparse.ArgumentParser, value: str, flag: str) -> bool:
    if value.strip().lower() not in _TRUE + _FALSE:
        parser.error(f"{flag} must be one of {'/'.join(_TRUE[:2])} or {'/'.join(_FALSE[1:3])}, got {value!r}")
    return value.strip().lower() in _TRUE


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> StudioConfig:
    """The configuration from flags and environment; bad values exit with argparse's usage error."""
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if args.dtype not in (None, "", *DTYPES):
        parser.error(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
    numbers = {}
    for attribute, (low, high) in _INT_FLAGS.items():
        flag, value = "--" + attribute.replace("_", "-"), getattr(args, attribute)
        try:
            numbers[attribute] = int(value)
        except ValueError:
            parser.error(f"{flag} must be a whole number, got {value!r}")
        if not low <= numbers[attribute] <= high:
            parser.error(f"{flag} must be within {low}..{high}, got {numbers[attribute]}")
    auth_file = Path(args.auth_file) if args.auth_file else None
    if auth_file is not None and not auth_file.is_file():
        parser.error(f"--auth-file {str(auth_file)!r} does not exist")
    reward_model = Path(args.reward_model) if args.reward_model else None
    if reward_model is not None and not (reward_model / "reward" / "config.json").is_file():
        parser.error(f"--reward-model {str(reward_model)!r} is not a preference model folder (no reward/config.json): "
                     "train one with `python -m preference.reward train`")
    for flag in ("base_model", "dpo_model"):
        if not str(getattr(args, flag)).strip():
            parser.error(f"--{flag.replace('_', '-')} is empty: name a model spec (tiny, a folder or a Hub id)")
    push_every = _number(parser, args.push_every, "--push-every", 0.1, 24 * 60)
    if push_every is not None and not args.hub_dataset:
        parser.error("--push-every needs --hub-dataset owner/name (or TANGO_HUB_DATASET): where to push")
    return StudioConfig(
        base_model=args.base_model,
        dpo_model=args.dpo_model,
        data_dir=Path(args.data_dir),
        hub_dataset=args.hub_dataset or None,
        admins=frozenset(name.strip() for name in str(args.admins or "").split(",") if name.strip()),
        auth_file=auth_file,
        device=args.device or None,
        dtype=args.dtype or None,
        host=args.host,
        **numbers,
        push_every=push_every,
        allow_shrinking_backup=_switch(parser, args.allow_shrinking_backup, "--allow-shrinking-backup"),
        min_gold_accuracy=_number(parser, args.min_gold_accuracy, "--min-gold-accuracy", 0, 1),
        reveal_models=_switch(parser, args.reveal_models, "--reveal-models"),
        show_gold_accuracy=_switch(parser, args.show_gold_accuracy, "--show-gold-accuracy"),
        informative_first=_switch(parser, args.informative_first, "--informative-first"),
        reward_model=reward_model,
        trust_proxy=_switch(parser, args.trust_proxy, "--trust-proxy"),
        include_flagged=_switch(parser, args.include_flagged, "--include-flagged"),
        verdict_demo_tasks=_switch(parser, args.verdict_demo_tasks, "--verdict-demo-tasks"),
        min_heard_fraction=_number(parser, args.min_heard_fraction or MIN_HEARD_FRACTION, "--min-heard-fraction", 0, 1),
    )


def device_refusal(device: str | None, dtype: str | None) -> str | None:
    """Why the models cannot run on ``device`` in ``dtype`` on this machine, in one line; None when they can.

    Checked at start-up (it imports torch): a missing GPU would otherwise leave an app whose columns say
    "Torch not compiled with CUDA enabled", and float16 on a CPU runs several times slower than float32.
    """
    import torch

    try:
        target = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        return f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
    if target.type == "cuda" and not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "torch finds no CUDA GPU"
        return f"--device {device}: {why} on this machine; leave --device out (or give cpu) to run on the CPU"
    if target.type == "cuda" and (target.index or 0) >= torch.cuda.device_count():
        return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), cuda:0 and up"
    if target.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {device}: torch finds no Apple GPU (MPS) on this machine; leave --device out to use the CPU"
    if target.type == "cpu" and dtype == "float16":
        return ("--dtype float16 on the CPU runs several times slower than float32 (CPUs lack half-precision "
                "kernels); leave --dtype out to use float32")
    return None
