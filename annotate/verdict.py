"""The verdict: which model do the rankings prefer, by how much, and how sure is that?

Arena-style (TTS Arena, Chatbot Arena), from head-to-head clip pairs: every vote ranks
the clips of one task, and every two clips of *different* models in it form one
comparison; the better-ranked clip's model wins it, equal ranks are a tie (half a win
each). Per model:

- ``win_rate``: (wins + ties / 2) / comparisons, against all other models pooled;
- ``bt_score``: its Bradley-Terry strength on the Elo scale that arenas print,
  ``1000 + 400 * log10(p)`` with the strengths' geometric mean fixed to 1, so a
  difference of 400 means 10:1 odds. Fitted with Hunter's (2004) MM iteration
  ``p_i <- W_i / sum_j N_ij / (p_i + p_j)`` (``W_i`` wins of i, ties half; ``N_ij``
  comparisons of i and j), with ``prior`` virtual ties between every two models so
  that a model that wins every comparison still gets a finite score;
- 95 % intervals for both from a bootstrap over *votes* (one vote's comparisons are
  not independent: they share an annotator and a prompt), percentile method;
- ``comparisons``: how many comparisons the model took part in.

The same numbers come from the human rankings (``source="human"``) and, separately,
from the automatic ranker's scores (``source="auto"``: each task ranked by its clips'
``auto_score``, higher first), and per prompt category where prompts carry one (for the
sound world: the grammar's construction, e.g. ``then`` or ``count``).

``ranker_agreement`` says how often the automatic ranker picks the human majority's
winner of a pair, so an owner can decide where machine ranking suffices.

``with_minimum`` hides the numbers of a model compared fewer than a minimum number of
times (the public results: a handful of votes gives intervals of zero width that look
certain); its row says "too few votes" instead. It orders the rest by the lower end of
their Bradley-Terry interval (a model ranks high once it is surely strong, not when a few
lucky votes put its point estimate up) and marks a model in fewer than ``preliminary_under``
comparisons as preliminary.

The public results take votes in whole batches (``published_rankings``) so that a change
cannot be read vote by vote: only informative votes fill a batch (a ranking that tells some
clip from another; a tie-only ranking, an all-bad vote or a skip carries nothing an outsider
could not subtract), and a batch needs votes of ``MIN_BATCH_ANNOTATORS`` different annotators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from .hygiene import counted_rankings
from .pairs import aggregate_pairs, usable
from .store import Candidate, Ranking, Store

BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95
PRIOR_TIES = 1.0
ELO_BASE, ELO_SCALE = 1000.0, 400.0
MM_ITERATIONS = 500
AUTO_RANKER = "auto-ranker"
TOO_FEW_VOTES = "too few votes"
PRELIMINARY = "preliminary"
MIN_BATCH_ANNOTATORS = 5  # different annotators a published batch needs (at most the batch size)
NUMBERS = ("win_rate", "win_rate_interval", "bt_score", "bt_interval")  # what ``with_minimum`` hides

Vote = Mapping[str, int]  # clip id -> dense rank, 1 = best


@lru_cache(maxsize=4096)
def prompt_category(prompt: str) -> str | None:
    """A sound-world prompt's construction (``single``, ``count``, ``then``, ...); None for other prompts."""
    from soundworld import PromptError, parse

    try:
        return parse(prompt).construction
    except PromptError:
        return None


@dataclass(frozen=True)
class _Comparisons:
    """Every cross-model comparison: model indices, the first model's score (1, 0.5, 0) and its vote."""

    models: list[str]
    first: np.ndarray
    second: np.ndarray
    score: np.ndarray
    vote: np.ndarray
    votes: int


