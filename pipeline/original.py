"""Read declare-lab's original Tango checkpoints and turn them into a TangoPipeline.

The Hub repos ``declare-lab/tango``, ``declare-lab/tango2``, ``declare-lab/tango2-full``
(and the other Tango fine-tunes) hold the original training code's files:

    main_config.json        kwargs of AudioDiffusion: text encoder name, UNet config path, ...
    vae_config.json         AudioLDM VAE kwargs (ldm ``ddconfig``) and ``scale_factor``
    stft_config.json        the mel front end
    pytorch_model_main.bin  ``unet.*`` (a diffusers UNet2DConditionModel) + ``text_encoder.*`` (T5 encoder)
    pytorch_model_vae.bin   ldm-style VAE keys + ``vocoder.*`` (AudioLDM's HiFi-GAN lives inside the VAE)
    pytorch_model_stft.bin  STFT and mel bases (rebuilt from stft_config.json; only checked here)

What the repos do not carry is kept in ``pipeline/configs/``: Tango's UNet config (a
file of the GitHub repo) and the DDPM scheduler config of Stable Diffusion 2.1 (a Hub
repo that no longer exists). The text encoder's config and tokenizer come from a
folder inside the checkpoint if there is one, else from the Hub id named in
``main_config.json`` (``google/flan-t5-large``); its weights come from
``pytorch_model_main.bin``. ``.bin`` files are read with ``torch.load(weights_only=True)``.

Convert once to diffusers format (a Space then loads the safetensors copy quickly):

    python -m pipeline.original declare-lab/tango2 ./tango2-diffusers
    python -m pipeline.original path/to/original-folder ./out
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from diffusers.utils import logging
from transformers import AutoTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config, T5EncoderModel

from .audio import MelConfig, _bases
from .tango import TangoPipeline

logger = logging.get_logger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
TANGO_UNET_CONFIG = CONFIG_DIR / "tango_unet_config.json"
SD21_SCHEDULER_CONFIG = CONFIG_DIR / "sd21_scheduler_config.json"
HIFIGAN_16K_64_CONFIG = CONFIG_DIR / "hifigan_16k_64.json"

MAIN_CONFIG = "main_config.json"
ORIGINAL_FILES = (
    MAIN_CONFIG,
    "vae_config.json",
    "stft_config.json",
    "pytorch_model_main.bin",
    "pytorch_model_vae.bin",
    "pytorch_model_stft.bin",
)
# What a T5 text encoder folder needs besides weights (they come from pytorch_model_main.bin).
TEXT_ENCODER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")
# Tango generates (batch, 8, 256, 16) latents whatever the UNet config says: 10.24 s.
TANGO_LATENT_SIZE = [256, 16]


class CheckpointError(ValueError):
    """A checkpoint that is missing files, cannot be read, or does not fit the model."""


def is_original_format(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MAIN_CONFIG).is_file()


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path.name!r} is missing from {str(path.parent)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file {path.name!r} is not valid JSON: {err}") from None


def read_config(path: Path) -> dict:
    """A component config without its private ``_`` keys (class name, version, comments)."""
    return {key: value for key, value in read_json(path).items() if not key.startswith("_")}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` with errors that name the file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path.name!r} is missing from {str(path.parent)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise CheckpointError(f"checkpoint file {path.name!r} is corrupt or not a torch state dict: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint file {path.name!r} does not hold a state dict of tensors")
    return state


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module`` (built under ``init_empty_weights``) strictly.

    Any missing, unexpected or mis-shaped key is reported by name, with the file it
    came from, before anything is assigned.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all)"
        )
    if mismatched:
        problems.append(f"shape mismatches {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, assign=True)
    module.eval()


def split_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


# -- components ----------------------------------------------------------------------------


def resolve_text_encoder_folder(folder: Path, name: str) -> Path:
    """The text encoder's config and tokenizer: a folder inside the checkpoint first, then a Hub id."""
    local = folder / name
    if local.is_dir():
        return local
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=list(TEXT_ENCODER_FILES)))
    except Exception as err:  # huggingface_hub raises many types; name the encoder instead
        raise CheckpointError(
            f"text encoder {name!r} named in {MAIN_CONFIG} is neither a folder in the checkpoint nor a "
            f"reachable Hub repo ({type(err).__name__})"
        ) from None


