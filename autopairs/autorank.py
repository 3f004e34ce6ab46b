"""A machine annotator: K candidates per prompt, scored automatically, made into (chosen, rejected) pairs.

    python -m autopairs.autorank --model tiny --prompts train --n 1000 --k 4 --seed 0 --out pairs
    python -m autopairs.autorank --model tiny --prompts train --n 500 --strategies inference,perturbed,temporal --out pairs
    python -m autopairs.autorank --model declare-lab/tango --prompts prompts.txt --ranker clap --out pairs

This is how Audio-Alpaca was made for Tango 2 (and CRPO's data for TangoFlux). Tango 2 made
its rejected clips three ways (``--strategies``, the dataset's ``strategy`` column):

* ``inference``: several clips of the prompt itself; the best against the worst that passes the filter (or with
  ``--pairs all`` every two candidates far enough apart);
* ``perturbed``: clips generated from a perturbed prompt (an event dropped, replaced, or its
  count changed: ``soundworld.perturb``), scored against the *original* prompt; the best clip
  of the original prompt against the worst of these that passes the filter;
* ``temporal``: the same with a temporally perturbed prompt (events in another order).

The losers of the last two miss a concept or have the wrong order: exactly what DPO should
teach. Every pair passes Tango 2's filter: the gap at least ``--min-margin`` (Audio-Alpaca's
Δ, so near-ties where the ranker is unsure never become training signal) and at most
``--max-margin``, the winner's score at least ``--min-chosen-score``, the loser's at most
``--max-rejected-score``. Rankers (the ``ranker`` column):

* ``judge``: the sound world's judge; scores in [0, 1];
* ``clap``: cosine similarity of CLAP text and audio embeddings (``laion/larger_clap_general``
  by default; any transformers CLAP checkpoint);
* ``reward:PATH``: a preference model learned from human rankings (``preference.reward``); its
  scores are Bradley-Terry logits, so a margin m means P(better) = σ(m).

Clip ``i`` of every prompt is generated with seed ``seed + i`` (``pipeline.clip_seeds``); the
perturbed and temporal clips with the seeds after those. Every pair keeps the latents its clips
were decoded from (``chosen_latent``, ``rejected_latent``), so ``train_dpo.py`` trains on exactly
the clips that were ranked. Pairs go through the shared dataset writer.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from annotate.clips import decode_wav, encode_wav
from annotate.store import Store
from annotate.validation import InvalidInput, UnusableModelFolder, prompt_lines
from pipeline.specs import DEFAULT_SPEC
from soundworld.perturb import Perturbation, load_perturbations, perturb

# Generation (torch, diffusers) and the dataset writer (datasets) load where they are used: the app's
# judge needs neither, and `python -m autopairs.autorank --help` answers before they load.
if TYPE_CHECKING:
    from annotate.pool import ClipGenerator
    from preference_data.dataset import PreferenceRow

logger = logging.getLogger(__name__)

STRATEGIES = ("inference", "perturbed", "temporal")


class JudgeRanker:
    """The sound world's judge: how well each clip follows its prompt, in [0, 1]."""

    name = identity = "judge"

    def __call__(self, waveforms: np.ndarray, sample_rate: int, prompt: str) -> list[float]:
        from soundworld import judge

        return [float(judge(waveform, sample_rate, prompt).score) for waveform in waveforms]


