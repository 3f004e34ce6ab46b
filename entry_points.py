"""The console commands ``pip install .`` makes (pyproject.toml's ``[project.scripts]``).

``tango-studio``, ``tango-train-dpo`` and ``tango-train-grpo`` run ``app.py``, ``train_dpo.py`` and
``train_grpo.py`` exactly as ``python app.py`` and ``python train_dpo.py`` do, as ``__main__``: those files read and check their flags before they
import torch, gradio and diffusers, which an ordinary import of them would load first, so ``--help``
answers in a second either way. (``tango-annotate`` runs ``annotate.__main__.main``: its heavy imports
already wait for the subcommand.)
"""

import runpy
import sys
from pathlib import Path


def studio() -> None:
    import studio.config

    studio.config.PROG = Path(sys.argv[0]).name  # --help names the command
    runpy.run_module("app", run_name="__main__")


def annotate() -> None:
    import annotate.__main__ as cli

    cli.PROG = Path(sys.argv[0]).name
    sys.exit(cli.main())


def train_dpo() -> None:
    runpy.run_module("train_dpo", run_name="__main__")  # argparse names the command itself (sys.argv[0])


def train_grpo() -> None:
    runpy.run_module("train_grpo", run_name="__main__")