def _comparisons(votes: Sequence[Vote], model_of: Mapping[str, str]) -> _Comparisons:
    models = sorted({model_of[clip] for vote in votes for clip in vote})
    index = {model: i for i, model in enumerate(models)}
    first, second, score, vote_of = [], [], [], []
    for v, ranks in enumerate(votes):
        clips = sorted(ranks)
        for i, a in enumerate(clips):
            for b in clips[i + 1:]:
                if model_of[a] == model_of[b]:
                    continue
                first.append(index[model_of[a]])
                second.append(index[model_of[b]])
                score.append(1.0 if ranks[a] < ranks[b] else 0.0 if ranks[a] > ranks[b] else 0.5)
                vote_of.append(v)
    return _Comparisons(models, np.array(first, dtype=int), np.array(second, dtype=int),
                        np.array(score, dtype=float), np.array(vote_of, dtype=int), len(votes))


def _tables(c: _Comparisons, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bootstrap sample: wins[b, i, j] of i over j (ties half) and games[b, i, j]; weights (B, comparisons)."""
    m, samples = len(c.models), weights.shape[0]
    wins = np.zeros((samples, m, m))
    games = np.zeros((samples, m, m))
    np.add.at(wins, (slice(None), c.first, c.second), weights * c.score)
    np.add.at(wins, (slice(None), c.second, c.first), weights * (1 - c.score))
    np.add.at(games, (slice(None), c.first, c.second), weights)
    return wins, games + games.transpose(0, 2, 1)


def bradley_terry(wins: np.ndarray, games: np.ndarray, prior: float = PRIOR_TIES) -> np.ndarray:
    """Elo-scale Bradley-Terry scores from ``wins[..., i, j]`` and ``games[..., i, j]`` (MM iteration).

    ``prior`` virtual ties are added between every two models. Shape: ``wins`` and
    ``games`` are ``(..., models, models)``; returns ``(..., models)``.
    """
    m = wins.shape[-1]
    off_diagonal = 1 - np.eye(m)
    wins = wins + prior / 2 * off_diagonal
    games = games + prior * off_diagonal
    total_wins = wins.sum(axis=-1)
    strength = np.ones(wins.shape[:-1])
    for _ in range(MM_ITERATIONS):
        pair_sum = strength[..., :, None] + strength[..., None, :]
        updated = total_wins / (games / pair_sum).sum(axis=-1)
        updated /= np.exp(np.log(updated).mean(axis=-1, keepdims=True))  # geometric mean 1
        converged = np.abs(updated - strength).max() < 1e-10
        strength = updated
        if converged:
            break
    return ELO_BASE + ELO_SCALE * np.log10(strength)


def _win_rates(wins: np.ndarray, games: np.ndarray) -> np.ndarray:
    played = games.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins.sum(axis=-1) / played


def leaderboard(votes: Iterable[Vote], model_of: Mapping[str, str], *, n_boot: int = BOOTSTRAP_SAMPLES,
                seed: int = 0, prior: float = PRIOR_TIES) -> list[dict]:
    """Rows ``{model, win_rate, win_rate_interval, bt_score, bt_interval, comparisons}``, strongest first.

    ``votes`` are rankings (clip id -> rank); ``model_of`` maps clip ids to models. Models
    that were never compared with another model are left out. ``prior`` (virtual ties per
    pair of models) must be positive: a resampled model may win or lose everything.
    """
    if not prior > 0:
        raise ValueError(f"`prior` must be > 0 (virtual ties keep scores finite), got {prior}")
    c = _comparisons(list(votes), model_of)
    if len(c.score) == 0:
        return []
    point_wins, point_games, boot_wins, boot_games = _bootstrap(c, n_boot, seed)
    rate, score = _win_rates(point_wins, point_games)[0], bradley_terry(point_wins, point_games, prior)[0]
    boot_rate, boot_score = _win_rates(boot_wins, boot_games), bradley_terry(boot_wins, boot_games, prior)
    tail = (1 - CONFIDENCE) / 2 * 100
    played = point_games[0].sum(axis=-1)
    rows = []
    for i, model in enumerate(c.models):
        if not played[i]:
            continue
        rates = boot_rate[:, i][np.isfinite(boot_rate[:, i])]
        rows.append({
            "model": model,
            "win_rate": round(float(rate[i]), 4),
            "win_rate_interval": [round(float(np.percentile(rates, q)), 4) for q in (tail, 100 - tail)],
            "bt_score": round(float(score[i]), 1),
            "bt_interval": [round(float(np.percentile(boot_score[:, i], q)), 1) for q in (tail, 100 - tail)],
            "comparisons": int(played[i]),
        })
    return sorted(rows, key=lambda row: (-row["bt_score"], row["model"]))


def _bootstrap(c: _Comparisons, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(wins, games) of all votes, shapes (1, m, m), and of ``n_boot`` resamples of whole votes, (n_boot, m, m): a
    vote drawn twice counts its comparisons twice."""
    draws = np.random.default_rng(seed).integers(0, c.votes, (n_boot, c.votes))
    counts = np.zeros((n_boot, c.votes))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1)
    return (*_tables(c, np.ones((1, len(c.score)))), *_tables(c, counts[:, c.vote]))