def build_text_encoder(folder: Path, main_config: dict, main_state: dict) -> tuple:
    name = main_config.get("text_encoder_name")
    if not isinstance(name, str) or "t5" not in name.lower():
        raise CheckpointError(
            f"text_encoder_name {name!r} in {MAIN_CONFIG}: only T5 text encoders (Tango's FLAN-T5) are supported"
        )
    encoder_folder = resolve_text_encoder_folder(folder, name)
    tokenizer = AutoTokenizer.from_pretrained(encoder_folder)
    config = T5Config.from_pretrained(encoder_folder)
    with init_empty_weights():
        text_encoder = T5EncoderModel(config)
    load_weights(text_encoder, split_prefix(main_state, "text_encoder."), "pytorch_model_main.bin (text_encoder.*)")
    text_encoder.tie_weights()
    return tokenizer, text_encoder


def build_unet(folder: Path, main_config: dict, main_state: dict) -> UNet2DConditionModel:
    if main_config.get("unet_model_name"):
        raise CheckpointError(
            f"unet_model_name {main_config['unet_model_name']!r} in {MAIN_CONFIG}: pretrained-UNet variants "
            "(group_in/group_out) are not supported; Tango's released models use unet_model_config_path"
        )
    unet_state = split_prefix(main_state, "unet.")
    config_path = folder / str(main_config.get("unet_model_config_path") or "")
    # Hub repos name a path of the GitHub checkout that they do not carry: use Tango's config kept here.
    config = read_config(config_path if config_path.is_file() else TANGO_UNET_CONFIG)
    cross_key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    if cross_key in unet_state:
        config["cross_attention_dim"] = int(unet_state[cross_key].shape[1])
    config["sample_size"] = list(TANGO_LATENT_SIZE)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    load_weights(unet, unet_state, "pytorch_model_main.bin (unet.*)")
    return unet


def vae_config_from_original(vae_config: dict) -> dict:
    """AudioLDM's ``AutoencoderKL(ddconfig, embed_dim, scale_factor, ...)`` kwargs -> diffusers AutoencoderKL config."""
    dd = vae_config.get("ddconfig")
    if not isinstance(dd, dict):
        raise CheckpointError("vae_config.json has no 'ddconfig' section")
    for key, supported in (("subband", 1), ("time_shuffle", 1)):
        if vae_config.get(key, supported) != supported:
            raise CheckpointError(f"vae_config.json: {key}={vae_config[key]!r} is not supported (Tango uses 1)")
    if dd.get("downsample_time"):
        raise CheckpointError("vae_config.json: ddconfig.downsample_time=true is not supported (Tango uses false)")
    if dd.get("attn_resolutions"):
        raise CheckpointError("vae_config.json: attention inside VAE down/up blocks is not supported (Tango has none)")
    if vae_config.get("embed_dim") != dd.get("z_channels"):
        raise CheckpointError("vae_config.json: embed_dim must equal ddconfig.z_channels (it does for Tango)")
    levels = len(dd["ch_mult"])
    return {
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "layers_per_block": dd["num_res_blocks"],
        "latent_channels": dd["z_channels"],
        "norm_num_groups": 32,
        "sample_size": dd["resolution"],
        "scaling_factor": float(vae_config["scale_factor"]),
    }


def build_vae(vae_config: dict, vae_state: dict) -> AutoencoderKL:
    config = vae_config_from_original(vae_config)
    ldm_state = {k: v for k, v in vae_state.items() if not k.startswith("vocoder.")}
    converted = convert_ldm_vae_checkpoint(ldm_state, config)
    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    load_weights(vae, converted, "pytorch_model_vae.bin (VAE keys)")
    return vae


