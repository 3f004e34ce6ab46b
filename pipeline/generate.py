"""Generate clips from the command line (the app's Demo tab without a browser).

    python -m pipeline.generate "a dog barks, then a car passes" --model declare-lab/tango2 --out dog.wav
    python -m pipeline.generate "two knocks then a hiss" -n 4 --seed 0 --out knocks.wav   # knocks-0.wav ... knocks-3.wav
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .audio import save_audio
from .original import CheckpointError
from .registry import DEFAULT_SPEC, SpecError, load_pipeline
from .tango import clip_seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.generate", description=__doc__.splitlines()[0])
    parser.add_argument("prompt", help="what the clip should contain")
    parser.add_argument("--model", default=DEFAULT_SPEC, help=f"model spec: embedded name, folder or Hub id (default {DEFAULT_SPEC})")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own, 100 for Tango)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    parser.add_argument("-n", "--num-waveforms", type=int, default=1, help="clips to generate (one batch)")
    parser.add_argument("--seed", type=int, default=0, help="clip i uses seed + i, so each is reproducible alone")
    parser.add_argument("--length", type=float, default=None, help="seconds (default: the model's training length)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    parser.add_argument("--out", default="out.wav", help="output WAV; with -n > 1, NAME-0.wav, NAME-1.wav ...")
    args = parser.parse_args(argv)

    try:
        pipe = load_pipeline(args.model, device=args.device)
        generators = pipe.clip_generators(clip_seeds(args.seed, max(args.num_waveforms, 1)))
        audios = pipe(
            args.prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            num_waveforms_per_prompt=args.num_waveforms,
            audio_length_in_s=args.length,
            generator=generators,
        ).audios
    except (SpecError, CheckpointError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    out = Path(args.out)
    paths = [out] if len(audios) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(audios))]
    for path, audio in zip(paths, audios):
        save_audio(path, audio, pipe.sampling_rate)
        print(f"wrote {path} ({len(audio) / pipe.sampling_rate:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
