"""The Studio: one running app's models, annotation store, clip server and limits, built from a ``StudioConfig``."""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from annotate import Store, UnusableStore
from autopairs.autorank import JudgeRanker, score_unscored
from annotate.export import PushError, ScheduledPush, restore_from_hub

from .admin import export_dataset
from .annotation import AnnotationSession
from .config import StudioConfig
from .generation import Generation, GenerationSettings, LoadedModel, generate_both, load_models, send_to_annotation
from .identity import read_auth_file, resolve_name
from .limits import GenerationGate
from .secret import server_secret
from .serving import ClipServer

logger = logging.getLogger(__name__)

# Why a Studio may not start, said in one line: the data folder's store or the Hub backup is unusable
# (BackupRefused is an UnusableStore), or the Hub could not be read for the restore.
START_REFUSALS = (UnusableStore, PushError)


class Studio:
    """One app's state: the two models, the annotation store, the play log and where clips go.

    ``identity_mode`` is ``password`` with an auth file, ``oauth`` on a Space, else ``name``
    (see ``studio.identity``).

    With ``config.push_every`` (and a Hub dataset), a data folder whose store holds nothing
    first gets the last backup back from the Hub (checked first: a bad one stops the start),
    then a background ``ScheduledPush`` exports and backs the store up every ``push_every``
    minutes, never over a backup holding more (unless ``allow_shrinking_backup``).
    ``hub_api`` replaces ``HfApi`` (tests).
    With sound-world models, the judge scores every clip stored (``auto_score``): the
    automatic verdict and ``informative_first`` use it.
    """

    def __init__(self, config: StudioConfig, models: list[LoadedModel] | None = None, hub_api=None):
        self.config = config
        self.users = read_auth_file(config.auth_file) if config.auth_file else None
        self.models = load_models(config) if models is None else models
        if config.push_every is not None:
            restored = restore_from_hub(config.data_dir, config.hub_dataset, api=hub_api)
            if restored is not None:
                logger.info("restored %d votes from the backup in %s", restored, config.hub_dataset)
        self.store = Store(config.data_dir, informative_first=config.informative_first,
                           min_heard_fraction=config.min_heard_fraction)
        self.secret = server_secret(config.data_dir)
        self.ranker = self._automatic_ranker()
        self.score_clips()
        self.scheduled_push = None
        if config.push_every is not None:
            self.scheduled_push = ScheduledPush(
                config.export_dir, config.hub_dataset, every=config.push_every, api=hub_api, store=self.store,
                before_push=lambda: export_dataset(self.store, config),
                allow_shrinking_backup=config.allow_shrinking_backup)
        self.generated_dir = Path(tempfile.mkdtemp(prefix="tango-studio-"))  # removed by close (at exit too)
        atexit.register(self.close)
        # Clips leave the data folder only as copies with random names (see studio.serving).
        self.clip_server = ClipServer(self.generated_dir / "served", self.store.audio_dir,
                                      max_bytes=config.max_served_mb << 20)
        self.annotation = AnnotationSession(self.store, self.secret, self.clip_server.serve)
        self.gate = GenerationGate(config.generate_queue, config.generate_per_minute)
        if self.users is not None:
            self.identity_mode = "password"
        elif os.environ.get("SPACE_ID"):
            self.identity_mode = "oauth"
        else:
            self.identity_mode = "name"
        if self.identity_mode == "name" and config.admins:
            logger.warning("admins (%s) are recognised by the name typed, which nothing checks: anyone who types "
                           "one can export and push; use --auth-file (or a Space's log-in) where others can reach "
                           "this app", ", ".join(sorted(config.admins)))

    @property
    def device(self):
        """Where generation runs: the first loaded model's device (the CPU when none loaded)."""
        import torch

        pipes = [m.pipe for m in self.models if m.pipe is not None]
        return pipes[0].device if pipes else torch.device("cpu")

    def sender_tokens(self, session: str | None, *visitors: str) -> list[str]:
        """Who is asking, as the store keeps the senders of Demo tasks: keyed hashes (no address is stored) of their
        gradio session and of their visitor keys (``studio.limits.visitor_of``: a log-in name, an address)."""
        keys = [("session", session), *(("visitor", visitor) for visitor in visitors)]
        return [hmac.new(self.secret, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()[:32]
                for kind, value in keys if value]

    def who(self, typed: str | None, username: str | None, oauth_username: str | None) -> str:
        """The name of whoever sent a request (see ``studio.identity.resolve_name``)."""
        return resolve_name(self.identity_mode, typed=typed, username=username, oauth_username=oauth_username)

    def _automatic_ranker(self):
        """The owner's preference model, else the judge for sound-world models, else none (human verdict only)."""
        if self.config.reward_model is not None:
            from preference.reward import PreferenceModel

            return PreferenceModel.from_pretrained(self.config.reward_model)
        return JudgeRanker() if any(m.is_sound_world for m in self.models) else None

    def ranker_summary(self) -> str:
        """One line for the Dataset tab: who scores the clips, and for a learned model what it saw and how well."""
        if self.ranker is None:
            return "Automatic ranker: none (no sound-world model, no --reward-model)"
        report = getattr(self.ranker, "report", None)
        if getattr(self.ranker, "name", "") != "reward":
            return "Automatic ranker: the sound world's judge (exact)"
        if report is None:
            return f"Automatic ranker: preference model {self.config.reward_model} (no training record)"
        measured = "; ".join(f"{name}: pair accuracy {result['accuracy']:.3f} [{result['interval'][0]:.3f}, "
                             f"{result['interval'][1]:.3f}]" for name, result in report.evaluations.items())
        return (f"Automatic ranker: preference model trained {report.trained_at} on {report.comparisons} comparisons "
                f"({report.prompts} prompts, {report.source}); held-out prompts: pair accuracy "
                f"{report.validation_accuracy}" + (f"; {measured}" if measured else "")
                + (f"; hears clips through {report.reads_through}" if report.reads_through else ""))

    def generate(self, settings: GenerationSettings, progress: Callable[[float, str], None] | None = None) -> Generation:
        return generate_both(self.models, settings, self.generated_dir, progress, secret=self.secret)

    def send_to_annotation(self, generation: Generation, senders: list[str] = ()) -> int:
        """Store a generation's clips as one ranking task (scored by the ranker), never given to ``senders``
        (``sender_tokens``); return its id."""
        task_id = send_to_annotation(self.store, generation, senders)
        self.score_clips()
        return task_id

    def score_clips(self) -> int:
        """Give the stored clips that have none an automatic score (sound-world models: the judge)."""
        return 0 if self.ranker is None else score_unscored(self.store, self.ranker)

    def close(self) -> None:
        """Stop the background pushes (a last one still runs at interpreter exit) and remove the app's temporary
        folder (generated and served clips). Called again at interpreter exit: safe to call twice."""
        if self.scheduled_push is not None:
            self.scheduled_push.stop()
        shutil.rmtree(self.generated_dir, ignore_errors=True)

