"""A machine annotator: K candidates per prompt, scored automatically, best vs worst kept.

    python -m annotate.autorank --model tiny --prompts train --n 1000 --k 4 --seed 0 --out pairs
    python -m annotate.autorank --model declare-lab/tango --prompts prompts.txt --ranker clap --out pairs

This is how Audio-Alpaca was made for Tango 2 (and CRPO's data for TangoFlux): generate
several clips per prompt, score each against its prompt, and keep the best and the worst
as a (chosen, rejected) pair only when their scores differ by at least ``--min-margin``
(Audio-Alpaca's Δ filter), so that near-ties, where the ranker is unsure, do not become
training signal. Rankers:

* ``judge`` (strategy ``judge-rank``): the sound world's judge; scores in [0, 1];
* ``clap`` (strategy ``clap-rank``): cosine similarity of CLAP text and audio embeddings
  (``laion/larger_clap_general`` by default; any transformers CLAP checkpoint).

Clip ``i`` of every prompt is generated with seed ``seed + i`` (``pipeline.clip_seeds``), the K clips
of ``batch_size`` prompts in one batched call. Pairs go through the shared dataset writer.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from pipeline.registry import DEFAULT_SPEC
from pipeline.tango import clip_seeds

from .clips import decode_wav, encode_wav
from .dataset import EmptyDataset, PreferenceRow, write_preference_dataset
from .pool import ClipGenerator, PipelineGenerator
from .store import Store

logger = logging.getLogger(__name__)


class JudgeRanker:
    """The sound world's judge: how well each clip follows its prompt, in [0, 1]."""

    strategy = "judge-rank"

    def __call__(self, waveforms: np.ndarray, sample_rate: int, prompt: str) -> list[float]:
        from soundworld import judge

        return [float(judge(waveform, sample_rate, prompt).score) for waveform in waveforms]


class ClapRanker:
    """CLAP (Wu et al. 2023) text-audio similarity, as used to rank Audio-Alpaca's candidates."""

    strategy = "clap-rank"

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
    """What a run did: prompts scored, pairs kept, prompts whose best and worst differ by less than the margin."""

    prompts: int = 0
    pairs: int = 0
    below_margin: int = 0
    margins: list[float] = field(default_factory=list)  # best minus worst, one per prompt


PAIRINGS = ("best-worst", "all")


