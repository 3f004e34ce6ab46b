"""From rankings to preference pairs, and how much the annotators agree.

A ranking of K clips implies an ordered pair (better, worse) for every two clips ranked
differently; tied clips imply nothing. Across annotators, each pair of clips gets
``votes_for`` (annotators who preferred the majority's choice), ``votes_against`` and
``annotators`` (everyone who ranked both clips, ties included); a pair is kept when the
majority is strict and at least ``min_margin`` votes strong. Skips and all-bad votes carry
no preference and are left out everywhere here.

Agreement:

- ``krippendorff_alpha``: Krippendorff's alpha for any number of coders and missing
  values (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"), with the
  nominal, ordinal and interval metrics. For rankings the units are (task, clip), the
  values are ranks, and the ordinal metric fits: a rank says "better than", not "by how much".
- ``annotator_agreement``: per annotator, how often their strict preferences match the
  majority of the *other* annotators (leave-one-out, so nobody agrees with themselves);
  a careless or adversarial annotator stands out with a low rate.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from .store import Ranking


@dataclass(frozen=True)
class PairVotes:
    """Two clips of one prompt, the majority's preference first."""

    chosen: str
    rejected: str
    votes_for: int
    votes_against: int
    annotators: int

    @property
    def margin(self) -> int:
        return self.votes_for - self.votes_against


@dataclass(frozen=True)
class AnnotatorAgreement:
    annotator: str
    compared: int  # strict preferences of theirs that the others' majority also decided
    agreed: int

    @property
    def rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def usable(ranking: Ranking) -> bool:
    """Does this vote express preferences (not a skip, not all-bad) that count (``Ranking.counts``: its clips were
    heard long enough)?"""
    return ranking.counts and not (ranking.skipped or ranking.all_bad)


def ordered_pairs(ranks: Mapping[str, int]) -> list[tuple[str, str]]:
    """(better, worse) for every two clips ranked differently (rank 1 = best)."""
    return [(a, b) if ranks[a] < ranks[b] else (b, a)
            for a, b in combinations(sorted(ranks), 2) if ranks[a] != ranks[b]]


def _tally(rankings: Iterable[Ranking]) -> dict[tuple[str, str], tuple[Counter, int]]:
    """For each pair of clips (sorted ids): wins per clip and how many annotators ranked both."""
    tallies: dict[tuple[str, str], tuple[Counter, int]] = {}
    for ranking in filter(usable, rankings):
        for a, b in combinations(sorted(ranking.ranks), 2):
            wins, raters = tallies.get((a, b), (Counter(), 0))
            if ranking.ranks[a] != ranking.ranks[b]:
                wins[a if ranking.ranks[a] < ranking.ranks[b] else b] += 1
            tallies[(a, b)] = (wins, raters + 1)
    return tallies


def aggregate_pairs(rankings: Iterable[Ranking], min_margin: int = 1) -> list[PairVotes]:
    """Majority pairs across annotators, strongest margin first (then by clip ids, for stability)."""
    if min_margin < 1:
        raise ValueError(f"`min_margin` must be >= 1 (a tie is no preference), got {min_margin}")
    pairs = []
    for (a, b), (wins, raters) in _tally(rankings).items():
        chosen, rejected = (a, b) if wins[a] >= wins[b] else (b, a)
        if wins[chosen] - wins[rejected] >= min_margin:
            pairs.append(PairVotes(chosen, rejected, wins[chosen], wins[rejected], raters))
    return sorted(pairs, key=lambda p: (-p.margin, p.chosen, p.rejected))


def krippendorff_alpha(units: Iterable[Sequence[float]], metric: str = "ordinal") -> float | None:
    """Krippendorff's alpha over ``units``, each the values its coders gave (missing ones left out).

    Units with fewer than two values are not pairable and ignored. Returns None when alpha
    is undefined (no pairable unit, or a single value used throughout: no disagreement is
    even possible). 1 = perfect agreement, 0 = chance, below 0 = systematic disagreement.
    """
    pairable = [list(unit) for unit in units if len(unit) >= 2]
    values = sorted({v for unit in pairable for v in unit})
    if len(values) < 2:
        return None
    index = {v: i for i, v in enumerate(values)}

    # Coincidence matrix: o[c, k] = sum over units of (c-k pairs from different coders) / (m_u - 1).
    coincidences = np.zeros((len(values), len(values)))
    for unit in pairable:
        counts = np.zeros(len(values))
        for v in unit:
            counts[index[v]] += 1
        coincidences += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    marginals = coincidences.sum(axis=1)
    total = marginals.sum()

    delta2 = _metric(metric, np.asarray(values, dtype=float), marginals)
    observed = (coincidences * delta2).sum()
    expected = (np.outer(marginals, marginals) * delta2).sum() / (total - 1)
    return float(1 - observed / expected)


def _metric(metric: str, values: np.ndarray, marginals: np.ndarray) -> np.ndarray:
    """Squared difference delta^2[c, k] between values c and k."""
    if metric == "nominal":
        return 1.0 - np.eye(len(values))
    if metric == "interval":
        return np.subtract.outer(values, values) ** 2
    if metric == "ordinal":
        # (n_c + ... + n_k - (n_c + n_k) / 2)^2: distance in ranks, i.e. how many observed
        # values lie between c and k, not how far apart the numbers are.
        cumulative = np.concatenate([[0.0], np.cumsum(marginals)])
        positions = np.arange(len(values))
        low, high = np.minimum.outer(positions, positions), np.maximum.outer(positions, positions)
        between = cumulative[high + 1] - cumulative[low]
        return (between - (marginals[low] + marginals[high]) / 2) ** 2
    raise ValueError(f"`metric` must be 'nominal', 'ordinal' or 'interval', got {metric!r}")


def ranking_alpha(rankings: Iterable[Ranking]) -> float | None:
    """Ordinal alpha of the usable rankings: units are (task, clip), values their ranks."""
    units: dict[Hashable, list[int]] = defaultdict(list)
    for ranking in filter(usable, rankings):
        for clip_id, rank in ranking.ranks.items():
            units[(ranking.task_id, clip_id)].append(rank)
    return krippendorff_alpha(units.values(), metric="ordinal")


def annotator_agreement(rankings: Iterable[Ranking]) -> list[AnnotatorAgreement]:
    """Leave-one-out agreement with the majority, per annotator (sorted by name)."""
    rankings = [r for r in rankings if usable(r)]
    # votes[(a, b)][winner][annotator]: how often this annotator preferred winner in the pair.
    votes: dict[tuple[str, str], dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for ranking in rankings:
        for better, worse in ordered_pairs(ranking.ranks):
            votes[tuple(sorted((better, worse)))][better][ranking.annotator] += 1

    compared: Counter = Counter()
    agreed: Counter = Counter()
    for ranking in rankings:
        name = ranking.annotator
        for better, worse in ordered_pairs(ranking.ranks):
            by_winner = votes[tuple(sorted((better, worse)))]
            others_for = sum(by_winner[better].values()) - by_winner[better][name]
            others_against = sum(by_winner[worse].values()) - by_winner[worse][name]
            if others_for != others_against:
                compared[name] += 1
                agreed[name] += others_for > others_against
    names = sorted({r.annotator for r in rankings})
    return [AnnotatorAgreement(name, compared[name], agreed[name]) for name in names]