def pair_win_rates(votes: Iterable[Vote], model_of: Mapping[str, str], *, n_boot: int = BOOTSTRAP_SAMPLES,
                   seed: int = 0) -> list[dict]:
    """Per pair of models that met: ``{model, opponent, win_rate, win_rate_interval, comparisons, rankings}``, the
    model the one of the two with the higher win rate over the other (ties half; 95 % bootstrap interval over votes,
    as ``leaderboard``), ``rankings`` the votes the pair met in; most compared pairs first."""
    c = _comparisons(list(votes), model_of)
    if len(c.score) == 0:
        return []
    point_wins, point_games, boot_wins, boot_games = _bootstrap(c, n_boot, seed)
    tail = (1 - CONFIDENCE) / 2 * 100
    rows = []
    for i in range(len(c.models)):
        for j in range(i + 1, len(c.models)):
            games = point_games[0, i, j]
            if not games:
                continue
            better, worse = (i, j) if point_wins[0, i, j] >= point_wins[0, j, i] else (j, i)
            with np.errstate(invalid="ignore", divide="ignore"):
                rates = boot_wins[:, better, worse] / boot_games[:, better, worse]
            rates = rates[np.isfinite(rates)]
            met = ((c.first == i) & (c.second == j)) | ((c.first == j) & (c.second == i))
            rows.append({"model": c.models[better], "opponent": c.models[worse],
                         "win_rate": round(float(point_wins[0, better, worse] / games), 4),
                         "win_rate_interval": [round(float(np.percentile(rates, q)), 4) for q in (tail, 100 - tail)],
                         "comparisons": int(games), "rankings": len(set(c.vote[met].tolist()))})
    return sorted(rows, key=lambda row: (-row["comparisons"], row["model"], row["opponent"]))


SETTLED_DIFFERENCE = 0.05  # the distance from an even split (a 0.55 win rate) the verdict says how to settle


def more_comparisons_to_settle(pair: Mapping, difference: float = SETTLED_DIFFERENCE) -> int:
    """About how many more comparisons of ``pair`` (a ``pair_win_rates`` row) would narrow its interval to
    +-``difference``, so that a win rate ``difference`` from 0.5 would no longer hold 0.5: an interval narrows as one
    over the square root of the comparisons, at the spread of those so far."""
    low, high = pair["win_rate_interval"]
    half_width = (high - low) / 2
    if half_width <= 0:  # every comparison alike so far: no spread to go by
        return 0
    return max(0, math.ceil(pair["comparisons"] * (half_width / difference) ** 2) - pair["comparisons"])


