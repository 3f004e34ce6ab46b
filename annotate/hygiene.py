"""Vote hygiene as the arenas run it (FastChat's ``clean_battle_data.py``, TTS Arena): per-annotator statistics, and a
stated rule that flags the annotators whose votes the verdict and the export leave out by default.

Per annotator, over their standing votes:

- ``majority_agreement``: how often their strict preferences match the other annotators' majority (leave-one-out,
  ``annotate.pairs.annotator_agreement``);
- ``gold_accuracy``: their share of gold tasks answered right (``annotate.gold``);
- ``first_shown_wins``: of the two clips of each strict preference, how often the one shown first won. Orders are
  shuffled per annotator, so a listener sits near 0.5 whatever the clips; one who always picks A does not;
- ``median_s_per_vote``: the median time from a task's hand-out to its vote;
- ``busiest_hour``: votes in their busiest hour.

The rule (``FLAG_RULES``), applied once an annotator has ``FLAG_MIN_VOTES`` ranked votes: flagged when the clip
shown first wins under 20 % or over 80 % of at least 20 preferences, when they agree with the others' majority in
under 35 % of at least 10 pairs (a coin agrees in half), when they answer under half of at least 3 gold tasks
right, when their median vote takes under 3 s, or when they cast over 240 votes in one hour (one per 15 s).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .gold import TrustReport, gold_accuracy, trusted_rankings
from .pairs import annotator_agreement, usable
from .store import Ranking

FLAG_MIN_VOTES = 10  # ranked votes before any rule applies: a handful says nothing
POSITION_LIMITS, POSITION_MIN_PAIRS = (0.2, 0.8), 20
MIN_AGREEMENT, AGREEMENT_MIN_PAIRS = 0.35, 10
MIN_GOLD, GOLD_MIN_ANSWERS = 0.5, 3
MIN_MEDIAN_S = 3.0
MAX_VOTES_PER_HOUR = 240


@dataclass(frozen=True)
class AnnotatorHygiene:
    annotator: str
    ranked: int  # standing votes that rank clips (not skips, not all-bad)
    majority_agreement: float | None
    agreement_pairs: int
    gold_accuracy: float | None
    gold_answered: int
    first_shown_wins: float | None
    position_pairs: int
    median_s_per_vote: float | None
    busiest_hour: int
    flags: tuple[str, ...]  # the rules they break (``FLAG_RULES``); empty: not flagged


def _first_shown_wins(votes: Sequence[Ranking]) -> tuple[float | None, int]:
    won = pairs = 0
    for vote in votes:
        order = [clip for clip in vote.shown_order if clip in vote.ranks]
        for i, first in enumerate(order):
            for second in order[i + 1:]:
                if vote.ranks[first] != vote.ranks[second]:
                    pairs += 1
                    won += vote.ranks[first] < vote.ranks[second]
    return (won / pairs if pairs else None), pairs


def _busiest_hour(times: list[float]) -> int:
    times, most, start = sorted(times), 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 3600:
            start += 1
        most = max(most, end - start + 1)
    return most


def _flags(row: dict) -> tuple[str, ...]:
    if row["ranked"] < FLAG_MIN_VOTES:
        return ()
    found = []
    if row["position_pairs"] >= POSITION_MIN_PAIRS and not (
            POSITION_LIMITS[0] <= row["first_shown_wins"] <= POSITION_LIMITS[1]):
        found.append("position bias")
    if row["agreement_pairs"] >= AGREEMENT_MIN_PAIRS and row["majority_agreement"] < MIN_AGREEMENT:
        found.append("against the majority")
    if row["gold_answered"] >= GOLD_MIN_ANSWERS and row["gold_accuracy"] < MIN_GOLD:
        found.append("gold")
    if row["median_s_per_vote"] is not None and row["median_s_per_vote"] < MIN_MEDIAN_S:
        found.append("too fast")
    if row["busiest_hour"] > MAX_VOTES_PER_HOUR:
        found.append("too many per hour")
    return tuple(found)


def annotator_hygiene(rankings: Sequence[Ranking], answers: Mapping[int, Mapping[str, int]]) -> dict[str, AnnotatorHygiene]:
    """Per annotator of the standing ``rankings`` (gold tasks' ``answers``): their statistics and flags."""
    standing = [r for r in rankings if r.undone_at is None]
    model_votes = [r for r in standing if r.task_id not in answers]
    agreement = {a.annotator: a for a in annotator_agreement(model_votes)}
    gold = gold_accuracy(standing, answers)
    by_annotator: dict[str, list[Ranking]] = {}
    for ranking in standing:
        by_annotator.setdefault(ranking.annotator, []).append(ranking)
    result = {}
    for name, theirs in sorted(by_annotator.items()):
        ranked = [r for r in theirs if usable(r)]
        wins, position_pairs = _first_shown_wins(ranked)
        spent = [r.time_spent_s for r in theirs if not r.skipped and r.time_spent_s is not None]
        found = agreement.get(name)
        row = {
            "annotator": name, "ranked": len(ranked),
            "majority_agreement": None if found is None else found.rate,
            "agreement_pairs": 0 if found is None else found.compared,
            "gold_accuracy": gold[name].accuracy if name in gold else None,
            "gold_answered": gold[name].answered if name in gold else 0,
            "first_shown_wins": None if wins is None else round(wins, 3), "position_pairs": position_pairs,
            "median_s_per_vote": round(statistics.median(spent), 1) if spent else None,
            "busiest_hour": _busiest_hour([r.created_at for r in theirs if not r.skipped]),
        }
        result[name] = AnnotatorHygiene(**row, flags=_flags(row))
    return result


def counted_rankings(rankings: Sequence[Ranking], answers: Mapping[int, Mapping[str, int]],
                     min_gold_accuracy: float | None = None,
                     include_flagged: bool = False) -> tuple[list[Ranking], TrustReport]:
    """The rankings the verdict and the export count: without annotators below ``min_gold_accuracy``
    (``trusted_rankings``) and, unless ``include_flagged``, without flagged annotators (``annotator_hygiene``); the
    report names everyone left out."""
    kept, trust = trusted_rankings(rankings, answers, min_gold_accuracy)
    if include_flagged:
        return kept, trust
    flagged = {name: row.flags for name, row in annotator_hygiene(rankings, answers).items() if row.flags}
    counted = [r for r in kept if r.annotator not in flagged]
    left_out = tuple(sorted({*trust.left_out_annotators, *flagged}))
    return counted, TrustReport(trust.min_accuracy, trust.scores, left_out, len(rankings) - len(counted), flagged)
