"""One string names a model everywhere: ``load_pipeline(spec)``.

A spec is, in the order tried:

* an embedded name (``tiny``, ``tiny-dpo``): the small models shipped in ``assets/``;
* a local folder, in diffusers format (``model_index.json``) or in Tango's original
  format (``main_config.json``, converted in memory);
* a Hub repo id, fetched with huggingface_hub (only the files needed): a diffusers-format
  repo (e.g. the output of ``train_dpo.py --push_to_hub``) or an original-format repo
  (``declare-lab/tango``, ``declare-lab/tango2``, ...), converted once and cached as
  diffusers format so the next start is fast.

Loaded pipelines are cached per (spec, device, dtype) and shared: don't mutate one
you did not load yourself (copy its components instead).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import torch
from diffusers.utils import logging

from . import griffinlim, time_position_unet  # noqa: F401  diffusers loads a component class only from a module already imported
from .original import MAIN_CONFIG, download_original, is_original_format, load_original
# The spec names and their resolution, torch-free in pipeline.specs; importable from here as before.
from .specs import DEFAULT_DPO_SPEC, DEFAULT_SPEC, EMBEDDED, SpecError, resolve_spec  # noqa: F401
from .tango import TangoPipeline

logger = logging.get_logger(__name__)

def check_components(folder: Path) -> None:
    """Raise ``SpecError`` naming the first component ``model_index.json`` lists whose folder is missing
    (diffusers would otherwise complain about some other file)."""
    import json

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    for name, value in index.items():
        if isinstance(value, list) and not name.startswith("_") and value[0] is not None and not (folder / name).is_dir():
            raise SpecError(f"the model folder {folder.name!r} lacks its `{name}` component (a `{name}/` folder "
                            f"holding the {value[1]}): copy it from the model it came from")


DIFFUSERS_PATTERNS = ["model_index.json", "*/*.json", "*/*.safetensors", "*/*.model", "*/*.txt"]

_cache: dict[tuple[str, str, torch.dtype], TangoPipeline] = {}
_cache_lock = threading.Lock()


def default_device_and_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """CUDA with float16 when a GPU is present, else CPU with float32."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


def converted_cache_dir() -> Path:
    """Where Hub checkpoints in Tango's original format are kept after conversion."""
    from huggingface_hub import constants

    return Path(os.environ.get("TANGO_CONVERTED_CACHE", Path(constants.HF_HOME) / "tango-dpo-studio" / "converted"))


def _load_folder(folder: Path) -> TangoPipeline:
    if (folder / "model_index.json").is_file():
        check_components(folder)
        return TangoPipeline.from_pretrained(folder)
    if is_original_format(folder):
        return load_original(folder)
    raise SpecError(
        f"folder {str(folder)!r} is not a Tango checkpoint: it has neither model_index.json (diffusers format) "
        f"nor main_config.json (original format)"
    )


def _load_hub(repo_id: str) -> TangoPipeline:
    from huggingface_hub import snapshot_download

    try:
        probe = Path(snapshot_download(repo_id, allow_patterns=["model_index.json", MAIN_CONFIG]))
        if (probe / "model_index.json").is_file():
            return TangoPipeline.from_pretrained(snapshot_download(repo_id, allow_patterns=DIFFUSERS_PATTERNS))
        if not is_original_format(probe):
            raise SpecError(f"Hub repo {repo_id!r} holds neither a diffusers nor an original Tango checkpoint")
        snapshot = download_original(repo_id)
    except SpecError:
        raise
    except Exception as err:  # network, auth, missing repo: say which spec failed and why, nothing more
        raise SpecError(f"could not fetch model {repo_id!r} from the Hub ({type(err).__name__}: {err})") from None

    cached = converted_cache_dir() / f"{repo_id.replace('/', '--')}--{snapshot.name}"
    if (cached / "model_index.json").is_file():
        return TangoPipeline.from_pretrained(cached)
    logger.info(f"converting {repo_id} from Tango's original format; cached at {cached}")
    pipe = load_original(snapshot)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=cached.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        os.replace(staging, cached)
    except OSError as err:  # a cache we cannot write only costs time next start
        logger.warning(f"could not cache the converted {repo_id} at {cached}: {err}")
        shutil.rmtree(staging, ignore_errors=True)
    return pipe


def load_pipeline(spec: str = DEFAULT_SPEC, device=None, dtype=None) -> TangoPipeline:
    """Load (or reuse) the pipeline a spec names, on ``device`` in ``dtype``.

    Defaults: CUDA + float16 when a GPU is present, else CPU + float32. In float16 the
    T5 encoder and the vocoder stay in float32 (T5 overflows in float16; both are cheap).
    Raises ``SpecError`` for a spec that names nothing loadable and
    ``pipeline.original.CheckpointError`` for a checkpoint that cannot be read.
    """
    kind, folder = resolve_spec(spec)
    device, dtype = default_device_and_dtype(device, dtype)
    key = (str(folder) if folder else spec, str(device), dtype)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        pipe = _load_folder(folder) if kind == "folder" else _load_hub(spec)
        pipe.to(device)
        if device.type == "cpu":
            # On CPU a batch decoded at once thrashes the cache; one clip at a time is faster.
            pipe.vae.enable_slicing()
        if dtype != torch.float32:
            pipe.unet.to(dtype)
            pipe.vae.to(dtype)
        pipe.set_progress_bar_config(disable=None)
        _cache[key] = pipe
        return pipe
