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
certain); its row says "too few votes" instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .gold import trusted_rankings
from .pairs import aggregate_pairs, ordered_pairs, usable
from .store import Candidate, Ranking, Store

BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95
PRIOR_TIES = 1.0
ELO_BASE, ELO_SCALE = 1000.0, 400.0
MM_ITERATIONS = 500
AUTO_RANKER = "auto-ranker"
TOO_FEW_VOTES = "too few votes"
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
    point_wins, point_games = _tables(c, np.ones((1, len(c.score))))
    rate, score = _win_rates(point_wins, point_games)[0], bradley_terry(point_wins, point_games, prior)[0]
    # Resample whole votes: a vote drawn twice counts its comparisons twice.
    draws = np.random.default_rng(seed).integers(0, c.votes, (n_boot, c.votes))
    counts = np.zeros((n_boot, c.votes))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1)
    boot_wins, boot_games = _tables(c, counts[:, c.vote])
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


def with_minimum(rows: Sequence[Mapping], min_comparisons: int) -> list[dict]:
    """Leaderboard rows with ``too_few_votes``: a model in fewer than ``min_comparisons`` comparisons keeps its name
    and count, its numbers become None and it goes after the models that have enough (strongest first)."""
    shown = [{**row, "too_few_votes": row["comparisons"] < min_comparisons} for row in rows]
    for row in shown:
        if row["too_few_votes"]:
            row.update(dict.fromkeys(NUMBERS))
    return sorted(shown, key=lambda row: row["too_few_votes"])  # stable: each group keeps its order


@dataclass(frozen=True)
class Verdict:
    """The leaderboard from one source of rankings, overall and per prompt category."""

    source: str  # "human" or "auto"
    votes: int
    rows: list[dict]
    by_category: dict[str, list[dict]] = field(default_factory=dict)
    left_out_votes: int = 0  # votes of annotators below the gold-accuracy threshold
    left_out_annotators: tuple[str, ...] = ()


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


def published_rankings(rankings: Sequence[Ranking], gold: Mapping[int, object], every: int) -> list[Ranking]:
    """The rankings (oldest first) as they stood after the last whole batch of ``every`` usable model votes:
    what a public verdict shows, so that its change after a vote says nothing about that one vote.
    Gold votes up to that point stay (the gold-accuracy filter needs them)."""
    counted = model_votes(rankings, gold)
    published = len(counted) - len(counted) % every
    if not published:
        return []
    last = counted[published - 1].id
    return [r for r in rankings if r.id <= last]


def compute_verdict(store: Store, source: str = "human", *, min_gold_accuracy: float | None = None,
                    category: Callable[[str], str | None] = prompt_category, n_boot: int = BOOTSTRAP_SAMPLES,
                    seed: int = 0, rankings: Sequence[Ranking] | None = None) -> Verdict:
    """The verdict of the human rankings (``rankings``, all the store holds when None) or of the automatic
    ranker, from what ``store`` holds now.

    With ``min_gold_accuracy``, the votes of annotators below it on gold tasks are left out
    (as the export leaves them out).
    """
    if source not in ("human", "auto"):
        raise ValueError(f"`source` must be 'human' or 'auto', got {source!r}")
    clips, gold = store.candidates(), store.gold_answers()
    model_of = {clip_id: clip.model for clip_id, clip in clips.items()}
    left_out, excluded = 0, ()
    if source == "human":
        kept, trust = trusted_rankings(store.rankings() if rankings is None else rankings, gold, min_gold_accuracy)
        left_out, excluded = trust.left_out_votes, trust.left_out_annotators
        tasks = [(r.task_id, r.ranks) for r in model_votes(kept, gold)]
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


def leaderboard_table(rows: Sequence[Mapping], min_comparisons: int = 0) -> str:
    """A Markdown table of leaderboard rows; a model in fewer than ``min_comparisons`` comparisons shows
    "too few votes" instead of its numbers (``with_minimum``)."""
    lines = ["| model | win rate | 95 % interval | Bradley-Terry | 95 % interval | comparisons |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {TOO_FEW_VOTES} | | | | {r['comparisons']} |" if r["too_few_votes"] else
              f"| {r['model']} | {r['win_rate']:.3f} | {_interval(r['win_rate_interval'], 3)} | {r['bt_score']:.0f} | "
              f"{_interval(r['bt_interval'], 0)} | {r['comparisons']} |" for r in with_minimum(rows, min_comparisons)]
    return "\n".join(lines)


def verdict_markdown(verdicts: Sequence[Verdict], agreement: Mapping | None = None, min_comparisons: int = 0) -> str:
    """The verdicts as Markdown: overall and per-category tables (numbers only for models in at least
    ``min_comparisons`` comparisons, ``with_minimum``), and the ranker's agreement."""
    parts = []
    for verdict in verdicts:
        who = "human rankings" if verdict.source == "human" else "the automatic ranker"
        if not verdict.rows:
            parts.append(f"**From {who}**: no comparisons between models yet.")
            continue
        note = (f" ({verdict.left_out_votes} vote(s) of {len(verdict.left_out_annotators)} annotator(s) below the "
                f"gold-accuracy threshold left out)" if verdict.left_out_votes else "")
        parts.append(f"**From {who}** ({verdict.votes} ranked task(s){note}):\n\n"
                     + leaderboard_table(verdict.rows, min_comparisons))
        for name, rows in verdict.by_category.items():
            if rows:
                parts.append(f"*{verdict.source}, prompts of kind `{name}`*:\n\n"
                             + leaderboard_table(rows, min_comparisons))
    if agreement is not None and agreement.get("pairs"):
        parts.append(f"**Automatic ranker vs the human majority**: same winner in {agreement['agreed']} of "
                     f"{agreement['pairs']} pairs ({agreement['rate']:.0%}).")
    return "\n\n".join(parts)

