"""The app's logic, testable without a browser: configuration, side-by-side generation,
spectrograms, annotation sessions, identity and the admin's dataset view.

``app.py`` declares the Gradio UI and wires these together; nothing here draws a page.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from annotate import Store

from .annotation import AnnotationSession
from .config import StudioConfig, parse_config
from .generation import Generation, GenerationSettings, LoadedModel, generate_both, load_models
from .identity import read_auth_file, resolve_name
from .limits import GenerationGate
from .serving import ClipServer


class Studio:
    """One app's state: the two models, the annotation store, the play log and where clips go.

    ``identity_mode`` is ``password`` with an auth file, ``oauth`` on a Space, else ``name``
    (see ``studio.identity``).
    """

    def __init__(self, config: StudioConfig, models: list[LoadedModel] | None = None):
        self.config = config
        self.users = read_auth_file(config.auth_file) if config.auth_file else None
        self.models = load_models(config) if models is None else models
        self.store = Store(config.data_dir)
        self.generated_dir = Path(tempfile.mkdtemp(prefix="tango-studio-"))
        # Clips leave the data folder only as copies with random names (see studio.serving).
        self.clip_server = ClipServer(self.generated_dir / "served")
        self.annotation = AnnotationSession(self.store, self.clip_server.serve)
        self.gate = GenerationGate(config.generate_queue, config.generate_per_minute)
        if self.users is not None:
            self.identity_mode = "password"
        elif os.environ.get("SPACE_ID"):
            self.identity_mode = "oauth"
        else:
            self.identity_mode = "name"

    def who(self, typed: str | None, username: str | None, oauth_username: str | None) -> str:
        """The name of whoever sent a request (see ``studio.identity.resolve_name``)."""
        return resolve_name(self.identity_mode, typed=typed, username=username, oauth_username=oauth_username)

    def generate(self, settings: GenerationSettings, progress: Callable[[float, str], None] | None = None) -> Generation:
        return generate_both(self.models, settings, self.generated_dir, progress)


__all__ = ["Studio", "StudioConfig", "parse_config"]
