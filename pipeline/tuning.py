"""What ``train_dpo.py`` and ``train_grpo.py`` share about the UNet they tune: LoRA adapters put on, fused back
into the weights, the tuned pipeline written atomically, and the check that a resumed run is the same run.

Torch-free at import (the scripts read their flags before torch loads).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Collection


def add_lora(unet, rank: int, target_modules: list[str]) -> None:
    """Freeze ``unet`` and put LoRA adapters of ``rank`` (alpha = rank, Gaussian init) on ``target_modules``: only
    they train."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=target_modules))


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


def resume_mismatch(saved: dict, config: dict, may_change: Collection[str]) -> str | None:
    """Why a run configured as ``config`` may not resume a checkpoint trained as ``saved``: the settings outside
    ``may_change`` that differ, old -> new. None when it may."""
    changed = {k: (saved.get(k), config.get(k)) for k in set(saved) | set(config)
               if k not in may_change and saved.get(k) != config.get(k)}
    if not changed:
        return None
    details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
    return (f"the checkpoint was trained with other settings ({details}); resume with the same settings or start a "
            "new --output_dir")
