"""Time generation for a model spec: seconds per clip, real-time factor, batched vs separate calls.

    python bench/generate.py --model tests/fixtures/tango-original-tiny --steps 10 --batch 4
    python bench/generate.py --model declare-lab/tango2 --steps 100 --batch 4 --device cuda
    python bench/generate.py --model full-size-random --steps 100 --device cuda   # Tango's real sizes, random weights

Prints a table and writes bench/results/generate-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline import TangoPipeline, load_pipeline  # noqa: E402
from pipeline.registry import default_device_and_dtype  # noqa: E402

PROMPT = "A dog barks in the distance while rain falls"


def full_size_random_tango() -> TangoPipeline:
    """Tango's real architecture (FLAN-T5-large encoder, 866M UNet, AudioLDM-s VAE, 1024-wide HiFi-GAN)
    with random weights: real timings without downloading the checkpoint."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel

    from pipeline.original import HIFIGAN_16K_64_CONFIG, SD21_SCHEDULER_CONFIG, TANGO_UNET_CONFIG, read_config, vae_config_from_original

    tango_vae = {  # vae_config.json of declare-lab/tango (AudioLDM-s-full)
        "embed_dim": 8, "subband": 1, "time_shuffle": 1, "scale_factor": 0.9227914214134216,
        "ddconfig": {"double_z": True, "z_channels": 8, "resolution": 256, "downsample_time": False, "in_channels": 1,
                     "out_ch": 1, "ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0},
    }
    flan_t5_large = T5Config(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16, vocab_size=32128,
                             feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    return TangoPipeline(
        tokenizer=AutoTokenizer.from_pretrained(ROOT / "tests/fixtures/tango-original-tiny/flan-t5-tiny"),
        text_encoder=T5EncoderModel(flan_t5_large).eval(),
        unet=UNet2DConditionModel.from_config(read_config(TANGO_UNET_CONFIG)).eval(),
        vae=AutoencoderKL.from_config(vae_config_from_original(tango_vae)).eval(),
        vocoder=SpeechT5HifiGan(SpeechT5HifiGanConfig(**read_config(HIFIGAN_16K_64_CONFIG))).eval(),
        scheduler=DDPMScheduler.from_config(read_config(SD21_SCHEDULER_CONFIG)),
    )


def timed(fn, repeats: int) -> float:
    """Best of `repeats` wall-clock seconds (best, not mean: other processes only ever add time)."""
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    parser.add_argument("--batch", type=int, default=4, help="K candidates per prompt")
    parser.add_argument("--length", type=float, default=None, help="seconds (default: the model's own)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="results JSON (default bench/results/generate-<model>.json)")
    args = parser.parse_args()

    load_start = time.perf_counter()
    if args.model == "full-size-random":
        device, dtype = default_device_and_dtype(args.device)
        pipe = full_size_random_tango().to(device)
        pipe.unet.to(dtype)
        pipe.vae.to(dtype)
    else:
        pipe = load_pipeline(args.model, device=args.device)
    load_seconds = time.perf_counter() - load_start
    pipe.set_progress_bar_config(disable=True)
    args.steps = args.steps or pipe.config.default_num_inference_steps
    length = args.length or pipe.default_audio_length_in_s
    call = dict(num_inference_steps=args.steps, audio_length_in_s=length)
    pipe(PROMPT, **{**call, "num_inference_steps": 1})  # warm-up: first-call allocations

    single = timed(lambda: pipe(PROMPT, **call, generator=pipe.clip_generators([0])), args.repeats)
    separate = timed(
        lambda: [pipe(PROMPT, **call, generator=pipe.clip_generators([i])) for i in range(args.batch)],
        args.repeats,
    )
    batched = timed(
        lambda: pipe(
            PROMPT, **call, num_waveforms_per_prompt=args.batch,
            generator=pipe.clip_generators(range(args.batch)),
        ),
        args.repeats,
    )
    results = {
        "model": args.model,
        "device": str(pipe.device),
        "dtype": str(pipe.unet.dtype),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "steps": args.steps,
        "audio_length_in_s": length,
        "load_seconds": round(load_seconds, 3),
        "seconds_per_clip_single": round(single, 4),
        "real_time_factor_single": round(single / length, 4),
        "k": args.batch,
        "seconds_k_separate_calls": round(separate, 4),
        "seconds_k_batched": round(batched, 4),
        "seconds_per_clip_batched": round(batched / args.batch, 4),
        "batched_speedup": round(separate / batched, 3),
    }
    for key, value in results.items():
        print(f"{key:28s} {value}")
    safe_name = re.sub(r"[^\w.-]+", "_", args.model)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"generate-{safe_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
