"""Time generation for a model spec: seconds per clip, real-time factor, batched vs separate calls, where the time
goes (text encoder, UNet, VAE, vocoder, the app's WAV, spectrogram and judge work), and the app's own overhead.

    python bench/generate.py --model tiny                  # the embedded model at its shipped default
    python bench/generate.py --model tiny --sampler "DPM-Solver++" --steps 25 --guidance-interval 0 inf   # another setting
    python bench/generate.py --model tests/fixtures/tango-original-tiny --steps 10 --batch 4
    python bench/generate.py --model declare-lab/tango2 --steps 100 --batch 4 --device cuda
    python bench/generate.py --model full-size-random --steps 100 --device cuda   # Tango's real sizes, random weights
    python bench/generate.py --model full-size-random --flops   # counts per clip on the meta device, computes nothing

Prints a table and writes bench/results/generate-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline import TangoPipeline, load_pipeline  # noqa: E402
from pipeline.registry import default_device_and_dtype  # noqa: E402

PROMPT = "A dog barks in the distance while rain falls"
PROMPT_SOUND_WORLD = "two knocks then a hiss"  # what the embedded models can read


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
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextmanager
def stage_seconds(pipe: TangoPipeline):
    """Yield a dict that fills with the seconds spent in each component's forward while the block runs."""
    seconds: dict[str, float] = defaultdict(float)
    stages = {"text encoder": pipe.text_encoder, "UNet": pipe.unet, "VAE decoder": pipe.vae.decoder,
              "vocoder": pipe.vocoder}
    handles = []
    for name, module in stages.items():
        def before(_module, _inputs, name=name):
            synchronize()
            seconds[name] -= time.perf_counter()

        def after(_module, _inputs, _output, name=name):
            synchronize()
            seconds[name] += time.perf_counter()

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield seconds
    finally:
        for handle in handles:
            handle.remove()


def app_work_seconds(pipe: TangoPipeline, audios: np.ndarray, latents: torch.Tensor, prompt: str) -> dict[str, float]:
    """What the app does with each generated clip besides generating it (studio.generation.generate_both)."""
    from annotate.store import latent_path
    from pipeline.audio import save_audio
    from soundworld.judge import judge
    from studio.spectrogram import save_spectrogram

    seconds: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory() as folder:
        for i, waveform in enumerate(audios):
            audio_path = Path(folder) / f"clip-{i}.wav"
            work = {"WAV + latent files": lambda: (save_audio(audio_path, waveform, pipe.sampling_rate),
                                                   np.save(latent_path(audio_path), latents[i].numpy())),
                    "spectrogram PNG": lambda: save_spectrogram(waveform, pipe.sampling_rate, audio_path.with_suffix(".png"))}
            if pipe.reads_only_the_sound_world:
                work["judge"] = lambda: judge(waveform, pipe.sampling_rate, prompt)
            for name, run in work.items():
                start = time.perf_counter()
                run()
                seconds[name] += time.perf_counter() - start
    return dict(seconds)


# Dense tensor throughput of one H100/H200 (SXM) in bf16/fp16 without sparsity, TFLOP/s: the limit a clip is held to.
PEAK_TFLOPS = 989.0