def ranked_pairs(scores: Sequence[float], min_margin: float, pairing: str = "best-worst") -> list[tuple[int, int]]:
    """(chosen, rejected) candidate indices whose scores differ by at least ``min_margin``.

    ``best-worst``: at most one pair, the best against the worst (Audio-Alpaca). ``all``: every
    two candidates far enough apart, the better one chosen: up to K(K-1)/2 pairs from the same
    K clips, so the same generation budget yields several times the pairs.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"`pairing` must be one of {PAIRINGS}, got {pairing!r}")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # best first; stable on ties
    if pairing == "best-worst":
        candidates = [(order[0], order[-1])]
    else:
        candidates = [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]
    return [(chosen, rejected) for chosen, rejected in candidates if scores[chosen] - scores[rejected] >= min_margin]


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
    min_margin: float = 0.25,
    batch_size: int = 8,
    report: AutorankReport | None = None,
    pairing: str = "best-worst",
) -> Iterator[PreferenceRow]:
    """Yield pairs for ``prompts`` (``ranked_pairs``), one batched generation call per ``batch_size`` prompts.

    ``steps=None`` samples with the model's own default steps.
    """
    if k < 2:
        raise ValueError(f"`k` must be at least 2 to make a pair, got {k}")
    steps = generate.default_steps if steps is None else steps
    report = report if report is not None else AutorankReport()
    strategy = getattr(ranker, "strategy", "judge-rank")
    seeds = clip_seeds(seed, k)
    for start in tqdm(range(0, len(prompts), batch_size), desc="autorank", unit="batch"):
        batch = list(prompts[start : start + batch_size])
        waveforms = np.asarray(generate([prompt for prompt in batch for _ in seeds], seeds * len(batch), steps, guidance))
        for j, prompt in enumerate(batch):
            clips = waveforms[j * k : (j + 1) * k]
            scores = ranker(clips, generate.sampling_rate, prompt)
            pairs = ranked_pairs(scores, min_margin, pairing)
            report.prompts += 1
            report.margins.append(float(max(scores) - min(scores)))
            report.below_margin += not pairs
            report.pairs += len(pairs)
            for chosen, rejected in pairs:
                yield PreferenceRow(
                    prompt=prompt, chosen_wav=encode_wav(clips[chosen]), rejected_wav=encode_wav(clips[rejected]),
                    strategy=strategy, chosen_model=model, rejected_model=model, chosen_seed=seeds[chosen],
                    rejected_seed=seeds[rejected], num_inference_steps=steps, guidance_scale=guidance,
                    votes_for=1, votes_against=0, annotators=1,
                )


def score_unscored(store: Store, ranker: Callable[[np.ndarray, int, str], list[float]]) -> int:
    """Give every stored clip without an ``auto_score`` the ranker's score; return how many were scored.

    What ``Store(informative_first=True)`` orders tasks by, and what the automatic verdict
    ranks with. A clip whose prompt the ranker cannot read (a judge given a prompt outside
    the sound world) stays unscored.
    """
    scored = 0
    for clip in store.candidates().values():
        if clip.auto_score is not None:
            continue
        samples, rate = decode_wav(Path(clip.audio_path).read_bytes())
        try:
            [score] = ranker(samples[None, :], rate, clip.prompt)
        except ValueError as err:  # soundworld.PromptError and friends
            logger.info("clip %s left unscored: %s", clip.id, err)
            continue
        store.set_auto_score(clip.id, score)
        scored += 1
    return scored


def read_prompts(source: str, n: int | None, seed: int) -> list[str]:
    """A prompts file (one per line, # comments), or a sound-world split name ("train", "test", "heldout")."""
    from soundworld.grammar import SPLIT_CONSTRUCTIONS, sample_prompts

    if source in SPLIT_CONSTRUCTIONS:
        return sample_prompts(source, n or 1000, seed)
    lines = [line.strip() for line in Path(source).read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    return prompts[:n] if n else prompts


def pairing_rule(args: argparse.Namespace) -> str:
    """The dataset card's sentence on how scored candidates became pairs."""
    which = "the best and worst" if args.pairs == "best-worst" else "every two candidates"
    return (f"the {args.ranker} ranker scored them and {which} became a pair (the higher-scored one chosen) "
            f"when their scores differed by at least {args.min_margin}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotate.autorank", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_SPEC, help=f"model spec that generates the candidates (default {DEFAULT_SPEC})")
    parser.add_argument("--prompts", required=True, help="a prompts file, or 'train' / 'test' / 'heldout' (sound world)")
    parser.add_argument("--n", type=int, default=None, help="how many prompts (default: all in the file, 1000 sampled)")
    parser.add_argument("--k", type=int, default=4, help="candidates per prompt (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--ranker", choices=["judge", "clap"], default="judge")
    parser.add_argument("--clap-model", default="laion/larger_clap_general")
    parser.add_argument("--min-margin", type=float, default=0.25, help="keep a pair only if its scores differ this much")
    parser.add_argument("--pairs", choices=PAIRINGS, default="best-worst",
                        help="best-worst: one pair per prompt; all: every two candidates at least the margin apart")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generation call")
    parser.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    args = parser.parse_args(argv)

    prompts = read_prompts(args.prompts, args.n, args.seed)
    ranker = JudgeRanker() if args.ranker == "judge" else ClapRanker.from_pretrained(args.clap_model)
    report = AutorankReport()
    generator = PipelineGenerator(args.model)
    args.steps = args.steps or generator.default_steps
    rows = autorank_pairs(prompts, generator, ranker, model=args.model, k=args.k, seed=args.seed,
                          steps=args.steps, guidance=args.guidance, min_margin=args.min_margin,
                          batch_size=args.batch_size, report=report, pairing=args.pairs)
    how_made = (f"`{args.model}` generated {args.k} candidates per prompt ({args.steps} steps, guidance "
                f"{args.guidance}, seeds {args.seed}..{args.seed + args.k - 1}); " + pairing_rule(args))
    try:
        summary = write_preference_dataset(rows, args.out, how_made=how_made, stats={
            "prompts": report.prompts, "dropped below margin": report.below_margin,
            "mean best-worst margin": round(float(np.mean(report.margins)), 4) if report.margins else None,
        })
    except EmptyDataset:
        print(f"error: no pair passed the margin {args.min_margin} in {report.prompts} prompts; nothing written",
              file=sys.stderr)
        return 1
    print(f"{summary.rows} pairs from {report.prompts} prompts ({report.below_margin} below the margin) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
