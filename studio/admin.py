"""The Dataset tab (who may use it, what the dataset looks like, export, its download and push) and the public
results."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq

from annotate import Store
from annotate.clips import clip_path
from preference_data.dataset import export_lock
from annotate.export import ExportResult, export_human_pairs, push_to_hub
from annotate.pairs import aggregate_pairs
from annotate.stats import dataset_stats
from annotate.pool import PipelineGenerator, PoolReport, build_pool
from annotate.store import WithdrawnTask
from annotate.validation import prompt_lines
from annotate.verdict import (MIN_BATCH_ANNOTATORS, PRELIMINARY, TOO_FEW_VOTES, Verdict, compute_verdict,
                              published_rankings, ranker_agreement, unpublished_votes, verdict_markdown, with_minimum)

from .config import StudioConfig
from .forest import forest_plot
from .generation import LoadedModel
from .identity import IdentityError

PREVIEW_PAIRS = 3  # pairs the Dataset tab plays: the strongest so far, or the first of an export


def verdict_options(config: StudioConfig) -> dict:
    """Which votes every verdict of the app counts (``compute_verdict``): the gold threshold, flagged annotators
    (``annotate.hygiene``) left out unless --include-flagged, Demo-sent tasks unless --verdict-demo-tasks."""
    return {"min_gold_accuracy": config.min_gold_accuracy, "include_flagged": config.include_flagged,
            "demo_tasks": config.verdict_demo_tasks}


def require_admin(name: str, config: StudioConfig) -> None:
    """Raise ``IdentityError`` unless ``name`` is one of the configured admins."""
    if not config.admins:
        raise IdentityError("the Dataset tab is disabled: no admins are configured (--admins / TANGO_ADMINS)")
    if name not in config.admins:
        raise IdentityError(f"{name!r} is not an admin of this app; the Dataset tab is for admins only")


@dataclass(frozen=True)
class PairPreview:
    prompt: str
    chosen_audio: str
    rejected_audio: str
    chosen_model: str
    rejected_model: str
    votes_for: int
    votes_against: int


@dataclass(frozen=True)
class DatasetOverview:
    stats: dict
    pairs: int
    preview: list[PairPreview]
    verdicts: list[Verdict]
    agreement: dict  # the automatic ranker vs the human majority
    min_gold_accuracy: float | None = None
    withdrawn: tuple[WithdrawnTask, ...] = ()  # tasks no longer handed out: a clip could not be read

    def as_markdown(self) -> str:
        s = self.stats
        alpha = s["krippendorff_alpha_ordinal"]
        return "\n".join([
            f"- **tasks**: {s['tasks']} ({s['tasks_at_target']} ranked by {s['target_overlap']} annotators, the target; "
            f"{s['tasks_untouched']} untouched); {s['gold_tasks']} gold task(s)",
            f"- **votes**: {s['votes']} ({s['skipped']} skipped, {s['all_bad']} all bad; {s['undone']} more undone "
            "by their annotators, left out everywhere)",
            f"- **preference pairs** (majority, margin >= 1): {self.pairs}",
            f"- **agreement** (Krippendorff's alpha, ordinal): {'n/a' if alpha is None else f'{alpha:.3f}'}",
            "- **gold accuracy threshold**: " + ("none (every annotator counts)" if self.min_gold_accuracy is None
                                                 else f"{self.min_gold_accuracy:.0%}"),
            f"- **withdrawn tasks** (a clip could not be read; no longer handed out): {len(self.withdrawn)}"
            + "".join(f"\n  - task {w.task_id} ({w.prompt}): {w.reason}" for w in self.withdrawn),
            "",
            verdict_markdown(self.verdicts, self.agreement),
        ])

    def annotator_rows(self) -> list[list]:
        """[name, votes, skipped, all bad, agreement with the others' majority, pairs compared, gold accuracy,
        gold answered, first-shown clip wins (position bias), median seconds per vote, votes in the busiest hour,
        flags (``annotate.hygiene``; "" when none)]."""
        return [[name, row["votes"], row["skipped"], row["all_bad"],
                 None if row["agreement"] is None else round(row["agreement"], 3), row["compared"],
                 None if row["gold_accuracy"] is None else round(row["gold_accuracy"], 3), row["gold_answered"],
                 row["first_shown_wins"], row["median_s_per_vote"], row["busiest_hour"], ", ".join(row["flags"])]
                for name, row in sorted(self.stats["annotators"].items())]


ANNOTATOR_COLUMNS = ["annotator", "votes", "skipped", "all bad", "agreement", "pairs compared", "gold accuracy",
                     "gold answered", "first shown wins", "median s per vote", "busiest hour (votes)", "flagged"]


def dataset_overview(store: Store, config: StudioConfig, preview: int = PREVIEW_PAIRS) -> DatasetOverview:
    """Counts, agreement, the verdicts, per-annotator rows (gold accuracy too), the withdrawn tasks and the
    strongest pairs whose clips can be played."""
    rankings, gold = store.rankings(), store.gold_answers()
    pairs = aggregate_pairs(r for r in rankings if r.task_id not in gold)
    clips = store.candidates()
    shown = list(islice((p for p in pairs if Path(clips[p.chosen].audio_path).is_file()
                         and Path(clips[p.rejected].audio_path).is_file()), preview))
    return DatasetOverview(
        stats=dataset_stats(store),
        pairs=len(pairs),
        preview=[PairPreview(clips[p.chosen].prompt, clips[p.chosen].audio_path, clips[p.rejected].audio_path,
                             clips[p.chosen].model, clips[p.rejected].model, p.votes_for, p.votes_against)
                 for p in shown],
        verdicts=[compute_verdict(store, source, **verdict_options(config))
                  for source in ("human", "auto")],
        agreement=ranker_agreement(rankings, clips, gold),
        min_gold_accuracy=config.min_gold_accuracy,
        withdrawn=tuple(store.withdrawn_tasks()),
    )


def public_rankings(store: Store, config: StudioConfig) -> list:
    """The human rankings the public results show: as of the last whole batch of ``config.leaderboard_every``
    informative model votes from several annotators (``annotate.verdict.published_rankings``), so no single
    vote's effect can be read off them (nor an undo's: a published vote leaves them with the next batch)."""
    return published_rankings(store.rankings(include_undone=True), store.gold_answers(), config.leaderboard_every)


def leaderboard(store: Store, config: StudioConfig) -> list[dict]:
    """``/leaderboard``: per model (by the lower end of the Bradley-Terry interval, highest first) ``model``,
    ``win_rate``, ``win_rate_interval``, ``bt_score``, ``bt_interval``, ``comparisons``, ``too_few_votes``,
    ``preliminary``, from the published human rankings (``public_rankings``; gold-accuracy threshold applied); a
    model in fewer than ``config.min_comparisons`` comparisons comes last, its numbers None; one in fewer than
    ``config.preliminary_under`` is marked preliminary (``with_minimum``)."""
    return with_minimum(compute_verdict(store, "human", **verdict_options(config),
                                        rankings=public_rankings(store, config)).rows, config.min_comparisons,
                        config.preliminary_under)


def results_markdown(store: Store, config: StudioConfig) -> str:
    """The public Results view: the verdicts with the models named (the Annotate tab never names them), from the
    published human rankings (``public_rankings``)."""
    rankings = public_rankings(store, config)
    verdicts = [compute_verdict(store, source, **verdict_options(config), rankings=rankings)
                for source in ("human", "auto")]
    agreement = ranker_agreement(rankings, store.candidates(), store.gold_answers())
    waiting = unpublished_votes(store.rankings(), store.gold_answers(), rankings)
    annotators = min(MIN_BATCH_ANNOTATORS, config.leaderboard_every)
    batch = (f"**{'Next update' if rankings else 'First results'}**: "
             + (f"{waiting} of {config.leaderboard_every} votes in.\n\n" if waiting < config.leaderboard_every else
                f"{waiting} votes in, waiting for votes of {annotators} different annotators.\n\n"))
    return ("Which model do the blind rankings prefer? Win rate over head-to-head clip pairs (two clips of "
            "different models in one ranking; ties count half) and Bradley-Terry score (Elo scale, 1000 = "
            "average), with 95 % bootstrap intervals; models come by the lower end of that interval. The human "
            f"results are updated after every {config.leaderboard_every} rankings that tell clips apart (ties-only "
            f"and all-bad votes do not fill a batch), from at least {min(MIN_BATCH_ANNOTATORS, config.leaderboard_every)} "
            f"annotators, not after each one. A model's numbers show once it was in {config.min_comparisons} "
            f"comparisons; before, its row says \"{TOO_FEW_VOTES}\"; under {config.preliminary_under} they are "
            f"marked {PRELIMINARY}.\n\n"
            + batch + verdict_markdown(verdicts, agreement, config.min_comparisons, config.preliminary_under))


def results_forest(store: Store, config: StudioConfig) -> str:
    """The Results tab's forest plot (``studio.forest``): per pair of models, the published human rankings' win rate
    and the automatic ranker's, each with its interval; pairs under ``config.min_comparisons`` left out."""
    rankings = public_rankings(store, config)
    return forest_plot([(title, compute_verdict(store, source, **verdict_options(config),
                                                rankings=rankings).pairs)
                        for source, title in (("human", "From human rankings"), ("auto", "From the automatic ranker"))],
                       config.min_comparisons)


