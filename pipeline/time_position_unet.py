"""TimePositionUNet: a UNet2DConditionModel that knows where in the clip each frame sits.

Real Tango's UNet takes the 8-channel latent alone. A convolutional UNet then knows
absolute time only near the clip's edges, and its attention layers (which carry no
positional encoding in diffusers) know it not at all; yet "a hiss then two knocks"
needs early vs late everywhere, and most where the text is read. This subclass, used
by the embedded tiny models, adds time position in two places:

- input maps: ``in_channels - out_channels`` maps (a ramp from -1 to 1 along time,
  then sin/cos pairs of rising frequency) appended to the latent;
- at every attention block: a learned 1x1 projection of the same maps (at that block's
  resolution) added to the hidden states, so each query of cross-attention knows which
  stretch of time it draws and can pick that part of the prompt. The projections start
  at zero, so a UNet2DConditionModel's weights load unchanged and give the same output.

Callers run it as any UNet: ``unet(latents, t, encoder_hidden_states=..., encoder_attention_mask=...)``
with the 8-channel latent; it saves and loads with ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import inspect
import math

import torch
from diffusers import UNet2DConditionModel
# diffusers' pipeline loader finds a custom component's load method through the base classes its module exposes.
from diffusers import ModelMixin  # noqa: F401


def time_position_maps(frames: int, count: int, device=None, dtype=None) -> torch.Tensor:
    """``(count, frames)`` maps of where each frame sits: a ramp, then sin/cos pairs of rising frequency."""
    ramp = torch.linspace(-1.0, 1.0, frames, device=device, dtype=dtype)
    maps = [ramp]
    for k in range(1, count):
        maps.append(torch.sin(math.pi * ((k + 1) // 2) * ramp + (math.pi / 2 if k % 2 == 0 else 0.0)))
    return torch.stack(maps)


class TimePositionUNet(UNet2DConditionModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.position_channels < 1:
            raise ValueError(
                f"TimePositionUNet needs in_channels > out_channels (the extra ones are position maps); got "
                f"in_channels={self.config.in_channels}, out_channels={self.config.out_channels}"
            )
        attentions = [attn for block in (*self.down_blocks, self.mid_block, *self.up_blocks)
                      for attn in getattr(block, "attentions", None) or []]
        self.time_position_projections = torch.nn.ModuleList(
            torch.nn.Conv2d(self.position_channels, attn.config.in_channels, 1) for attn in attentions
        )
        for projection, attn in zip(self.time_position_projections, attentions):
            torch.nn.init.zeros_(projection.weight)
            torch.nn.init.zeros_(projection.bias)
            attn.register_forward_pre_hook(AddTimePosition(projection))

    # diffusers builds a model from its config by reading the __init__ signature: keep the parent's.
    __init__.__signature__ = inspect.signature(UNet2DConditionModel.__init__)

    @property
    def position_channels(self) -> int:
        return self.config.in_channels - self.config.out_channels

    def forward(self, sample: torch.Tensor, *args, **kwargs):
        """``sample`` is the latent alone (``out_channels`` channels); the position maps are added here."""
        position = position_maps_like(sample, self.position_channels).expand(sample.shape[0], -1, -1, sample.shape[3])
        return super().forward(torch.cat([sample, position], dim=1), *args, **kwargs)


def position_maps_like(like: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` position maps shaped ``(1, count, frames, 1)`` for a ``(batch, _, frames, bins)`` tensor."""
    return time_position_maps(like.shape[2], count, like.device, like.dtype)[None, :, :, None]


class AddTimePosition:
    """Forward pre-hook of one attention block: adds its projection of the position maps to the hidden states.

    An object holding its projection, not a closure: ``copy.deepcopy`` of the UNet (train_dpo.py's policy is a
    copy of the reference) copies the object and points it at the copy's own projection, where a closure would
    be shared and keep calling the original's, leaving the copy's projections without gradients (issue 23).
    """

    def __init__(self, projection: torch.nn.Conv2d):
        self.projection = projection

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple:
        hidden_states, *rest = args
        position = position_maps_like(hidden_states, self.projection.in_channels)
        return (hidden_states + self.projection(position), *rest)
