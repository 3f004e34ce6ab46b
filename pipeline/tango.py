"""TangoPipeline: text-to-audio with Tango / Tango 2 (declare-lab) as a diffusers pipeline.

Tango is a latent diffusion model: a frozen FLAN-T5 encoder reads the prompt, a
UNet2DConditionModel denoises an 8-channel latent of a log-mel spectrogram, the
AudioLDM VAE decodes the latent to a 64-band mel at 16 kHz / hop 160, and a HiFi-GAN
vocoder turns the mel into a waveform. The semantics follow the original
``AudioDiffusion.inference`` exactly: classifier-free guidance against the *empty
prompt* encoded by T5 with its attention mask (unconditional half first), the
boolean encoder attention mask passed to the UNet, and DDPM sampling with Stable
Diffusion 2.1's v-prediction schedule.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedTokenizerBase, T5EncoderModel

from .prompt_checks import named_prompt_check

logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from pipeline import load_pipeline, save_audio

        >>> pipe = load_pipeline("declare-lab/tango2")  # or "tiny", or a local folder
        >>> generator = torch.Generator().manual_seed(0)
        >>> audio = pipe("A dog barks, then a car passes by", num_inference_steps=100, generator=generator).audios[0]
        >>> save_audio("dog.wav", audio, pipe.sampling_rate)
        ```
"""