def verdict_in_words(pairs: Sequence[Mapping], min_comparisons: int = 0) -> list[str]:
    """Per pair of models (``pair_win_rates``): "`a` preferred" when the interval of a's win rate over b lies above
    0.5; else "not distinguishable from chance yet", with about how many more comparisons (and rankings, at the
    pair's comparisons per ranking so far) would settle a 5-point difference. A pair in fewer than
    ``min_comparisons`` comparisons says only that, as the public tables show no numbers before."""
    lines = []
    for pair in pairs:
        names = f"`{pair['model']}` vs `{pair['opponent']}`"
        if pair["comparisons"] < min_comparisons:
            lines.append(f"{names}: too few comparisons yet ({pair['comparisons']} of the {min_comparisons} "
                         "before numbers show).")
            continue
        numbers = f"win rate {pair['win_rate']:.3f} {_interval(pair['win_rate_interval'], 3)}"
        if pair["win_rate_interval"][0] > 0.5:
            lines.append(f"**`{pair['model']}` preferred** over `{pair['opponent']}`: {numbers}, interval above 0.5.")
            continue
        more = more_comparisons_to_settle(pair)
        per_ranking = pair["comparisons"] / pair["rankings"]
        lines.append(f"{names}: **not distinguishable from chance yet** ({numbers} holds 0.5); about {more} more "
                     f"comparisons (~{math.ceil(more / per_ranking)} rankings at {per_ranking:.1f} per ranking) "
                     f"would settle a {SETTLED_DIFFERENCE * 100:.0f}-point difference.")
    return lines


def with_minimum(rows: Sequence[Mapping], min_comparisons: int, preliminary_under: int = 0) -> list[dict]:
    """Leaderboard rows with ``too_few_votes`` and ``preliminary``: a model in fewer than ``min_comparisons``
    comparisons keeps its name and count, its numbers become None and it goes last; the others come by the lower
    end of their Bradley-Terry interval, highest first, ``preliminary`` under ``preliminary_under`` comparisons."""
    shown = [{**row, "too_few_votes": row["comparisons"] < min_comparisons,
              "preliminary": min_comparisons <= row["comparisons"] < preliminary_under} for row in rows]
    for row in shown:
        if row["too_few_votes"]:
            row.update(dict.fromkeys(NUMBERS))
    # stable: models with too few votes keep their order
    return sorted(shown, key=lambda row: (row["too_few_votes"], 0 if row["too_few_votes"] else -row["bt_interval"][0]))


@dataclass(frozen=True)
class Verdict:
    """The leaderboard from one source of rankings, overall and per prompt category."""

    source: str  # "human" or "auto"
    votes: int  # human: rankings; auto: tasks the ranker ranked
    rows: list[dict]
    by_category: dict[str, list[dict]] = field(default_factory=dict)
    left_out_votes: int = 0  # votes of annotators below the gold-accuracy threshold or flagged (annotate.hygiene)
    left_out_annotators: tuple[str, ...] = ()
    pairs: list[dict] = field(default_factory=list)  # ``pair_win_rates``


def model_votes(rankings: Iterable[Ranking], gold: Mapping[int, object]) -> list[Ranking]:
    """The usable votes on model tasks (gold tasks measure annotators, not models)."""
    return [r for r in rankings if usable(r) and r.task_id not in gold]


def auto_votes(task_clips: Mapping[int, Sequence[str]], clips: Mapping[str, Candidate],
               gold: Mapping[int, object]) -> dict[int, dict[str, int]]:
    """Task id -> the automatic ranker's ranking (by ``auto_score``, higher first, equal scores tied).

    Only model tasks whose clips all have a score.
    """
    votes = {}
    for task_id, ids in task_clips.items():
        scores = [clips[i].auto_score for i in ids]
        if task_id in gold or any(s is None for s in scores):
            continue
        distinct = sorted(set(scores), reverse=True)
        votes[task_id] = {clip_id: distinct.index(s) + 1 for clip_id, s in zip(ids, scores)}
    return votes


def informative(ranking: Ranking) -> bool:
    """A vote that tells some clip from another: usable (``usable``) and not every clip tied."""
    return usable(ranking) and len(set(ranking.ranks.values())) > 1


