"""The old paths of modules that left ``annotate`` (kept for one release): ``python -m annotate.X`` still runs the
command, saying where it went, and ``import annotate.X`` gets the module at its new place."""

from __future__ import annotations

import importlib
import runpy
import sys


def forward(name: str, old: str, new: str, command: str) -> None:
    """Called by the module ``old`` with its ``__name__``: run ``new`` as ``__main__`` when ``old`` was run, else
    stand in for it in ``sys.modules``. ``command`` is how to run it now (said on standard error)."""
    if name == "__main__":
        print(f"note: `python -m {old}` moved to `{command}`; the old path goes in the next release",
              file=sys.stderr)
        runpy.run_module(new, run_name="__main__", alter_sys=True)
    else:
        sys.modules[old] = importlib.import_module(new)