@contextmanager
def flush_denormals():
    """Treat subnormal floats as zero while sampling (CPU): trained UNets produce tiny activations whose
    subnormal arithmetic ran the embedded models 2-3x slower on x86 CPUs; values below 1e-38 change nothing
    audible. Restores the default (off) afterwards."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


# Clips longer than this multiple of the training length are refused: the UNet would
# run, but the model was never trained for it and memory grows with the length.
MAX_LENGTH_FACTOR = 3


def clip_seeds(seed: int, count: int) -> list[int]:
    """The seeds of ``count`` clips drawn under one ``seed``: clip ``i`` is seeded ``seed + i``.

    The convention of the app's Demo, the generate CLI, automatic ranking and the evaluation, so a
    clip is reproducible from (seed, i) whoever made it; draw them with ``clip_generators``. (Candidate
    pools give every clip a seed of its own instead: ``annotate.pool``.)
    """
    return [int(seed) + i for i in range(count)]


LATENT_POSTERIORS = ("mode", "sample")
# Settings saved in model_index.json beside the components: they travel with the weights.
SAVED_SETTINGS = ("default_num_inference_steps", "latent_posterior", "default_guidance_interval", "prompt_check")


def checked_guidance_interval(interval) -> tuple[float, float]:
    """``(low, high)`` training timesteps with 0 <= low <= high, or a ValueError saying what is wrong."""
    try:
        low, high = (float(bound) for bound in interval)
    except (TypeError, ValueError):
        raise ValueError(f"`guidance_interval` must be two numbers (low, high), got {interval!r:.80}") from None
    if math.isnan(low) or math.isnan(high) or not 0 <= low <= high:
        raise ValueError(f"`guidance_interval` must have 0 <= low <= high, got {interval!r:.80}")
    return low, high


@dataclass
class TangoPipelineOutput(BaseOutput):
    """``audios``: (clips, samples) at ``pipe.sampling_rate``, or the final latents for ``output_type="latent"``.

    ``latents``: the final denoised latents (clips, channels, frames, bins), float32, in the UNet's
    (scaled) space: exactly what was decoded into each clip. Preference pairs keep them so that
    DPO trains on the clips that were ranked instead of re-encoding their audio.
    """

    audios: np.ndarray | torch.Tensor
    latents: torch.Tensor | None = None


@dataclass
class TangoTrajectory(BaseOutput):
    """What ``TangoPipeline.sample_trajectory`` returns: the clips and the random path that made them.

    ``audios``: (clips, samples) as ``TangoPipelineOutput.audios``; ``latents``: the final latents (float32).
    ``timesteps``: (steps,) the training timestep of each stochastic step, noisiest first.
    ``step_latents``: (clips, steps + 1, channels, frames, bins) float32: the latent before each stochastic
    step, then the latent after the last one (the deterministic steps continue from it).
    ``log_probs``: (clips, steps) float32: the log-density of each stochastic transition under the model
    that sampled it (``ddim_step_with_log_prob``), what a policy-gradient trainer compares against.
    """

    audios: np.ndarray | torch.Tensor
    latents: torch.Tensor
    timesteps: torch.Tensor
    step_latents: torch.Tensor
    log_probs: torch.Tensor


def ddim_step_mean_std(
    model_output: torch.Tensor,
    timestep: int,
    prev_timestep: int,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The Gaussian one DDIM step (Song et al. 2021, eq. 12) draws from, going from ``timestep`` t to
    ``prev_timestep`` s < t (s < 0: the clean end, a_s = a_0).

    With a = alphas_cumprod, the model's prediction gives x0 and eps (v-prediction: x0 = sqrt(a_t) x_t -
    sqrt(1 - a_t) v, eps = sqrt(a_t) v + sqrt(1 - a_t) x_t), and

        std  = eta * sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        mean = sqrt(a_s) x0 + sqrt(1 - a_s - std^2) eps
        x_s  = mean + std * z,  z ~ N(0, I)

    eta = 0 is deterministic DDIM (std 0), eta = 1 the DDPM posterior. Returns ``(mean, std)``, std a scalar tensor.
    """
    if eta < 0:
        raise ValueError(f"`eta` must be >= 0, got {eta!r}")
    a_t = alphas_cumprod[timestep].to(sample.dtype)
    a_s = alphas_cumprod[max(prev_timestep, 0)].to(sample.dtype)
    if prediction_type == "v_prediction":
        x0 = a_t.sqrt() * sample - (1 - a_t).sqrt() * model_output
        eps = a_t.sqrt() * model_output + (1 - a_t).sqrt() * sample
    elif prediction_type == "epsilon":
        x0 = (sample - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
        eps = model_output
    else:
        raise ValueError(f"prediction type {prediction_type!r} is not supported (v_prediction or epsilon)")
    std = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
    mean = a_s.sqrt() * x0 + (1 - a_s - std**2).clamp(min=0).sqrt() * eps
    return mean, std


def gaussian_log_prob(value: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(value; mean, std^2 I) per clip, averaged over the latent's elements (DDPO's and Flow-GRPO's
    convention: one scale whatever the latent's size)."""
    log_density = -((value.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, value.ndim)))


def ddim_step_with_log_prob(
    model_output: torch.Tensor,
    timestep: int,
    prev_timestep: int,
    sample: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    eta: float,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One DDIM step (``ddim_step_mean_std``) drawn with ``generator`` (one, or one per clip), and its log-density
    (``gaussian_log_prob``; a trainer re-scoring a recorded transition calls those two itself). eta = 0:
    ``(mean, None)``, a deterministic step has no density."""
    mean, std = ddim_step_mean_std(model_output, timestep, prev_timestep, sample, alphas_cumprod, prediction_type, eta)
    if eta == 0:
        return mean, None
    prev_sample = mean + std * randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
    return prev_sample, gaussian_log_prob(prev_sample, mean, std)


class TangoPipeline(DiffusionPipeline):
    r"""
    Pipeline for text-to-audio generation with Tango and Tango 2.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer of the text encoder (FLAN-T5's SentencePiece tokenizer for real Tango).
        text_encoder ([`~transformers.T5EncoderModel`]):
            Frozen T5 encoder; its last hidden state conditions the UNet through cross-attention.
        unet ([`UNet2DConditionModel`]):
            Denoises the audio latent (8 channels, time x mel/4).
        vae ([`AutoencoderKL`]):
            AudioLDM's VAE: log-mel spectrogram (batch, 1, frames, 64) <-> latent (batch, 8, frames/4, 16).
            `vae.config.scaling_factor` is Tango's `scale_factor`.
        vocoder (`torch.nn.Module`):
            Mel to waveform, e.g. [`~transformers.SpeechT5HifiGan`]: takes (batch, frames, n_mels) and returns
            (batch, samples); its `config.sampling_rate` is the output rate.
        scheduler ([`SchedulerMixin`]):
            Noise scheduler; Tango uses [`DDPMScheduler`] with Stable Diffusion 2.1's config.
        default_num_inference_steps (`int`, defaults to 100):
            Steps used when a call names none: what the model's scheduler needs (Tango's DDPM 100; the tiny
            models' DPM-Solver++ far fewer). Saved in `model_index.json`, so it travels with the weights.
        latent_posterior (`str`, defaults to `"sample"`):
            How the UNet's training latents were drawn from the VAE posterior: `"sample"` (Tango and Tango 2
            sample it) or `"mode"` (the embedded tiny models). Fine-tuning on audio encodes it the same way.
        default_guidance_interval (`dict`, *optional*):
            `{"low": low, "high": high}`: the training timesteps outside which classifier-free guidance is skipped
            when a call names no `guidance_interval`; `None` (Tango's way) guides every step. Saved in
            `model_index.json` (a dict: diffusers reads a two-item list there as a component).
        prompt_check (`str`, *optional*):
            `"module:function"`, a function of a prompt that returns why this model cannot read it, or `None` when
            it can: a model whose text encoder knows only a small language names its check (the embedded
            sound-world models name their grammar's, `soundworld.grammar:why_unreadable`), and a call warns for
            such prompts. `None` (Tango's way): the model reads any text. Saved in `model_index.json`.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae->vocoder"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: T5EncoderModel,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        vocoder: torch.nn.Module,
        scheduler: SchedulerMixin,
        default_num_inference_steps: int = 100,
        latent_posterior: str = "sample",
        default_guidance_interval: dict[str, float] | None = None,
        prompt_check: str | None = None,
    ):
        super().__init__()
        if latent_posterior not in LATENT_POSTERIORS:
            raise ValueError(f"`latent_posterior` must be one of {LATENT_POSTERIORS}, got {latent_posterior!r}")
        if default_guidance_interval is not None:
            bounds = default_guidance_interval
            if not isinstance(bounds, dict) or set(bounds) != {"low", "high"}:
                raise ValueError(f"`default_guidance_interval` must be {{'low': ..., 'high': ...}}, got {bounds!r:.80}")
            low, high = checked_guidance_interval((bounds["low"], bounds["high"]))
            default_guidance_interval = {"low": low, "high": high}
        self._prompt_check = None if prompt_check is None else named_prompt_check(prompt_check)
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            unet=unet,
            vae=vae,
            vocoder=vocoder,
            scheduler=scheduler,
        )
        self.register_to_config(default_num_inference_steps=default_num_inference_steps,
                                latent_posterior=latent_posterior, default_guidance_interval=default_guidance_interval,
                                prompt_check=prompt_check)

    def with_components(self, **components) -> "TangoPipeline":
        """A pipeline sharing this one's components and settings, with ``components`` replaced (a tuned UNet,
        another scheduler): the settings saved in ``model_index.json`` travel with it."""
        settings = {name: self.config[name] for name in SAVED_SETTINGS}
        return type(self)(**{**self.components, **components}, **settings)

    # -- sizes read from the component configs --------------------------------------------

    @property
    def sampling_rate(self) -> int:
        return int(self.vocoder.config.sampling_rate)

    @property
    def vae_scale_factor(self) -> int:
        """Mel frames (and mel bins) per latent position."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame: a HiFi-GAN's total upsampling, or the hop a vocoder names."""
        config = self.vocoder.config
        return int(config.hop_length if "hop_length" in config else math.prod(config.upsample_rates))

    @property
    def default_audio_length_in_s(self) -> float:
        """The clip length the model was trained on (10.24 s for Tango): `unet.config.sample_size[0]` latents."""
        sample_size = self.unet.config.sample_size
        latent_frames = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        return latent_frames * self.vae_scale_factor * self.hop_length / self.sampling_rate

    @property
    def audio_length_range_in_s(self) -> tuple[float, float]:
        """(shortest, longest) `audio_length_in_s` this model accepts: one latent frame block .. 3x its training length."""
        shortest = self.vae_scale_factor * self.latent_frame_multiple * self.hop_length / self.sampling_rate
        return shortest, MAX_LENGTH_FACTOR * self.default_audio_length_in_s

    @property
    def latent_fingerprint(self) -> str:
        """Which latent space this pipeline's latents live in: a hash of the VAE's weights and scaling factor.

        Latents stored with a clip are only meaningful to a model with the same fingerprint (a DPO-tuned
        model shares its base's VAE, so it shares the fingerprint). Computed once per pipeline.
        """
        if getattr(self, "_latent_fingerprint", None) is None:
            digest = hashlib.sha256(repr(float(self.vae.config.scaling_factor)).encode())
            for name, tensor in sorted(self.vae.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._latent_fingerprint = digest.hexdigest()[:16]
        return self._latent_fingerprint

    @property
    def reads_only_the_sound_world(self) -> bool:
        """An embedded sound-world model (``tiny``, ``tiny-dpo`` and models tuned from them: the Griffin-Lim
        vocoder): its text encoder knows only the sound world's prompt grammar, not free text."""
        from .griffinlim import GriffinLimVocoder

        return isinstance(self.vocoder, GriffinLimVocoder)

    @property
    def latent_mel_bins(self) -> int:
        return int(self.vocoder.config.model_in_dim) // self.vae_scale_factor

    # -- helpers --------------------------------------------------------------------------

    def _tokenize(self, texts: list[str], **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.tokenizer(texts, truncation=True, return_tensors="pt", **kwargs)
        return inputs.input_ids, inputs.attention_mask

    def _warn_if_truncated(self, texts: list[str], name: str) -> None:
        limit = self.tokenizer.model_max_length
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False).input_ids]
        if max(lengths) > limit:
            logger.warning(
                f"`{name}` was truncated to the tokenizer's limit of {limit} tokens "
                f"(the longest had {max(lengths)}); the text encoder only sees the beginning."
            )

    def why_unreadable(self, prompt: str) -> str | None:
        """Why this model cannot read ``prompt`` (by the check its ``prompt_check`` setting names), or None: a model
        that names no check reads any text."""
        return None if self._prompt_check is None else self._prompt_check(prompt)

    def guided_steps(self, timesteps, guidance_interval: tuple[float, float] | None = None) -> list[bool]:
        """For each timestep, whether classifier-free guidance runs there: within ``guidance_interval`` (low, high),
        by default ``config.default_guidance_interval``; every step when neither names one."""
        if guidance_interval is None:
            saved = self.config.get("default_guidance_interval")
            guidance_interval = (saved["low"], saved["high"]) if saved else (0, math.inf)
        low, high = checked_guidance_interval(guidance_interval)
        return [low <= float(t) <= high for t in timesteps]

    def _encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, device) -> torch.Tensor:
        return self.text_encoder(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
        ).last_hidden_state

    def encode_prompt(
        self,
        prompt: list[str],
        device: torch.device,
        num_waveforms_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""
        Encodes the prompt as Tango does.

        The prompts are padded to the longest one (+ EOS); the unconditional branch is the
        negative prompt, by default the empty string, padded to the same length, so its
        only attended token is EOS. Both go through T5 with their attention masks and
        are repeated `num_waveforms_per_prompt` times, unconditional half first.

        Returns:
            `(prompt_embeds, attention_mask)`: (batch * num_waveforms_per_prompt * (2 if CFG else 1),
            tokens, hidden) and the matching boolean mask for the UNet's `encoder_attention_mask`.
        """
        max_length = self.tokenizer.model_max_length
        self._warn_if_truncated(prompt, "prompt")
        cond_ids, cond_mask = self._tokenize(prompt, max_length=max_length, padding=True)
        if do_classifier_free_guidance and negative_prompt is not None:
            self._warn_if_truncated(negative_prompt, "negative_prompt")
            neg_ids, _ = self._tokenize(negative_prompt, max_length=max_length, padding=True)
            if neg_ids.shape[1] > cond_ids.shape[1]:
                cond_ids, cond_mask = self._tokenize(prompt, max_length=neg_ids.shape[1], padding="max_length")
        with torch.no_grad():
            prompt_embeds = self._encode_tokens(cond_ids, cond_mask, device)
        prompt_embeds = prompt_embeds.repeat_interleave(num_waveforms_per_prompt, dim=0)
        attention_mask = (cond_mask.to(device) == 1).repeat_interleave(num_waveforms_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, attention_mask

        uncond_texts = negative_prompt if negative_prompt is not None else [""] * len(prompt)
        uncond_ids, uncond_mask = self._tokenize(uncond_texts, max_length=cond_ids.shape[1], padding="max_length")
        with torch.no_grad():
            uncond_embeds = self._encode_tokens(uncond_ids, uncond_mask, device)
        uncond_embeds = uncond_embeds.repeat_interleave(num_waveforms_per_prompt, dim=0)
        uncond_attention = (uncond_mask.to(device) == 1).repeat_interleave(num_waveforms_per_prompt, dim=0)
        return torch.cat([uncond_embeds, prompt_embeds]), torch.cat([uncond_attention, attention_mask])

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        num_inference_steps,
        guidance_scale,
        num_waveforms_per_prompt,
        audio_length_in_s,
        output_type,
    ) -> None:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
            raise TypeError(f"`prompt` has to be a string or a list of strings but is {type(prompt).__name__}")
        if len(prompt) == 0:
            raise ValueError("`prompt` is an empty list: pass at least one prompt")
        if any(not p.strip() for p in prompt):
            raise ValueError(f"`prompt` contains an empty string: {list(prompt)!r:.200}; describe the sound to generate")
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negatives, (list, tuple)) or not all(isinstance(p, str) for p in negatives):
                raise TypeError(
                    f"`negative_prompt` has to be a string or a list of strings but is {type(negative_prompt).__name__}"
                )
            if len(negatives) not in (1, len(prompt)):
                raise ValueError(
                    f"`negative_prompt` has {len(negatives)} entries but `prompt` has {len(prompt)}; "
                    "pass one negative prompt, or one per prompt"
                )
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps!r}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise TypeError(f"`guidance_scale` has to be a number but is {type(guidance_scale).__name__}")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` has to be a finite number >= 0 but is {guidance_scale!r}")
        if (
            isinstance(num_waveforms_per_prompt, bool)
            or not isinstance(num_waveforms_per_prompt, int)
            or num_waveforms_per_prompt < 1
        ):
            raise ValueError(
                f"`num_waveforms_per_prompt` has to be a positive integer but is {num_waveforms_per_prompt!r}"
            )
        if audio_length_in_s is not None:
            if isinstance(audio_length_in_s, bool) or not isinstance(audio_length_in_s, (int, float)):
                raise TypeError(f"`audio_length_in_s` has to be a number but is {type(audio_length_in_s).__name__}")
            shortest, longest = self.audio_length_range_in_s
            if not (shortest <= audio_length_in_s <= longest):
                raise ValueError(
                    f"`audio_length_in_s` has to be between {shortest:g} and {longest:g} seconds for this model "
                    f"(trained on {self.default_audio_length_in_s:g} s) but is {audio_length_in_s!r}"
                )
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"`output_type` has to be 'np', 'pt' or 'latent' but is {output_type!r}")

    @property
    def latent_frame_multiple(self) -> int:
        """The UNet halves the latent's time axis once per down block but the last."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def clip_generators(self, seeds) -> list[torch.Generator]:
        """One generator per clip, seeded ``seeds[i]`` (see ``clip_seeds``), on the device type the pipeline
        runs on: pass as ``generator=`` and each clip is reproducible on its own, whatever its batch or caller."""
        device = "cuda" if self.device.type == "cuda" else "cpu"
        return [torch.Generator(device).manual_seed(int(seed)) for seed in seeds]

    def prepare_latents(
        self, batch_size: int, latent_frames: int, dtype, device, generator, latents=None
    ) -> torch.Tensor:
        shape = (batch_size, self.vae.config.latent_channels, latent_frames, self.latent_mel_bins)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"You passed a list of {len(generator)} generators, but the batch has {batch_size} waveforms "
                "(prompts x num_waveforms_per_prompt): pass one generator, or one per waveform"
            )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` has shape {tuple(latents.shape)} but this call needs {shape}")
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> log-mel (batch, 1, frames, n_mels) through the VAE (Tango's `decode_first_stage`)."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample

    def mel_spectrogram_to_waveform(self, mel_spectrogram: torch.Tensor) -> torch.Tensor:
        """(batch, 1, frames, n_mels) log-mel -> (batch, samples) float32 waveform."""
        mel = mel_spectrogram.squeeze(1).to(self.vocoder.dtype)
        return self.vocoder(mel).float()

    def guided_prediction(
        self,
        latents: torch.Tensor,
        timestep,
        prompt_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        guidance_scale: float,
        guided: bool,
        unet: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """The UNet's prediction for ``latents`` at ``timestep``, with classifier-free guidance when ``guided``.

        ``prompt_embeds``/``attention_mask`` come from ``encode_prompt``: with guidance on, the unconditional half
        first; an unguided step of a guided call runs the prompt half alone (half the work). Float32 out.
        Differentiable: a trainer calls it with gradients on, passing ``unet`` (its policy, wrapped for several
        processes, or the frozen reference) in place of the pipeline's own.
        """
        batch_size = latents.shape[0]
        has_unconditional_half = prompt_embeds.shape[0] == 2 * batch_size
        model_input = torch.cat([latents] * 2) if guided else latents
        conditional = slice(-batch_size, None) if has_unconditional_half and not guided else slice(None)
        prediction = (self.unet if unet is None else unet)(
            model_input.to(self.unet.dtype),
            timestep,
            encoder_hidden_states=prompt_embeds[conditional],
            encoder_attention_mask=attention_mask[conditional],
        ).sample.float()
        if guided:
            unconditional, text = prediction.chunk(2)
            prediction = unconditional + guidance_scale * (text - unconditional)
        return prediction

    # -- generation -----------------------------------------------------------------------

    @torch.no_grad()
    @flush_denormals()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 3.0,
        guidance_interval: tuple[float, float] | None = None,
        num_waveforms_per_prompt: int = 1,
        audio_length_in_s: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[["TangoPipeline", int, int, dict[str, Any]], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> TangoPipelineOutput | tuple:
        r"""
        Generates audio from text.

        Args:
            prompt (`str` or `list[str]`):
                What the clip should contain. Texts longer than the tokenizer's limit are truncated (with a warning).
            negative_prompt (`str` or `list[str]`, *optional*):
                Replaces Tango's empty-string unconditional branch of classifier-free guidance.
            num_inference_steps (`int`, *optional*):
                Denoising steps; defaults to `config.default_num_inference_steps` (100 for Tango, as its demo;
                200 for best quality).
            guidance_scale (`float`, defaults to 3.0):
                Classifier-free guidance weight; guidance is used when it is above 1.
            guidance_interval (`tuple[float, float]`, *optional*):
                `(low, high)`: guide only the steps whose training timestep t has low <= t <= high; the others
                run the UNet on the prompt alone, half the work (Kynkäänniemi et al. 2024: guidance matters
                in the middle of the trajectory). Defaults to `config.default_guidance_interval`; `(0, inf)`
                guides every step.
            num_waveforms_per_prompt (`int`, defaults to 1):
                Clips per prompt. All prompts x clips run as one batched forward (CFG batched too).
            audio_length_in_s (`float`, *optional*):
                Clip length; defaults to the training length (10.24 s for Tango). Rounded up to what the UNet
                accepts and the waveform cut back to the requested length.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Randomness for the initial latents and every DDPM step; a list gives one generator per waveform, so
                each clip is reproducible on its own whatever the batch.
            latents (`torch.Tensor`, *optional*):
                Initial noise of shape (batch * num_waveforms_per_prompt, 8, frames / 4, n_mels / 4).
            output_type (`str`, defaults to `"np"`):
                `"np"` (numpy float32), `"pt"` (torch float32) or `"latent"` (the final latents).
            return_dict (`bool`, defaults to `True`):
                Return a [`TangoPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, *optional*):
                Called as `callback_on_step_end(pipe, step, timestep, callback_kwargs)` after every step, with the
                tensors named in `callback_on_step_end_tensor_inputs`; may return replacements for them.

        Examples:

        Returns:
            [`TangoPipelineOutput`] whose `audios` is (batch * num_waveforms_per_prompt, samples) float32 audio at
            `pipe.sampling_rate` (16 kHz), grouped by prompt, and whose `latents` are the final latents each clip
            was decoded from (float32, on the CPU); or a tuple `(audios,)` when `return_dict` is False.
        """
        # 1. Check inputs
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        self.check_inputs(
            prompt,
            negative_prompt,
            num_inference_steps,
            guidance_scale,
            num_waveforms_per_prompt,
            audio_length_in_s,
            output_type,
        )
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` has {name!r}; allowed: {self._callback_tensor_inputs}"
                )

        # 2. Define call parameters
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        for reason in dict.fromkeys(filter(None, map(self.why_unreadable, prompts))):
            logger.warning(f"this model cannot read the prompt: {reason}")
        if isinstance(negative_prompt, str) or (negative_prompt is not None and len(negative_prompt) == 1):
            negative_prompt = [negative_prompt if isinstance(negative_prompt, str) else negative_prompt[0]]
            negative_prompt = negative_prompt * len(prompts)
        batch_size = len(prompts) * num_waveforms_per_prompt
        device = self._execution_device
        do_classifier_free_guidance = guidance_scale > 1.0

        if audio_length_in_s is None:
            audio_length_in_s = self.default_audio_length_in_s
        samples_per_latent = self.vae_scale_factor * self.hop_length
        requested_samples = int(round(audio_length_in_s * self.sampling_rate))
        latent_frames = math.ceil(requested_samples / samples_per_latent)
        if latent_frames % self.latent_frame_multiple:
            latent_frames += self.latent_frame_multiple - latent_frames % self.latent_frame_multiple
            logger.info(
                f"`audio_length_in_s` {audio_length_in_s} s rounded up to "
                f"{latent_frames * samples_per_latent / self.sampling_rate} s for the UNet; "
                "the waveform is cut back to the requested length."
            )

        # 3. Encode input prompt
        prompt_embeds, attention_mask = self.encode_prompt(
            prompts, device, num_waveforms_per_prompt, do_classifier_free_guidance, negative_prompt
        )
        prompt_embeds = prompt_embeds.to(self.unet.dtype)

        # 4. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        guided_steps = self.guided_steps(timesteps, guidance_interval)

        # 5. Prepare latents. They stay float32 whatever the UNet's dtype: the scheduler's
        # update keeps its precision, and the same seed draws the same noise in fp16 and fp32.
        latents = self.prepare_latents(batch_size, latent_frames, torch.float32, device, generator, latents)

        # 6. Denoising loop. Stochastic schedulers (DDPM) draw from the generator; deterministic ones take none.
        step_options = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                guided = do_classifier_free_guidance and guided_steps[i]
                noise_pred = self.guided_prediction(self.scheduler.scale_model_input(latents, t), t, prompt_embeds,
                                                    attention_mask, guidance_scale, guided)
                latents = self.scheduler.step(noise_pred, t, latents, **step_options).prev_sample

                if callback_on_step_end is not None:
                    available = {"latents": latents, "prompt_embeds": prompt_embeds}
                    callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()

        # 7. Post-process
        if output_type == "latent":
            audio = latents
        else:
            mel_spectrogram = self.decode_latents(latents)
            audio = self.mel_spectrogram_to_waveform(mel_spectrogram)[:, :requested_samples]
            if output_type == "np":
                audio = audio.cpu().numpy().astype(np.float32)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (audio,)
        return TangoPipelineOutput(audios=audio, latents=latents.float().cpu())


    # -- sampling for online preference optimisation ------------------------------------------

    def trajectory_scheduler(self, num_inference_steps: int) -> SchedulerMixin:
        """The DDIM schedule ``sample_trajectory`` steps on: this model's noise schedule and prediction type,
        ``trailing`` spacing (the first step starts from pure noise at t = T - 1), timesteps set."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler.config, timestep_spacing="trailing")
        scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        return scheduler

    @torch.no_grad()
    @flush_denormals()
    def sample_trajectory(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        guidance_interval: tuple[float, float] | None = None,
        num_waveforms_per_prompt: int = 1,
        eta: float = 1.0,
        stochastic_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
    ) -> TangoTrajectory:
        r"""
        Generates audio with a stochastic sampler and records the random path: what online preference
        optimisation (DDPO, GRPO) trains on.

        DDIM steps on the model's own schedule (``trajectory_scheduler``); the first ``stochastic_steps`` draw
        their next latent with ``eta`` > 0 and record it with its log-probability (``ddim_step_with_log_prob``),
        the rest are deterministic DDIM (eta 0). The prompt's layout is set in the first, noisiest steps, so
        training only those costs a fraction of the whole path. Clips are at the model's training length.

        Args:
            prompt, num_inference_steps, guidance_scale, guidance_interval, num_waveforms_per_prompt, generator,
            output_type: as in `__call__` (`output_type` "np", "pt" or "latent").
            eta (`float`, defaults to 1.0):
                Noise of the stochastic steps: 1 is the DDPM posterior, smaller is closer to deterministic DDIM.
            stochastic_steps (`int`, *optional*):
                How many of the first steps are stochastic and recorded; all of them when `None`.

        Returns:
            [`TangoTrajectory`]. Same generator(s), same trajectory: the initial noise and every step's noise
            come from `generator` in order.
        """
        stochastic_steps = num_inference_steps if stochastic_steps is None else stochastic_steps
        self.check_inputs(prompt, None, num_inference_steps, guidance_scale, num_waveforms_per_prompt, None, output_type)
        if not eta > 0:
            raise ValueError(f"`eta` must be > 0 (stochastic steps), got {eta!r}")
        if not 1 <= stochastic_steps <= num_inference_steps:
            raise ValueError(f"`stochastic_steps` must be between 1 and num_inference_steps ({num_inference_steps}), "
                             f"got {stochastic_steps!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch_size = len(prompts) * num_waveforms_per_prompt
        device = self._execution_device
        do_classifier_free_guidance = guidance_scale > 1.0
        prompt_embeds, attention_mask = self.encode_prompt(prompts, device, num_waveforms_per_prompt,
                                                           do_classifier_free_guidance)
        prompt_embeds = prompt_embeds.to(self.unet.dtype)
        scheduler = self.trajectory_scheduler(num_inference_steps)
        timesteps = scheduler.timesteps.tolist()
        guided_steps = self.guided_steps(timesteps, guidance_interval)
        latent_frames = self.unet.config.sample_size[0]
        latents = self.prepare_latents(batch_size, latent_frames, torch.float32, device, generator)

        step_latents, log_probs = [latents], []
        for i, t in enumerate(self.progress_bar(timesteps)):
            prediction = self.guided_prediction(latents, t, prompt_embeds, attention_mask, guidance_scale,
                                                do_classifier_free_guidance and guided_steps[i])
            prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            latents, log_prob = ddim_step_with_log_prob(prediction, t, prev_t, latents, scheduler.alphas_cumprod,
                                                        scheduler.config.prediction_type,
                                                        eta if i < stochastic_steps else 0.0, generator)
            if log_prob is not None:
                step_latents.append(latents)
                log_probs.append(log_prob)
        if output_type == "latent":
            audio = latents
        else:
            audio = self.mel_spectrogram_to_waveform(self.decode_latents(latents))
            audio = audio[:, : int(round(self.default_audio_length_in_s * self.sampling_rate))]
            if output_type == "np":
                audio = audio.cpu().numpy().astype(np.float32)
        return TangoTrajectory(audios=audio, latents=latents.float().cpu(),
                               timesteps=torch.tensor(timesteps[:stochastic_steps]),
                               step_latents=torch.stack(step_latents, dim=1).float().cpu(),
                               log_probs=torch.stack(log_probs, dim=1).float().cpu())