def export_dataset(store: Store, config: StudioConfig) -> ExportResult:
    """``python -m annotate export`` into ``<data dir>/export`` (raises ``EmptyDataset`` with no pairs yet)."""
    return export_human_pairs(store, config.export_dir, min_gold_accuracy=config.min_gold_accuracy,
                              include_flagged=config.include_flagged)


NO_TASKS_HINT = ("**No tasks yet.** Tasks come from the Demo tab (generate, then \"Send these clips to "
                 "annotation\"), from an admin's \"Make tasks\" on the Dataset tab, or from the command line: "
                 "`python -m annotate pool --data-dir <this app's --data-dir> --prompts prompts.txt`. Press Next task "
                 "again once some are made.")


def make_pool(store: Store, models: list[LoadedModel], prompts_text: str, k: int) -> PoolReport:
    """The Dataset tab's Make tasks: ``annotate.pool.build_pool`` (``k`` clips per prompt per model, one ranking task
    per prompt; what is already stored is reused) over the prompts of ``prompts_text`` (a prompts file's format,
    ``annotate.validation.prompt_lines``) with the app's loaded models, whose pipelines are already in memory. Its
    tqdm bar reports the clips made (a handler's ``gr.Progress(track_tqdm=True)`` shows it)."""
    prompts = prompt_lines(prompts_text or "")
    if not prompts:
        raise ValueError("no prompts: write one per line (blank lines and lines starting with # are ignored)")
    pipes = {model.spec: model.pipe for model in models if model.pipe is not None}
    if not pipes:
        raise ValueError("no model is loaded, so no clips can be made: see the Demo tab's columns for why")
    return build_pool(store, prompts, list(pipes), k=k,
                      make_generator=lambda spec: PipelineGenerator(spec, pipe=pipes[spec]))