def published_rankings(rankings: Sequence[Ranking], gold: Mapping[int, object], every: int,
                       min_annotators: int = MIN_BATCH_ANNOTATORS) -> list[Ranking]:
    """The rankings (oldest first) as they stood when the last batch closed: what a public verdict shows, so that
    its change says nothing about one vote. A batch closes once it holds ``every`` informative model votes
    (``informative``; ties-only, all-bad and skips do not fill it) from at least ``min(min_annotators, every)``
    annotators. Every vote standing then stays (the gold-accuracy filter needs the gold ones).

    ``rankings`` holds the undone votes too (``Store.rankings(include_undone=True)``): a vote undone after its batch
    closed stays in what was published, as it stood (taking it out would show what it changed), and leaves the
    public results when the next batch closes; one undone before fills no batch."""
    events = sorted([(r.created_at, False, r.id, r) for r in rankings]
                    + [(r.undone_at, True, r.id, r) for r in rankings if r.undone_at is not None])
    standing: dict[int, Ranking] = {}
    batch: dict[int, str] = {}  # the informative model votes of the batch filling up -> their annotators
    published = None
    for _, undone, vote_id, ranking in events:
        if undone:
            standing.pop(vote_id, None)
            batch.pop(vote_id, None)
            continue
        standing[vote_id] = replace(ranking, undone_at=None)  # as it stood then
        if ranking.task_id not in gold and informative(standing[vote_id]):
            batch[vote_id] = ranking.annotator
            if len(batch) >= every and len(set(batch.values())) >= min(min_annotators, every):
                published, batch = list(standing.values()), {}
    return [] if published is None else sorted(published, key=lambda r: r.id)


def unpublished_votes(rankings: Sequence[Ranking], gold: Mapping[int, object], published: Sequence[Ranking]) -> int:
    """The informative model votes cast since the last published batch (``published_rankings``): how far the next
    batch has come."""
    last = max((r.id for r in published), default=0)
    return sum(1 for r in model_votes(rankings, gold) if informative(r) and r.id > last)


def compute_verdict(store: Store, source: str = "human", *, min_gold_accuracy: float | None = None,
                    category: Callable[[str], str | None] = prompt_category, n_boot: int = BOOTSTRAP_SAMPLES,
                    seed: int = 0, rankings: Sequence[Ranking] | None = None, include_flagged: bool = False,
                    demo_tasks: bool = False) -> Verdict:
    """The verdict of the human rankings (``rankings``, all the store holds when None) or of the automatic
    ranker, from what ``store`` holds now.

    With ``min_gold_accuracy``, the votes of annotators below it on gold tasks are left out, and unless
    ``include_flagged`` those of annotators ``annotate.hygiene`` flags (as the export leaves them out). Unless
    ``demo_tasks``, the tasks visitors sent from the Demo (``Store.sent_tasks``: they knew the models) are left out.
    """
    if source not in ("human", "auto"):
        raise ValueError(f"`source` must be 'human' or 'auto', got {source!r}")
    clips, gold = store.candidates(), store.gold_answers()
    model_of = {clip_id: clip.model for clip_id, clip in clips.items()}
    left_out, excluded = 0, ()
    if source == "human":
        kept, trust = counted_rankings(store.rankings() if rankings is None else rankings, gold, min_gold_accuracy,
                                       include_flagged)
        left_out, excluded = trust.left_out_votes, trust.left_out_annotators
        sent = set() if demo_tasks else store.sent_tasks()
        tasks = [(r.task_id, r.ranks) for r in model_votes(kept, gold) if r.task_id not in sent]
    else:
        tasks = list(auto_votes(store.task_clips(), clips, gold).items())
    prompt_of = {task_id: clips[next(iter(ranks))].prompt for task_id, ranks in tasks}
    groups: dict[str, list[Vote]] = {}
    for task_id, ranks in tasks:
        name = category(prompt_of[task_id])
        if name is not None:
            groups.setdefault(name, []).append(ranks)
    return Verdict(
        source=source,
        votes=len(tasks),
        rows=leaderboard([ranks for _, ranks in tasks], model_of, n_boot=n_boot, seed=seed),
        by_category={name: leaderboard(votes, model_of, n_boot=n_boot, seed=seed)
                     for name, votes in sorted(groups.items())},
        left_out_votes=left_out,
        left_out_annotators=excluded,
        pairs=pair_win_rates([ranks for _, ranks in tasks], model_of, n_boot=n_boot, seed=seed),
    )


