"""The console commands ``pip install .`` makes (pyproject.toml's ``[project.scripts]``).

``tango-studio`` and ``tango-train-dpo`` run ``app.py`` and ``train_dpo.py`` exactly as ``python app.py``
and ``python train_dpo.py`` do, as ``__main__``: those files read and check their flags before they
import torch, gradio and diffusers, which an ordinary import of them would load first, so ``--help``
answers in a second either way. (``tango-annotate`` is ``annotate.__main__.main`` itself: its
heavy imports already wait for the subcommand.)
"""

import runpy
import sys
from pathlib import Path

COMMAND_PREFIX = "tango-"


def program_name(from_source: str) -> str:
    """What ``--help`` calls the program: the console command that started it, else ``from_source``
    (e.g. "python app.py")."""
    name = Path(sys.argv[0]).name
    return name if name.startswith(COMMAND_PREFIX) else from_source


def studio() -> None:
    runpy.run_module("app", run_name="__main__")  # sys.argv[0] stays the command: --help names it


def train_dpo() -> None:
    runpy.run_module("train_dpo", run_name="__main__")  # sys.argv[0] stays the command: --help names it