def describe_pool(report: PoolReport) -> str:
    return (f"**{len(report.task_ids)} task(s) ready** on the Annotate tab ({report.generated} clip(s) made, "
            f"{report.reused} already stored).")


def export_zip(export_dir: Path, zip_path: Path) -> Path:
    """The export folder as one zip: its card (README.md) and ``data/*.parquet``, laid out as in the folder, so the
    unzipped folder loads with ``datasets.load_dataset``. The shards are read under the export's lock: a
    background push's re-export cannot swap the folder out half-way."""
    # Stored, not deflated: the shards' audio hardly shrinks, and a large export zips at disk speed.
    with export_lock(export_dir), zipfile.ZipFile(zip_path, "w") as archive:
        archive.write(export_dir / "README.md", "README.md")
        for shard in sorted((export_dir / "data").glob("*.parquet")):
            archive.write(shard, f"data/{shard.name}")
    return zip_path


def export_download(result: ExportResult, downloads_dir: Path) -> Path:
    """``result``'s export zipped into ``downloads_dir`` (outside the data folder: the app serves nothing from there),
    named after the export; the zips of earlier exports there go, as the export folder keeps only the latest."""
    downloads_dir.mkdir(parents=True, exist_ok=True)
    for earlier in downloads_dir.glob("*.zip"):
        earlier.unlink(missing_ok=True)
    return export_zip(result.out_dir, downloads_dir / f"tango-preferences-export-{result.export_id}.zip")


PREVIEW_COLUMNS = ["prompt", "chosen_model", "rejected_model", "votes_for", "votes_against", "chosen.path",
                   "rejected.path"]  # the clips' file names only: their audio stays unread


def exported_rows(export_dir: Path, columns: list[str]) -> Iterator[dict]:
    """The export's rows in order (shard by shard), ``columns`` only (a nested field by its dotted path)."""
    for shard in sorted((export_dir / "data").glob("*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=64, columns=columns):
            yield from batch.to_pylist()


def export_preview(store: Store, export_dir: Path, count: int = PREVIEW_PAIRS) -> list[PairPreview]:
    """The first ``count`` pairs of the export at ``export_dir`` (what its zip holds) whose clips the store still
    has, each played from the store's file: the dataset names a clip by its content hash, as the store files it."""
    previews = []
    with export_lock(export_dir):  # as export_zip: no re-export swaps the folder out half-way
        for row in exported_rows(export_dir, PREVIEW_COLUMNS):
            chosen, rejected = (clip_path(store.audio_dir, Path(row[side]["path"]).stem)
                                for side in ("chosen", "rejected"))
            if chosen.is_file() and rejected.is_file():
                previews.append(PairPreview(row["prompt"], str(chosen), str(rejected), row["chosen_model"],
                                            row["rejected_model"], row["votes_for"], row["votes_against"]))
            if len(previews) == count:
                break
    return previews


def describe_export(result: ExportResult) -> str:
    alpha = "n/a" if result.alpha is None else f"{result.alpha:.3f}"
    return (f"Export {result.export_id}: **{result.summary.rows} pairs** in {result.summary.shards} shard(s) written to "
            f"`{result.out_dir}` (Krippendorff's alpha {alpha}).")


def hub_url(repo_id: str) -> str:
    return f"https://huggingface.co/datasets/{repo_id}"


def push_dataset(store: Store, config: StudioConfig) -> str:
    """Upload the latest export to the configured dataset repo; return the repo's URL."""
    if not config.hub_dataset:
        raise ValueError("no Hub dataset configured: start the app with --hub-dataset owner/name (or TANGO_HUB_DATASET)")
    exports = store.exports()
    if not exports:
        raise ValueError("nothing exported yet: press Export first")
    push_to_hub(exports[-1].out_dir, config.hub_dataset)
    return hub_url(config.hub_dataset)