def flop_counts(pipe: TangoPipeline, steps_list=(100, 200), guidance_interval: tuple[float, float] | None = None) -> dict:
    """TFLOPs one 10.24 s clip costs at each step count, stage by stage, for a pipeline on the meta device; with
    ``guidance_interval`` also the cost when only the steps within it are guided."""
    from torch.utils.flop_counter import FlopCounterMode

    def counted(fn) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return counter.get_total_flops() / 1e12

    frames = int(pipe.default_audio_length_in_s * pipe.sampling_rate / pipe.hop_length)
    latent_shape = (1, pipe.unet.config.in_channels, frames // pipe.vae_scale_factor, pipe.latent_mel_bins)
    ids = pipe.tokenizer([PROMPT], return_tensors="pt").input_ids.to("meta")
    hidden = torch.zeros(1, ids.shape[1], pipe.text_encoder.config.d_model, device="meta")
    mask = torch.ones(1, ids.shape[1], dtype=torch.bool, device="meta")
    unet_call = counted(lambda: pipe.unet(torch.zeros(latent_shape, device="meta"), 500, encoder_hidden_states=hidden,
                                          encoder_attention_mask=mask))
    text = counted(lambda: pipe.text_encoder(input_ids=ids)) * 2  # prompt and the empty unconditional text
    vae = counted(lambda: pipe.vae.decode(torch.zeros(1, pipe.vae.config.latent_channels, *latent_shape[2:],
                                                      device="meta")))
    vocoder = counted(lambda: pipe.vocoder(torch.zeros(1, frames, pipe.vocoder.config.model_in_dim, device="meta")))
    counts = {"tflops_unet_call_per_clip": round(unet_call, 4), "tflops_text_encoder": round(text, 4),
              "tflops_vae_decode": round(vae, 4), "tflops_vocoder": round(vocoder, 4), "peak_tflops_assumed": PEAK_TFLOPS}
    intervals = {"": (0, float("inf"))} | ({"_guidance_interval": guidance_interval} if guidance_interval else {})
    for steps in steps_list:
        pipe.scheduler.set_timesteps(steps)
        for name, interval in intervals.items():
            guided = sum(pipe.guided_steps(pipe.scheduler.timesteps, interval))
            total = unet_call * (steps + guided) + text + vae + vocoder
            counts[f"tflops_per_clip_{steps}_steps{name}"] = round(total, 2)
            counts[f"seconds_at_peak_{steps}_steps{name}"] = round(total / PEAK_TFLOPS, 4)
    return counts


def app_overhead(models_spec: tuple[str, str], candidates: int, device: str | None) -> dict:
    """The Demo's Generate as the app runs it (studio.generation.generate_both: both columns, files, spectrograms,
    judge) against the pipelines' own seconds; what is left is the app's overhead."""
    from studio.config import StudioConfig
    from studio.generation import GenerationSettings, generate_both, load_models

    models = load_models(StudioConfig(base_model=models_spec[0], dpo_model=models_spec[1], device=device))
    steps = models[0].default_steps
    settings = GenerationSettings(PROMPT_SOUND_WORLD, steps, 3.0, 0, candidates)
    with tempfile.TemporaryDirectory() as folder:
        generate_both(models, settings, folder, secret=b"warm-up")
        start = time.perf_counter()
        generation = generate_both(models, settings, folder, secret=b"bench")
        total = time.perf_counter() - start
    pipeline = sum(column.seconds_per_clip * len(column.clips) for column in generation.columns)
    return {"models": list(models_spec), "candidates_per_column": candidates, "steps": steps,
            "seconds_generate_both": round(total, 4), "seconds_in_pipelines": round(pipeline, 4),
            "app_overhead_share": round((total - pipeline) / total, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    parser.add_argument("--sampler", default=None, help="one of the app's samplers (default: the model's own)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="guide only steps with LOW <= t <= HIGH (default: the model's own; 0 inf: every step)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast around the call")
    parser.add_argument("--batch", type=int, default=4, help="K candidates per prompt")
    parser.add_argument("--length", type=float, default=None, help="seconds (default: the model's own)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--app", nargs=2, metavar=("BASE", "DPO"), default=None,
                        help="also time the Demo's Generate with these two models (default for --model tiny: tiny tiny-dpo)")
    parser.add_argument("--flops", action="store_true", help="count TFLOPs per clip (with --model full-size-random, "
                        "built on the meta device: nothing is computed) instead of timing")
    parser.add_argument("--out", default=None, help="results JSON (default bench/results/generate-<model>.json)")
    args = parser.parse_args()
    if args.flops:
        if args.model != "full-size-random":
            parser.error("--flops builds the model on the meta device: use it with --model full-size-random")
        with torch.device("meta"):
            pipe = full_size_random_tango()
        results = {"model": args.model, "guidance_interval": args.guidance_interval,
                   **flop_counts(pipe, guidance_interval=args.guidance_interval)}
        for key, value in results.items():
            print(f"{key:40s} {value}")
        out = Path(args.out) if args.out else Path(__file__).parent / "results" / "generate-flops-full-size.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
        return

    load_start = time.perf_counter()
    if args.model == "full-size-random":
        device, dtype = default_device_and_dtype(args.device)
        pipe = full_size_random_tango().to(device)
        pipe.unet.to(dtype)
        pipe.vae.to(dtype)
    else:
        pipe = load_pipeline(args.model, device=args.device)
    load_seconds = time.perf_counter() - load_start
    if args.sampler:
        from studio.generation import with_sampler

        pipe = with_sampler(pipe, args.sampler)
    pipe.set_progress_bar_config(disable=True)
    args.steps = args.steps or pipe.config.default_num_inference_steps
    length = args.length or pipe.default_audio_length_in_s
    prompt = PROMPT_SOUND_WORLD if pipe.reads_only_the_sound_world else PROMPT
    call = dict(num_inference_steps=args.steps, audio_length_in_s=length, guidance_scale=args.guidance,
                guidance_interval=args.guidance_interval)
    precision = torch.autocast(pipe.device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    with precision:
        pipe(prompt, **{**call, "num_inference_steps": 1})  # warm-up: first-call allocations
        single = timed(lambda: pipe(prompt, **call, generator=pipe.clip_generators([0])), args.repeats)
        separate = timed(
            lambda: [pipe(prompt, **call, generator=pipe.clip_generators([i])) for i in range(args.batch)],
            args.repeats,
        )
        batched = timed(
            lambda: pipe(prompt, **call, num_waveforms_per_prompt=args.batch,
                         generator=pipe.clip_generators(range(args.batch))),
            args.repeats,
        )
        with stage_seconds(pipe) as stages:
            profiled_start = time.perf_counter()
            output = pipe(prompt, **call, num_waveforms_per_prompt=args.batch,
                          generator=pipe.clip_generators(range(args.batch)))
            profiled = time.perf_counter() - profiled_start
    stages = {name: round(value, 4) for name, value in stages.items()}
    stages["scheduler and the rest"] = round(profiled - sum(stages.values()), 4)
    app_work = {name: round(value, 4) for name, value in
                app_work_seconds(pipe, output.audios, output.latents, prompt).items()}
    results = {
        "model": args.model,
        "device": str(pipe.device),
        "dtype": str(pipe.unet.dtype),
        "bf16_autocast": args.bf16,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "scheduler": type(pipe.scheduler).__name__,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "guidance_interval": args.guidance_interval or pipe.config.get("default_guidance_interval"),  # None: every step
        "audio_length_in_s": length,
        "load_seconds": round(load_seconds, 3),
        "seconds_per_clip_single": round(single, 4),
        "real_time_factor_single": round(single / length, 4),
        "k": args.batch,
        "seconds_k_separate_calls": round(separate, 4),
        "seconds_k_batched": round(batched, 4),
        "seconds_per_clip_batched": round(batched / args.batch, 4),
        "batched_speedup": round(separate / batched, 3),
        "stage_seconds_k_batched": stages,
        "app_work_seconds_k_clips": app_work,
    }
    app_models = args.app or (("tiny", "tiny-dpo") if args.model == "tiny" else None)
    if app_models:
        results["app_generate"] = app_overhead(tuple(app_models), 2, args.device)
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, seconds in value.items():
                print(f"  {name:26s} {seconds}")
        else:
            print(f"{key:28s} {value}")
    safe_name = re.sub(r"[^\w.-]+", "_", args.model)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"generate-{safe_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
