"""Rankings -> pairs, aggregation across annotators, and agreement (checked against hand and textbook values)."""

from __future__ import annotations

import pytest

from annotate import Ranking
from annotate.pairs import (
    PairVotes,
    aggregate_pairs,
    annotator_agreement,
    krippendorff_alpha,
    ordered_pairs,
    ranking_alpha,
)


def ranking(annotator: str, ranks: dict[str, int | None], task: int = 1, skipped=False, all_bad=False) -> Ranking:
    return Ranking(id=0, task_id=task, annotator=annotator, ranks=ranks, all_bad=all_bad, skipped=skipped,
                   shown_order=list(ranks), play_counts={}, time_spent_s=None, created_at=0.0)


def test_a_ranking_implies_a_pair_for_every_two_clips_ranked_differently():
    assert sorted(ordered_pairs({"a": 1, "b": 2, "c": 3})) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert sorted(ordered_pairs({"a": 2, "b": 1, "c": 2})) == [("b", "a"), ("b", "c")]  # a = c: a tie, no pair
    assert ordered_pairs({"a": 1, "b": 1}) == []


def test_pairs_aggregate_across_annotators_ties_skips_and_all_bad_excluded():
    rankings = [
        ranking("ann", {"a": 1, "b": 2, "c": 3}),
        ranking("bob", {"a": 1, "b": 3, "c": 2}),
        ranking("cat", {"a": 2, "b": 1, "c": 2}),
        ranking("dan", {"a": None, "b": None, "c": None}, skipped=True),
        ranking("eve", {"a": None, "b": None, "c": None}, all_bad=True),
    ]
    pairs = {(p.chosen, p.rejected): p for p in aggregate_pairs(rankings)}
    # a-b: ann, bob prefer a; cat prefers b. a-c: ann, bob prefer a; cat tied them.
    assert pairs[("a", "b")] == PairVotes("a", "b", votes_for=2, votes_against=1, annotators=3)
    assert pairs[("a", "c")] == PairVotes("a", "c", votes_for=2, votes_against=0, annotators=3)
    # b-c: ann and cat prefer b, bob prefers c.
    assert pairs[("b", "c")] == PairVotes("b", "c", votes_for=2, votes_against=1, annotators=3)
    assert [p.margin for p in aggregate_pairs(rankings)] == [2, 1, 1]  # strongest first
    assert {(p.chosen, p.rejected) for p in aggregate_pairs(rankings, min_margin=2)} == {("a", "c")}


def test_a_split_vote_makes_no_pair():
    rankings = [ranking("ann", {"a": 1, "b": 2}), ranking("bob", {"a": 2, "b": 1})]
    assert aggregate_pairs(rankings) == []
    with pytest.raises(ValueError, match="min_margin"):
        aggregate_pairs(rankings, min_margin=0)


def test_the_same_two_clips_in_two_tasks_pool_their_votes():
    rankings = [ranking("ann", {"a": 1, "b": 2}, task=1), ranking("ann", {"a": 1, "b": 2, "c": 3}, task=2)]
    [ab] = [p for p in aggregate_pairs(rankings) if {p.chosen, p.rejected} == {"a", "b"}]
    assert (ab.votes_for, ab.annotators) == (2, 2)


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
# 12 units, values 1..5, missing data. Published: nominal .743, ordinal .815, interval .849.
TEXTBOOK = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


@pytest.mark.parametrize("metric, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_matches_krippendorffs_worked_example(metric, published):
    units = [[coder[u] for coder in TEXTBOOK if coder[u] is not None] for u in range(12)]
    assert krippendorff_alpha(units, metric) == pytest.approx(published, abs=5e-4)


@pytest.mark.parametrize("metric, by_hand", [("nominal", 6 / 11), ("ordinal", 7 / 9), ("interval", 24 / 29)])
def test_alpha_matches_a_hand_computed_example(metric, by_hand):
    """Units (1,1), (1,2), (3,3). Coincidences o11=2, o12=o21=1, o33=2; n1=3, n2=1, n3=2, n=6.

    ordinal delta^2: d12=(4-2)^2=4, d13=(6-2.5)^2=12.25, d23=(3-1.5)^2=2.25;
    observed 2*4=8, expected 2*(3*1*4 + 3*2*12.25 + 1*2*2.25)/5=36: alpha = 1 - 8/36 = 7/9.
    nominal: 1 - 2 / (2*(3+6+2)/5) = 6/11. interval (d=1,4,1): 1 - 2 / (2*(3+24+2)/5) = 24/29.
    """
    assert krippendorff_alpha([[1, 1], [1, 2], [3, 3]], metric) == pytest.approx(by_hand)


def test_alpha_edge_cases():
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)
    assert krippendorff_alpha([[1, 2], [2, 1]]) == pytest.approx(-0.5)  # systematic disagreement
    assert krippendorff_alpha([[1, 1], [1, 1]]) is None  # one value throughout: undefined
    assert krippendorff_alpha([[1], [2]]) is None  # nothing pairable
    with pytest.raises(ValueError, match="metric"):
        krippendorff_alpha([[1, 2]], metric="ratio-ish")


def test_ranking_alpha_uses_task_and_clip_as_units_and_ignores_skips():
    same = {"a": 1, "b": 2, "c": 3}
    agreeing = [ranking("ann", same), ranking("bob", same), ranking("cat", {"a": None, "b": None, "c": None}, skipped=True)]
    assert ranking_alpha(agreeing) == pytest.approx(1.0)
    reversed_ = [ranking("ann", same), ranking("bob", {"a": 3, "b": 2, "c": 1})]
    assert ranking_alpha(reversed_) < 0


def test_a_careless_annotator_stands_out_in_agreement_with_the_majority():
    careful = {"a": 1, "b": 2, "c": 3}
    rankings = [ranking(name, careful) for name in ("ann", "bob", "cat")] + [ranking("rnd", {"a": 3, "b": 2, "c": 1})]
    agreement = {a.annotator: a for a in annotator_agreement(rankings)}
    assert agreement["rnd"].rate == 0.0 and agreement["rnd"].compared == 3
    assert all(agreement[name].rate == 1.0 for name in ("ann", "bob", "cat"))
    # Alone on a task, nobody else's majority exists: no comparison, no rate.
    assert annotator_agreement([ranking("solo", careful)])[0].rate is None
