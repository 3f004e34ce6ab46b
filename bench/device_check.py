"""Does this device reproduce the original Tango? Seeded generation of the fixture checkpoint
on the chosen device/dtype vs the CPU reference computed by the original code.

    python bench/device_check.py --device cuda --dtype float16

Randomness is drawn from a CPU generator, so the noise is the reference's on any device;
what differs is only the arithmetic (cuDNN/TF32 on GPU, half precision). Prints the max
abs difference of the final latents and waveform, and writes bench/results/device_check-*.json.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline import load_pipeline  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "tango-original-tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--no-tf32", action="store_true", help="disable TF32 convolutions/matmuls (exact fp32 on GPU)")
    args = parser.parse_args()
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    reference = np.load(FIXTURE / "reference.npz")
    pipe = load_pipeline(str(FIXTURE), device=args.device, dtype=getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="A dog barks in the distance while rain falls", num_inference_steps=10, guidance_scale=3.0)
    latents = pipe(**call, generator=torch.Generator().manual_seed(0), output_type="latent").audios
    audio = pipe(**call, generator=torch.Generator().manual_seed(0)).audios
    results = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "tf32": torch.backends.cudnn.allow_tf32 if args.device.startswith("cuda") else None,
        "max_abs_diff_latents": float(np.abs(latents.float().cpu().numpy() - reference["g_latents_final"]).max()),
        "max_abs_diff_waveform": float(np.abs(audio[0] - reference["g_waveform_float"][0, :163840]).max()),
        "finite": bool(np.isfinite(audio).all()),
    }
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results" / f"device_check-{args.device.split(':')[0]}-{args.dtype}{'-no-tf32' if args.no_tf32 else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
