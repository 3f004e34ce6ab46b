"""Writing a tuned pipeline: what ``train_dpo.py`` and ``train_grpo.py`` both do at the end of a run.

Torch-free at import (the scripts read their flags before torch loads).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def merged_unet(unet, lora: bool):
    """The UNet as a plain diffusers model: LoRA adapters fused into the weights (in place)."""
    if lora:
        unet.fuse_lora()
        unet.unload_lora()
    return unet.eval()


def save_pipeline_atomically(pipe, folder: Path) -> None:
    """``pipe.save_pretrained(folder)`` under a temporary name, renamed into place when complete: a run killed
    mid-write leaves the previous ``folder`` (or none), never half of one."""
    partial = folder.with_name(f".partial-{folder.name}")
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(partial, safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
