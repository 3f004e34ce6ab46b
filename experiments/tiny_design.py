"""Compare designs of the tiny model: the same data, steps budget and evaluation for each, run side by side.

    python experiments/tiny_design.py --device cuda --minutes 4 --out runs/tiny-design    # on one GPU, all at once
    python experiments/tiny_design.py --minutes 20 --variants shipped,maps --out runs/tiny-design   # CPU: one after another

Stages 1-5 of ``soundworld.train_tiny`` (data, tokenizer, text encoder, VAE, latents) run once and are shared;
each variant then trains its UNet with its own knobs for ``--minutes`` of wall clock and is judged on the
validation split (training-split prompts, fresh seeds) every ``eval_interval`` steps. The variant with the best
final validation score is named the winner; test and held-out numbers are reported, never used to choose.
Writes ``OUT/design.json`` (each variant's knobs, steps, final val/test/heldout metrics) and each variant's
pipeline, metrics and curves under ``OUT/<variant>/``.

The answer: bench/results/tiny-design/; read in docs/models.md, "What was tried".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from soundworld import train_tiny  # noqa: E402

VARIANTS = {  # the levers that decide whether a stretch of time knows which part of the prompt to draw
    "shipped": ["--position_channels=1", "--unet_attention_levels=1,2"],  # the design shipped before
    "maps": ["--position_channels=8", "--unet_attention_levels=1,2"],  # sinusoidal maps, also at every attention
    "maps_fullres": ["--position_channels=8", "--unet_attention_levels=0,1,2"],  # + attention where events are drawn
    "maps_fullres_wide": ["--position_channels=8", "--unet_attention_levels=0,1,2", "--unet_channels=32,96,192"],
}
SHARED_STAGES = ("data.pt", "tokenizer", "text_encoder", "vae", "latents.pt")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--minutes", type=float, required=True, help="training wall clock per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--parallel", action="store_true", help="train all variants at once (one GPU has room)")
    parser.add_argument("knobs", nargs="*", help="train_tiny --name=value overrides shared by every variant")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    if unknown := set(names) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}")
    shared = args.out / "shared"
    common = [f"--device={args.device}", f"--max_minutes={args.minutes}", "--train_steps=1000000", *args.knobs]

    # Stages 1-5 once: the variants differ only in the UNet.
    config = train_tiny.apply_overrides([*common, f"--work_dir={shared}"])
    shared.mkdir(parents=True, exist_ok=True)
    train_tiny.prepare(config, shared, {"text": [], "vae": []})

    launched = []
    for name in names:
        work = args.out / name
        work.mkdir(parents=True, exist_ok=True)
        for stage in SHARED_STAGES:
            if not (work / stage).exists():
                (work / stage).symlink_to((shared / stage).resolve())
        command = [sys.executable, "-m", "soundworld.train_tiny", *common, *VARIANTS[name],
                   f"--work_dir={work}", f"--out_dir={work / 'pipeline'}"]
        log = open(work / "train.log", "w")
        launched.append((name, subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, "TQDM_MININTERVAL": "30"})))
        if not args.parallel:
            launched[-1][1].wait()
    for _, process in launched:
        process.wait()

    rows = {}
    for name, process in launched:
        metrics_file = args.out / name / "pipeline" / "training_metrics.json"
        if process.returncode or not metrics_file.exists():
            rows[name] = {"error": f"exit {process.returncode}; see {args.out / name / 'train.log'}"}
            continue
        metrics = json.loads(metrics_file.read_text())
        final = metrics["eval"][-1]
        weights = args.out / name / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
        rows[name] = {"knobs": VARIANTS[name], "steps": final["step"], "unet_mb": round(weights.stat().st_size / 2**20, 1),
                      **{split: final[split] for split in train_tiny.EVAL_SPLITS}}
    scored = {name: row["val"]["mean_score"] for name, row in rows.items() if "val" in row}
    design = {"minutes": args.minutes, "device": args.device, "shared_knobs": args.knobs, "variants": rows,
              "winner": max(scored, key=scored.get) if scored else None}
    (args.out / "design.json").write_text(json.dumps(design, indent=1) + "\n")
    for name, row in rows.items():
        if "val" in row:
            print(f"{name:>18}: {row['steps']:>6} steps  " + "  ".join(
                f"{split} recall {row[split]['event_recall']:.3f} score {row[split]['mean_score']:.3f}"
                for split in train_tiny.EVAL_SPLITS))
        else:
            print(f"{name:>18}: {row['error']}")
    print("winner (validation score):", design["winner"])
    return design


if __name__ == "__main__":
    main()