def ranker_agreement(rankings: Iterable[Ranking], clips: Mapping[str, Candidate],
                     gold: Mapping[int, object]) -> dict:
    """How often the automatic ranker picks the human majority's winner.

    Over the strict-majority human pairs of model tasks whose two clips both have an
    ``auto_score``: ``pairs`` compared, ``agreed`` (the ranker scored the humans' choice
    higher), ``ties`` (equal scores, counted as not agreeing) and ``rate`` (None without pairs).
    """
    pairs = [p for p in aggregate_pairs(model_votes(rankings, gold))
             if clips[p.chosen].auto_score is not None and clips[p.rejected].auto_score is not None]
    agreed = sum(clips[p.chosen].auto_score > clips[p.rejected].auto_score for p in pairs)
    ties = sum(clips[p.chosen].auto_score == clips[p.rejected].auto_score for p in pairs)
    return {"pairs": len(pairs), "agreed": agreed, "ties": ties,
            "rate": round(agreed / len(pairs), 4) if pairs else None}


def _interval(values: Sequence[float], digits: int) -> str:
    return f"[{values[0]:.{digits}f}, {values[1]:.{digits}f}]"


def leaderboard_table(rows: Sequence[Mapping], min_comparisons: int = 0, preliminary_under: int = 0,
                      too_few: str = TOO_FEW_VOTES) -> str:
    """A Markdown table of leaderboard rows in ``with_minimum``'s order; a model in fewer than ``min_comparisons``
    comparisons shows ``too_few`` ("too few votes"; an automatic ranker casts none: "too few comparisons") instead of
    its numbers, one under ``preliminary_under`` is marked preliminary."""
    lines = ["| model | win rate | 95 % interval | Bradley-Terry | 95 % interval | comparisons |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {too_few} | | | | {r['comparisons']} |" if r["too_few_votes"] else
              f"| {r['model']}{f' ({PRELIMINARY})' if r['preliminary'] else ''} | {r['win_rate']:.3f} | "
              f"{_interval(r['win_rate_interval'], 3)} | {r['bt_score']:.0f} | "
              f"{_interval(r['bt_interval'], 0)} | {r['comparisons']} |"
              for r in with_minimum(rows, min_comparisons, preliminary_under)]
    return "\n".join(lines)


def verdict_markdown(verdicts: Sequence[Verdict], agreement: Mapping | None = None, min_comparisons: int = 0,
                     preliminary_under: int = 0) -> str:
    """The verdicts as Markdown: overall and per-category tables (numbers only for models in at least
    ``min_comparisons`` comparisons, marked preliminary under ``preliminary_under``: ``with_minimum``), and the
    ranker's agreement. Each verdict is first said in words, per pair of models (``verdict_in_words``)."""
    parts = []
    for verdict in verdicts:
        human = verdict.source == "human"
        who = "human rankings" if human else "the automatic ranker"
        if not verdict.rows:
            parts.append(f"**From {who}**: no comparisons between models yet.")
            continue
        note = (f"; {verdict.left_out_votes} vote(s) of {len(verdict.left_out_annotators)} annotator(s) below the "
                f"gold-accuracy threshold or flagged left out" if verdict.left_out_votes else "")
        counted = f"{verdict.votes} ranking(s)" if human else f"{verdict.votes} task(s) it ranked"
        too_few = TOO_FEW_VOTES if human else "too few comparisons"
        words = "".join(f"- {line}\n" for line in verdict_in_words(verdict.pairs, min_comparisons))
        parts.append(f"**From {who}** ({counted}{note}):\n\n{words}\n"
                     + leaderboard_table(verdict.rows, min_comparisons, preliminary_under, too_few))
        for name, rows in verdict.by_category.items():
            if rows:
                parts.append(f"*{verdict.source}, prompts of kind `{name}`*:\n\n"
                             + leaderboard_table(rows, min_comparisons, preliminary_under, too_few))
    if agreement is not None and agreement.get("pairs"):
        parts.append(f"**Automatic ranker vs the human majority**: same winner in {agreement['agreed']} of "
                     f"{agreement['pairs']} pairs ({agreement['rate']:.0%}).")
    return "\n\n".join(parts)