class ClapRanker:
    """CLAP (Wu et al. 2023) text-audio similarity, as used to rank Audio-Alpaca's candidates."""

    name = "clap"

    def __init__(self, model, tokenizer, feature_extractor, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer, self.feature_extractor, self.device = tokenizer, feature_extractor, device

    @classmethod
    def from_pretrained(cls, model_id: str = "laion/larger_clap_general", device: str | None = None) -> "ClapRanker":
        import torch
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(ClapModel.from_pretrained(model_id), AutoTokenizer.from_pretrained(model_id),
                   ClapFeatureExtractor.from_pretrained(model_id), device)

    @property
    def identity(self) -> str:
        """Who scored, as the store records it: the checkpoint."""
        return f"clap:{self.model.name_or_path}"

    def __call__(self, waveforms: np.ndarray, sample_rate: int, prompt: str) -> list[float]:
        import torch

        from pipeline.audio import as_mono_16k

        rate = self.feature_extractor.sampling_rate
        audio = [as_mono_16k(w, sample_rate, target_rate=rate) for w in waveforms]  # CLAP listens at 48 kHz
        features = self.feature_extractor(audio, sampling_rate=rate, return_tensors="pt")
        text = self.tokenizer([prompt], padding=True, return_tensors="pt")
        with torch.no_grad():
            audio_embeds = self.model.get_audio_features(input_features=features.input_features.to(self.device))
            text_embeds = self.model.get_text_features(
                input_ids=text.input_ids.to(self.device), attention_mask=text.attention_mask.to(self.device)
            )
        if not isinstance(audio_embeds, torch.Tensor):  # newer transformers return an output object
            audio_embeds, text_embeds = audio_embeds.pooler_output, text_embeds.pooler_output
        similarity = torch.nn.functional.cosine_similarity(audio_embeds, text_embeds.expand_as(audio_embeds), dim=-1)
        return similarity.float().cpu().tolist()


@dataclass
class AutorankReport:
    """What a run did: prompts scored, pairs kept (per strategy), prompts whose inference pairs all failed the filter."""

    prompts: int = 0
    below_margin: int = 0
    margins: list[float] = field(default_factory=list)  # best minus worst of the prompt's own clips, one per prompt
    pairs_by_strategy: Counter = field(default_factory=Counter)

    @property
    def pairs(self) -> int:
        return sum(self.pairs_by_strategy.values())


@dataclass(frozen=True)
class PairFilter:
    """Tango 2's filter on a (chosen, rejected) pair of scores: a gap inside a band, a good winner, a poor loser."""

    min_margin: float = 0.25
    max_margin: float = float("inf")
    min_chosen_score: float = -float("inf")
    max_rejected_score: float = float("inf")

    def __call__(self, chosen: float, rejected: float) -> bool:
        return (self.min_margin <= chosen - rejected <= self.max_margin and chosen >= self.min_chosen_score
                and rejected <= self.max_rejected_score)


PAIRINGS = ("best-worst", "all")


def ranked_pairs(scores: Sequence[float], keep: PairFilter | float, pairing: str = "best-worst") -> list[tuple[int, int]]:
    """(chosen, rejected) candidate indices whose scores pass ``keep`` (a ``PairFilter``, or a minimum margin).

    ``best-worst``: at most one pair, the best against the worst that passes (Audio-Alpaca; with
    ``max_margin`` the band can leave out the very worst, and a closer loser is the hard negative the
    band asks for). ``all``: every two candidates that pass, the better one chosen: up to K(K-1)/2
    pairs from the same K clips.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"`pairing` must be one of {PAIRINGS}, got {pairing!r}")
    keep = keep if isinstance(keep, PairFilter) else PairFilter(min_margin=keep)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # best first; stable on ties
    if pairing == "best-worst":
        loser = band_loser(scores[order[0]], scores, keep)
        return [] if loser is None else [(order[0], loser)]
    candidates = [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]
    return [(chosen, rejected) for chosen, rejected in candidates if keep(scores[chosen], scores[rejected])]


def band_loser(chosen_score: float, scores: Sequence[float], keep: PairFilter) -> int | None:
    """The index of the lowest of ``scores`` that ``keep`` pairs with a winner of ``chosen_score`` (the last
    such on ties), or ``None``."""
    passing = [i for i in range(len(scores)) if keep(chosen_score, scores[i])]
    return min(reversed(passing), key=lambda i: scores[i]) if passing else None


def pick_perturbation(prompt: str, strategy: str, seed: int,
                      table: Mapping[str, list[Perturbation]] | None = None) -> Perturbation | None:
    """One perturbation of ``prompt`` for ``strategy`` (from ``table`` when given, else ``soundworld.perturb``),
    chosen by a seed and the prompt, so a rerun picks the same one; ``None`` when the prompt has none."""
    options = table.get(prompt, []) if table is not None else perturb(prompt, seed=seed)
    options = [p for p in options if p.strategy == strategy]
    if not options:
        return None
    return options[np.random.default_rng([seed, zlib.crc32(prompt.encode())]).integers(len(options))]


def autorank_pairs(
    prompts: Sequence[str],
    generate: ClipGenerator,
    ranker: Callable[[np.ndarray, int, str], list[float]],
    *,
    model: str,
    k: int = 4,
    seed: int = 0,
    steps: int | None = None,
    guidance: float = 3.0,
    min_margin: float | PairFilter = 0.25,
    batch_size: int = 8,
    report: AutorankReport | None = None,
    pairing: str = "best-worst",
    strategies: Sequence[str] = ("inference",),
    perturbations: Mapping[str, list[Perturbation]] | None = None,
) -> Iterator[PreferenceRow]:
    """Yield pairs for ``prompts`` by ``strategies``, one batched generation call per ``batch_size`` prompts
    and strategy. ``min_margin`` is the margin alone or a whole ``PairFilter``; ``steps=None`` samples with
    the model's own default steps. Perturbed and temporal clips: ``k`` per perturbed prompt."""
    from pipeline import clip_seeds

    from preference_data.dataset import PreferenceRow
    from annotate.pool import GeneratedClips, refuse_unreadable

    if k < 2:
        raise ValueError(f"`k` must be at least 2 to make a pair, got {k}")
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise ValueError(f"`strategies` must be a non-empty subset of {STRATEGIES}, got {list(strategies)}")
    refuse_unreadable(generate, [*prompts, *(p.prompt for q in prompts for p in (perturbations or {}).get(q, []))])
    keep = min_margin if isinstance(min_margin, PairFilter) else PairFilter(min_margin=min_margin)
    steps = generate.default_steps if steps is None else steps
    report = report if report is not None else AutorankReport()
    rank_name = getattr(ranker, "name", "judge")
    seeds = clip_seeds(seed, k)
    contrast_seeds = {name: clip_seeds(seed + k * (1 + i), k) for i, name in enumerate(STRATEGIES[1:])}

    def row(strategy, prompt, chosen: tuple, rejected: tuple, fingerprint) -> PreferenceRow:
        # chosen / rejected: (waveform, latent or None, seed, prompt generated from)
        latents = {} if chosen[1] is None or rejected[1] is None else {
            "chosen_latent": chosen[1], "rejected_latent": rejected[1], "latent_fingerprint": fingerprint}
        return PreferenceRow(
            prompt=prompt, chosen_wav=encode_wav(chosen[0]), rejected_wav=encode_wav(rejected[0]),
            strategy=strategy, ranker=rank_name, chosen_model=model, rejected_model=model, chosen_seed=chosen[2],
            rejected_seed=rejected[2], num_inference_steps=steps, guidance_scale=guidance, votes_for=1,
            votes_against=0, annotators=1, chosen_prompt=chosen[3], rejected_prompt=rejected[3], **latents)

    def clip(made: GeneratedClips, index: int, clip_seed: int, prompt: str) -> tuple:
        return (made.waveforms[index], None if made.latents is None else made.latents[index], clip_seed, prompt)

    for start in tqdm(range(0, len(prompts), batch_size), desc="autorank", unit="batch"):
        batch = list(prompts[start : start + batch_size])
        own = GeneratedClips.of(generate([prompt for prompt in batch for _ in seeds], seeds * len(batch), steps,
                                         guidance))
        own_scores = []
        for j, prompt in enumerate(batch):
            scores = ranker(own.waveforms[j * k : (j + 1) * k], generate.sampling_rate, prompt)
            own_scores.append(scores)
            report.prompts += 1
            report.margins.append(float(max(scores) - min(scores)))
            if "inference" in strategies:
                pairs = ranked_pairs(scores, keep, pairing)
                report.below_margin += not pairs
                for chosen, rejected in pairs:
                    report.pairs_by_strategy["inference"] += 1
                    yield row("inference", prompt, clip(own, j * k + chosen, seeds[chosen], prompt),
                              clip(own, j * k + rejected, seeds[rejected], prompt), own.latent_fingerprint)
        for strategy in strategies:
            if strategy == "inference":
                continue
            picked = [(j, pick_perturbation(p, strategy, seed, perturbations)) for j, p in enumerate(batch)]
            picked = [(j, p) for j, p in picked if p is not None]
            if not picked:
                continue
            made = GeneratedClips.of(generate([p.prompt for _, p in picked for _ in range(k)],
                                              contrast_seeds[strategy] * len(picked), steps, guidance))
            for n, (j, perturbation) in enumerate(picked):
                prompt, scores = batch[j], own_scores[j]
                theirs = ranker(made.waveforms[n * k : (n + 1) * k], generate.sampling_rate, prompt)
                best = int(np.argmax(scores))
                worst = band_loser(scores[best], theirs, keep)
                if worst is None:
                    continue
                report.pairs_by_strategy[strategy] += 1
                yield row(strategy, prompt, clip(own, j * k + best, seeds[best], prompt),
                          clip(made, n * k + worst, contrast_seeds[strategy][worst], perturbation.prompt),
                          own.latent_fingerprint if own.latent_fingerprint == made.latent_fingerprint else None)


def score_unscored(store: Store, ranker: Callable[[np.ndarray, int, str], list[float]]) -> int:
    """Give every stored clip the ranker has not scored its ``auto_score``; return how many were scored.

    What ``Store(informative_first=True)`` orders tasks by, and what the automatic verdict
    ranks with. A ranker's ``identity`` (the judge, a CLAP checkpoint, a preference model's
    weights) is stored with each score, so the scores of a ranker since replaced (a retrained
    preference model) are recomputed, never mixed with the new one's. A clip whose prompt the
    ranker cannot read (a judge given a prompt outside the sound world) is left unscored.
    """
    identity = getattr(ranker, "identity", None)
    scored = 0
    for clip in store.candidates().values():
        if clip.auto_score is not None and clip.auto_scorer == identity:
            continue
        samples, rate = decode_wav(Path(clip.audio_path).read_bytes())
        try:
            [score] = ranker(samples[None, :], rate, clip.prompt)
        except ValueError as err:  # soundworld.PromptError and friends
            logger.info("clip %s left unscored: %s", clip.id, err)
            if clip.auto_score is not None:  # another ranker's score
                store.set_auto_score(clip.id, None)
            continue
        store.set_auto_score(clip.id, score, identity)
        scored += 1
    return scored


def read_prompts(source: str, n: int | None, seed: int) -> list[str]:
    """A prompts file (one per line, # comments), or a sound-world split name ("train", "test", "heldout")."""
    from soundworld.grammar import SPLIT_CONSTRUCTIONS, sample_prompts

    if source in SPLIT_CONSTRUCTIONS:
        return sample_prompts(source, n or 1000, seed)
    prompts = prompt_lines(Path(source).read_text(encoding="utf-8"))
    return prompts[:n] if n else prompts


def strategy_list(text: str) -> list[str]:
    """``--strategies`` "inference,perturbed,temporal" -> a checked list."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"strategies must be a comma-separated subset of {','.join(STRATEGIES)}; "
                                         f"got {text!r}")
    return list(dict.fromkeys(names))


def ranker_spec(text: str) -> str:
    """``judge``, ``clap`` or ``reward:PATH`` (checked here, loaded by ``load_ranker`` after the heavy imports)."""
    if text in ("judge", "clap"):
        return text
    if text.startswith("reward:") and text[len("reward:"):]:
        folder = Path(text[len("reward:"):])
        if not (folder / "reward" / "config.json").is_file():
            raise argparse.ArgumentTypeError(f"{folder} is not a preference model folder (no reward/config.json); "
                                             "train one with `python -m preference.reward train`")
        return text
    raise argparse.ArgumentTypeError(f"must be judge, clap or reward:PATH, got {text!r}")


def load_ranker(spec: str, clap_model: str = "laion/larger_clap_general", device: str | None = None):
    """The ranker a ``ranker_spec`` names: called as ``ranker(waveforms, sample_rate, prompt) -> scores``."""
    if spec == "judge":
        return JudgeRanker()
    if spec == "clap":
        return ClapRanker.from_pretrained(clap_model, device=device)
    from preference.reward import PreferenceModel

    return PreferenceModel.from_pretrained(spec[len("reward:"):])


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """How candidates become pairs: the flags ``autopairs.autorank`` and ``train_rounds`` share."""
    group = parser.add_argument_group("pairs (Tango 2's strategies and filter)")
    group.add_argument("--k", type=int, default=4, help="candidates per prompt (and per perturbed prompt)")
    group.add_argument("--ranker", type=ranker_spec, default="judge",
                       help="who scores the candidates: judge, clap, or reward:PATH (a model from preference.reward)")
    group.add_argument("--clap-model", default="laion/larger_clap_general", help="CLAP checkpoint for --ranker clap")
    group.add_argument("--strategies", type=strategy_list, default=["inference"],
                       help="comma-separated: inference (several clips of the prompt), perturbed (loser from a prompt "
                            "with an event dropped or replaced), temporal (loser from a prompt in another order)")
    group.add_argument("--perturbations", default=None,
                       help="JSON lines of prompt -> perturbed prompts (soundworld.perturb's format, e.g. written by an "
                            "LLM) instead of the built-in perturber")
    group.add_argument("--pairs", choices=PAIRINGS, default="best-worst",
                       help="inference pairs: best-worst (one per prompt) or all (every two candidates that pass)")
    group.add_argument("--min-margin", type=float, default=0.25, help="keep a pair only if its scores differ this much")
    group.add_argument("--max-margin", type=float, default=float("inf"), help="... and at most this much")
    group.add_argument("--min-chosen-score", type=float, default=-float("inf"), help="... the winner scores at least this")
    group.add_argument("--max-rejected-score", type=float, default=float("inf"), help="... the loser at most this")


def pair_filter(args: argparse.Namespace) -> PairFilter:
    return PairFilter(args.min_margin, args.max_margin, args.min_chosen_score, args.max_rejected_score)


def pairing_rule(args: argparse.Namespace) -> str:
    """The dataset card's sentences on how scored candidates became pairs."""
    which = "the best and worst" if args.pairs == "best-worst" else "every two candidates"
    rules = {
        "inference": f"{which} of the prompt's own candidates (the higher-scored one chosen)",
        "perturbed": "the best of them against the worst of K clips of a perturbed prompt (an event dropped, "
                     "replaced or recounted), scored against the original prompt",
        "temporal": "the best of them against the worst of K clips of a temporally perturbed prompt (events "
                    "reordered), scored against the original prompt",
    }
    keep = pair_filter(args)
    bounds = [f"the scores differ by at least {keep.min_margin}"]
    bounds += [f"at most {keep.max_margin}"] if keep.max_margin < float("inf") else []
    bounds += [f"the winner scores at least {keep.min_chosen_score}"] if keep.min_chosen_score > -float("inf") else []
    bounds += [f"the loser at most {keep.max_rejected_score}"] if keep.max_rejected_score < float("inf") else []
    return (f"the {args.ranker} ranker scored them; pairs ({', '.join(args.strategies)}): "
            + "; ".join(f"{name}: {rules[name]}" for name in args.strategies)
            + f"; kept when {', '.join(bounds)}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autopairs.autorank", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_SPEC, help="model spec that generates the candidates")
    parser.add_argument("--prompts", required=True, help="a prompts file, or 'train' / 'test' / 'heldout' (sound world)")
    parser.add_argument("--n", type=int, default=None, help="how many prompts; none: all in the file, 1000 sampled")
    parser.add_argument("--seed", type=int, default=0, help="prompt sampling and the candidates' seeds")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps; none: the model's own")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation call")
    parser.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    add_pair_arguments(parser)
    args = parser.parse_args(argv)
    if args.k < 2:
        parser.error(f"--k must be at least 2 to make a pair, got {args.k}")
    try:
        perturbations = load_perturbations(args.perturbations) if args.perturbations else None
    except (OSError, ValueError) as err:
        parser.error(f"--perturbations: {err}")
    from preference_data.dataset import EmptyDataset, write_preference_dataset
    from annotate.pool import PipelineGenerator

    prompts = read_prompts(args.prompts, args.n, args.seed)
    try:
        ranker = load_ranker(args.ranker, args.clap_model)
    except UnusableModelFolder as err:  # a planted or damaged reward:PATH folder: one line naming the file
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = AutorankReport()
    generator = PipelineGenerator(args.model)
    args.steps = args.steps or generator.default_steps
    rows = autorank_pairs(prompts, generator, ranker, model=args.model, k=args.k, seed=args.seed,
                          steps=args.steps, guidance=args.guidance, min_margin=pair_filter(args),
                          batch_size=args.batch_size, report=report, pairing=args.pairs,
                          strategies=args.strategies, perturbations=perturbations)
    how_made = (f"`{args.model}` generated {args.k} candidates per prompt ({args.steps} steps, guidance "
                f"{args.guidance}, seeds from {args.seed}); " + pairing_rule(args))
    try:
        summary = write_preference_dataset(rows, args.out, how_made=how_made, stats={
            "prompts": report.prompts, "prompts without an inference pair": report.below_margin,
            "pairs by strategy": dict(report.pairs_by_strategy),
            "mean best-worst margin": round(float(np.mean(report.margins)), 4) if report.margins else None,
        })
    except EmptyDataset:
        print(f"error: no pair passed the filter in {report.prompts} prompts; nothing written", file=sys.stderr)
        return 1
    except InvalidInput as err:  # a prompt the model cannot read: refused before any clip was made
        print(f"error: {err}", file=sys.stderr)
        return 2
    by_strategy = ", ".join(f"{n} {name}" for name, n in summary.strategies.items())
    print(f"{summary.rows} pairs ({by_strategy}; {summary.with_latents} with latents) from {report.prompts} prompts "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
