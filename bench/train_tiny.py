"""UNet training throughput of the tiny recipe under each option: steps per second at the recipe's batch.

    python bench/train_tiny.py                      # the recipe's UNet, batch 32, on this machine's CPU
    python bench/train_tiny.py --device cuda --batch 256

Times forward + backward + AdamW on random latents and text states of the recipe's shapes (the data
pipeline is not included: latents are cached, so it costs nothing per step). Options: fp32, bf16
autocast, channels_last memory format. Writes bench/results/train_tiny-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from soundworld import train_tiny  # noqa: E402

OPTIONS = {"fp32": {}, "bf16 autocast": {"amp": torch.bfloat16},
           "bf16 autocast + channels_last": {"amp": torch.bfloat16, "channels_last": True}}


def steps_per_second(config: dict, batch: int, steps: int, device: str, amp=None, channels_last=False) -> float:
    torch.manual_seed(0)
    unet = train_tiny.make_unet(config).to(device)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    latents = torch.randn(batch, 8, train_tiny.CLIP_FRAMES // 4, 16, device=device)
    states = torch.randn(batch, 12, config["text_dim"], device=device)
    mask = torch.ones(batch, 12, dtype=torch.bool, device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
            prediction = unet(latents, timesteps, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        loss = F.mse_loss(prediction.float(), latents)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=train_tiny.batch_size)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per option")
    parser.add_argument("knobs", nargs="*", help="train_tiny --name=value overrides (e.g. another design)")
    args = parser.parse_args(argv)
    config = train_tiny.apply_overrides(args.knobs)
    rows = {}
    for name, option in OPTIONS.items():
        rows[name] = round(steps_per_second(config, args.batch, args.steps, args.device, **option), 3)
        print(f"{name:>30}: {rows[name]:.3f} steps/s  ({rows[name] / rows['fp32']:.2f}x fp32)", flush=True)
    report = {"device": args.device, "batch": args.batch, "torch_threads": torch.get_num_threads(),
              "processor": platform.processor() or platform.machine(), "knobs": args.knobs, "steps_per_second": rows}
    out = ROOT / "bench" / "results" / f"train_tiny-{args.device}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
