"""How far annotation has come: tasks done, votes per annotator, agreement (for ``stats`` and the app)."""

from __future__ import annotations

from .gold import gold_accuracy
from .hygiene import annotator_hygiene
from .pairs import annotator_agreement, ranking_alpha
from .store import Store


def dataset_stats(store: Store) -> dict:
    """Tasks, votes, Krippendorff's alpha and per-annotator counts, leave-one-out agreement, gold accuracy and the
    hygiene statistics and flags (``annotate.hygiene``: position bias, median seconds per vote, busiest hour).

    Task counts are of model tasks (gold tasks are not work towards the target), withdrawn
    tasks (a clip could not be read) apart. Undone votes count only as ``undone``.
    """
    everything, progress, answers = store.rankings(include_undone=True), store.task_progress(), store.gold_answers()
    rankings = [r for r in everything if r.undone_at is None]
    agreement = {a.annotator: a for a in annotator_agreement(r for r in rankings if r.task_id not in answers)}
    gold = gold_accuracy(rankings, answers)
    hygiene = annotator_hygiene(rankings, answers)
    per_annotator: dict[str, dict] = {}
    for ranking in rankings:
        row = per_annotator.setdefault(ranking.annotator, {"votes": 0, "skipped": 0, "all_bad": 0})
        row["votes"] += 1
        row["skipped"] += ranking.skipped
        row["all_bad"] += ranking.all_bad
    for name, row in per_annotator.items():
        found = agreement.get(name)
        row["agreement"] = None if found is None else found.rate
        row["compared"] = 0 if found is None else found.compared
        row["gold_answered"] = gold[name].answered if name in gold else 0
        row["gold_accuracy"] = gold[name].accuracy if name in gold else None
        row.update({key: getattr(hygiene[name], key) for key in ("first_shown_wins", "median_s_per_vote",
                                                                   "busiest_hour", "flags")})
    return {
        "tasks": len(progress),
        "tasks_at_target": sum(votes >= target for _, votes, target in progress),
        "tasks_untouched": sum(votes == 0 for _, votes, _ in progress),
        "tasks_withdrawn": len(store.withdrawn_tasks()),
        "votes": len(rankings),
        "skipped": sum(r.skipped for r in rankings),
        "all_bad": sum(r.all_bad for r in rankings),
        "undone": len(everything) - len(rankings),
        "krippendorff_alpha_ordinal": ranking_alpha(r for r in rankings if r.task_id not in answers),
        "target_overlap": max((target for _, _, target in progress), default=store.target_overlap),
        "gold_tasks": len(answers),
        "annotators": per_annotator,
    }
