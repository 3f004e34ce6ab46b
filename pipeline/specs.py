"""Model specs without loading anything: which names exist and what a spec string names.

Torch-free, so command lines check ``--pretrained_model`` / ``--base-model`` (and answer
``--help``) before torch and diffusers load; ``pipeline.registry`` loads what a spec names.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

# The embedded models: inside the package once installed (a wheel carries the repository's assets/ as
# pipeline/assets, see pyproject.toml), else at the top of the checkout this package runs from (a clone, an
# editable install).
_PACKAGED_ASSETS = Path(__file__).resolve().parent / "assets"
ASSETS_DIR = _PACKAGED_ASSETS if _PACKAGED_ASSETS.is_dir() else Path(__file__).resolve().parent.parent / "assets"
EMBEDDED = {"tiny": ASSETS_DIR / "tango-tiny", "tiny-dpo": ASSETS_DIR / "tango-tiny-dpo"}
DEFAULT_SPEC = "tiny"  # the base model wherever none is named
DEFAULT_DPO_SPEC = "tiny-dpo"  # its DPO-tuned version (the app's right column, the default pool)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


class SpecError(ValueError):
    """A model spec that names nothing loadable."""


def missing_local_folder(text: str) -> str | None:
    """When ``text`` is meant as a local folder (a path, or owner/name whose "owner" is a folder here, so never a
    Hub download) and that folder does not exist: why, in one line, with the closest existing name. Else None."""
    path = Path(text).expanduser()
    if path.is_dir():
        return None
    if not (path.is_absolute() or text.startswith((".", "~")) or path.parent.is_dir() and str(path.parent) != "."):
        return None
    siblings = [child.name for child in path.parent.iterdir() if child.is_dir()] if path.parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1)
    hint = f"; did you mean {str(path.parent / close[0])!r}?" if close else ""
    return f"{text!r} names a local folder that does not exist{hint}"


def resolve_spec(spec: str) -> tuple[str, Path | None]:
    """(kind, folder): kind is 'folder' or 'hub'; embedded names resolve to their folder."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"model spec must be a non-empty string, got {spec!r}")
    if spec in EMBEDDED:
        folder = EMBEDDED[spec]
        if not folder.is_dir():
            raise SpecError(f"embedded model {spec!r} is not in this checkout ({folder} is missing)")
        return "folder", folder
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder", path.resolve()
    missing = missing_local_folder(spec)
    if missing:
        raise SpecError(f"model spec {missing}")
    if HUB_ID.match(spec) and not path.exists():
        return "hub", None
    raise SpecError(
        f"unknown model spec {spec!r}: not an embedded name ({', '.join(EMBEDDED)}), "
        "not an existing folder, and not a Hub repo id like 'declare-lab/tango2'"
    )
