"""The Dataset tab: who may use it, what the dataset looks like, export and push."""

from __future__ import annotations

from dataclasses import dataclass

from annotate import Store
from annotate.export import ExportResult, export_human_pairs, push_to_hub
from annotate.pairs import aggregate_pairs
from annotate.stats import dataset_stats

from .config import StudioConfig
from .identity import IdentityError

PREVIEW_PAIRS = 3


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

    def as_markdown(self) -> str:
        s = self.stats
        alpha = s["krippendorff_alpha_ordinal"]
        return "\n".join([
            f"- **tasks**: {s['tasks']} ({s['tasks_at_target']} at target overlap, {s['tasks_untouched']} untouched)",
            f"- **votes**: {s['votes']} ({s['skipped']} skipped, {s['all_bad']} all bad)",
            f"- **preference pairs** (majority, margin >= 1): {self.pairs}",
            f"- **agreement** (Krippendorff's alpha, ordinal): {'n/a' if alpha is None else f'{alpha:.3f}'}",
        ])

    def annotator_rows(self) -> list[list]:
        """[name, votes, skipped, all bad, agreement with the others' majority, pairs compared]."""
        return [[name, row["votes"], row["skipped"], row["all_bad"],
                 None if row["agreement"] is None else round(row["agreement"], 3), row["compared"]]
                for name, row in sorted(self.stats["annotators"].items())]


ANNOTATOR_COLUMNS = ["annotator", "votes", "skipped", "all bad", "agreement", "pairs compared"]


def dataset_overview(store: Store, preview: int = PREVIEW_PAIRS) -> DatasetOverview:
    """Counts, agreement, per-annotator rows and the strongest pairs with their audio."""
    pairs = aggregate_pairs(store.rankings())
    shown = pairs[:preview]
    clips = store.candidates({clip_id for pair in shown for clip_id in (pair.chosen, pair.rejected)})
    return DatasetOverview(
        stats=dataset_stats(store),
        pairs=len(pairs),
        preview=[PairPreview(clips[p.chosen].prompt, clips[p.chosen].audio_path, clips[p.rejected].audio_path,
                             clips[p.chosen].model, clips[p.rejected].model, p.votes_for, p.votes_against)
                 for p in shown],
    )


def export_dataset(store: Store, config: StudioConfig) -> ExportResult:
    """``python -m annotate export`` into ``<data dir>/export`` (raises ``EmptyDataset`` with no pairs yet)."""
    return export_human_pairs(store, config.export_dir)


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
