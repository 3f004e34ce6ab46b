"""The app's logic, testable without a browser: configuration, side-by-side generation,
spectrograms, annotation sessions, identity and the admin's dataset view.

``app.py`` declares the Gradio UI and wires these together; nothing here draws a page.
``Studio`` (``studio.state``) loads on first use: ``studio.config`` reads and checks the
flags, and ``python app.py --help`` answers, before torch, diffusers and gradio load.
"""

from importlib import import_module

from .config import StudioConfig, parse_config

__all__ = ["Studio", "StudioConfig", "parse_config"]


def __getattr__(name: str):
    if name != "Studio":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return import_module(".state", __name__).Studio