def build_vocoder(folder: Path, vae_state: dict) -> SpeechT5HifiGan:
    """AudioLDM's HiFi-GAN (``vocoder.*`` of the VAE checkpoint) as transformers' SpeechT5HifiGan.

    The architecture is HIFIGAN_16K_64, hard-coded in the original; widths and kernel
    sizes are read from the weights so smaller vocoders (like the test fixture's) load too.
    """
    state = split_prefix(vae_state, "vocoder.")
    if "conv_pre.weight" not in state:
        raise CheckpointError("pytorch_model_vae.bin has no vocoder.* weights (Tango keeps its HiFi-GAN there)")
    config = read_config(HIFIGAN_16K_64_CONFIG)
    config["upsample_initial_channel"], config["model_in_dim"], _ = state["conv_pre.weight"].shape
    num_upsamples = len(config["upsample_rates"])
    config["upsample_kernel_sizes"] = [
        int(state[f"ups.{i}.weight"].shape[2]) if f"ups.{i}.weight" in state else k
        for i, k in enumerate(config["upsample_kernel_sizes"][:num_upsamples])
    ]
    config["resblock_kernel_sizes"] = [
        int(state[f"resblocks.{j}.convs1.0.weight"].shape[2]) if f"resblocks.{j}.convs1.0.weight" in state else k
        for j, k in enumerate(config["resblock_kernel_sizes"])
    ]
    renamed = {key.replace("ups.", "upsampler.", 1) if key.startswith("ups.") else key: v for key, v in state.items()}
    renamed["mean"] = torch.zeros(config["model_in_dim"])
    renamed["scale"] = torch.ones(config["model_in_dim"])
    with init_empty_weights():
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**config))
    load_weights(vocoder, renamed, "pytorch_model_vae.bin (vocoder.*)")
    return vocoder


def check_stft(stft_config: dict, stft_state: dict) -> None:
    """The STFT file must describe the front end :mod:`pipeline.audio` computes (Tango's)."""
    try:
        config = MelConfig(**stft_config)
    except TypeError as err:
        raise CheckpointError(f"stft_config.json has unexpected keys: {err}") from None
    forward_basis, mel_basis = _bases(config)
    for key, ours in (("stft_fn.forward_basis", forward_basis), ("mel_basis", mel_basis)):
        theirs = stft_state.get(key)
        if theirs is None or theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-6):
            raise CheckpointError(f"pytorch_model_stft.bin: {key} differs from the front end that stft_config.json describes")


def load_original(folder: str | os.PathLike) -> TangoPipeline:
    """Build a TangoPipeline (CPU, float32) from an original-format folder."""
    folder = Path(folder)
    main_config = read_json(folder / MAIN_CONFIG)
    vae_config = read_json(folder / "vae_config.json")
    stft_config = read_json(folder / "stft_config.json")
    main_state = read_state_dict(folder / "pytorch_model_main.bin")
    vae_state = read_state_dict(folder / "pytorch_model_vae.bin")
    check_stft(stft_config, read_state_dict(folder / "pytorch_model_stft.bin"))

    tokenizer, text_encoder = build_text_encoder(folder, main_config, main_state)
    unet = build_unet(folder, main_config, main_state)
    vae = build_vae(vae_config, vae_state)
    vocoder = build_vocoder(folder, vae_state)
    scheduler = DDPMScheduler.from_config(read_config(SD21_SCHEDULER_CONFIG))
    return TangoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, vocoder=vocoder, scheduler=scheduler
    )


def download_original(repo_id: str, revision: str | None = None) -> Path:
    """Fetch only the files an original-format repo needs, plus the UNet config and text encoder
    folder that ``main_config.json`` names, when the repo has them."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[MAIN_CONFIG]))
    main_config = read_json(folder / MAIN_CONFIG)
    encoder_name = str(main_config.get("text_encoder_name", ""))
    patterns = list(ORIGINAL_FILES) + [f"{encoder_name}/{name}" for name in TEXT_ENCODER_FILES]
    if main_config.get("unet_model_config_path"):
        patterns.append(str(main_config["unet_model_config_path"]))
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.original",
        description="Convert an original-format Tango checkpoint (Hub id or folder) to a diffusers-format folder.",
    )
    parser.add_argument("source", help="Hub repo id (e.g. declare-lab/tango2) or a local original-format folder")
    parser.add_argument("output_dir", help="where to write the diffusers-format pipeline")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    args = parser.parse_args(argv)

    folder = Path(args.source) if Path(args.source).is_dir() else download_original(args.source, args.revision)
    if not is_original_format(folder):
        parser.error(f"{args.source!r} is not an original-format Tango checkpoint (no {MAIN_CONFIG})")
    try:
        pipe = load_original(folder)
    except CheckpointError as err:
        parser.exit(1, f"error: {err}\n")
    pipe.save_pretrained(args.output_dir, safe_serialization=True)
    print(f"wrote {args.output_dir} (load it with pipeline.load_pipeline({args.output_dir!r}))")


if __name__ == "__main__":
    main()
