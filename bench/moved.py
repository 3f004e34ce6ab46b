"""The forwarding left at a research script's old path: ``bench/X.py`` moved to ``experiments/X.py`` (issue 30).

Each old path is three lines that call :func:`run_moved`; the old command line keeps working for one release, its
flags unchanged, and says on stderr where the script went.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_moved(old_file: str) -> None:
    """Say where ``old_file`` moved, then run ``experiments/<its name>`` as ``python experiments/<name>`` would."""
    name = Path(old_file).name
    new = ROOT / "experiments" / name
    print(f"bench/{name} moved to experiments/{name}; this path goes in the next release", file=sys.stderr)
    sys.argv[0] = str(new)
    sys.path[0] = str(new.parent)  # the script's folder first, as for `python experiments/<name>` (sibling imports)
    runpy.run_path(str(new), run_name="__main__")
