"""The losses train_dpo.py trains with: the per-sample denoising loss and the preference losses.

One call gives a preference loss and its metrics::

    config = PreferenceLossConfig(name="dpo", beta_dpo=2000)
    loss, metrics = preference_loss(config, policy_w, policy_l, ref_w, ref_l)

Every preference loss starts from per-sample denoising losses, Shape: `(batch_size,)` — the
mean squared error of a UNet's prediction (``denoising_loss``) for the chosen (``_w``,
"winner") and rejected (``_l``, "loser") clip of each pair, computed with the *same* noise and
timestep for both, by the policy and (for the losses that need one) by the frozen reference.
Lower denoising loss is higher likelihood, so the policy prefers the chosen clip when its loss
on it drops more than on the rejected one. The implicit reward margin is

    m = -0.5 · β · ((L_w - L_l)_θ - (L_w - L_l)_ref)

(Tango 2's scaling of Wallace et al. 2023, eq. 14: β = 2000 there). Each variant below is a
small pure function of ``m`` (or of the losses) returning per-pair losses, Shape:
`(batch_size,)`; ``preference_loss`` computes ``m`` once, averages, and returns the metrics
detached. Implicit accuracy counts a pair as right when m > 0 and half right when m = 0, so a
policy equal to its reference scores exactly 0.5 (Tango 2's own code counts ties as wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

# torch is imported inside the functions that compute: LOSS_NAMES and PreferenceLossConfig load without it,
# so train_dpo.py reads its flags (and answers --help) before torch loads.
if TYPE_CHECKING:
    import torch

# -- the denoising loss (both training scripts) ---------------------------------------------


def denoising_loss(
    unet,
    scheduler,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_attention_mask: torch.Tensor,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Per-sample denoising loss of ``unet`` on clean ``latents``. Shape: `(batch_size,)`.

        x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε          (scheduler.add_noise)
        target = ε                           (prediction_type "epsilon")
               = √ᾱ_t·ε - √(1-ᾱ_t)·x_0       (prediction_type "v_prediction": Tango, SD 2.1)
        L = w_t · mean over (C, T, F) of (unet(x_t, t) - target)²

    with ``w_t = 1`` by default, or min-SNR-γ weighting (Hang et al. 2023) when ``snr_gamma``
    is given: ``w_t = min(SNR_t, γ) / SNR_t`` for ε and ``min(SNR_t, γ) / (SNR_t + 1)`` for v,
    where ``SNR_t = ᾱ_t / (1 - ᾱ_t)`` (Tango trains with γ = 5).
    """
    import torch.nn.functional as F

    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    elif prediction_type == "epsilon":
        target = noise
    else:
        raise ValueError(f"`scheduler.config.prediction_type` must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    prediction = unet(noisy, timesteps, encoder_hidden_states=encoder_hidden_states,
                      encoder_attention_mask=encoder_attention_mask).sample
    losses = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=tuple(range(1, prediction.ndim)))
    if snr_gamma is None:
        return losses
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = snr.clamp(max=snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    return weights * losses


# -- preference losses, each a pure function of per-pair quantities -------------------------


def reward_margin(policy_w, policy_l, ref_w, ref_l, beta_dpo: float) -> torch.Tensor:
    """Implicit reward margin ``m = -0.5·β·((L_w - L_l)_θ - (L_w - L_l)_ref)``. Shape: `(batch_size,)`."""
    return -0.5 * beta_dpo * ((policy_w - policy_l) - (ref_w - ref_l))


def dpo_loss(margin: torch.Tensor) -> torch.Tensor:
    """Diffusion-DPO (Wallace et al. 2023), as Tango 2 trains it: ``-log σ(m)``.

    Policy == reference gives m = 0 and a loss of log 2.
    """
    import torch.nn.functional as F

    return -F.logsigmoid(margin)


def crpo_loss(margin: torch.Tensor, policy_w: torch.Tensor, sft_weight: float, beta_dpo: float) -> torch.Tensor:
    """CRPO (TangoFlux, Hung et al. 2024): ``-log σ(m) + λ·(β/4)·L_w,θ``, λ = ``sft_weight``.

    The second term keeps the policy a good model of the preferred audio, which plain DPO
    can trade away while it widens the margin. Its weight is relative to β: at m = 0 the DPO
    term pulls on ``L_w,θ`` with ∂/∂L_w = β/4, so λ = 1 anchors the chosen clip exactly as
    hard as DPO starts pulling it, whatever β (an absolute λ = 1 was 1/500 of DPO's pull at
    β = 2000, and anchored nothing).
    """
    return dpo_loss(margin) + sft_weight * beta_dpo / 4 * policy_w


def hinge_loss(margin: torch.Tensor) -> torch.Tensor:
    """Hinge (SLiC, Zhao et al. 2023) on the same margin: ``max(0, 1 - m)``; pairs already
    separated by a margin of 1 stop pulling."""
    return (1 - margin).relu()


def ipo_loss(margin: torch.Tensor, beta_dpo: float) -> torch.Tensor:
    """IPO (Azar et al. 2023) on the same margin: ``(m/β - 1/(2β))²``.

    The log-ratio difference ``m/β`` is pulled to a fixed target instead of to infinity,
    which bounds how far a few easy pairs can move the model.
    """
    return (margin / beta_dpo - 1 / (2 * beta_dpo)) ** 2


def mapo_loss(policy_w, policy_l, beta_mapo: float, snr_value: float = 0.2, num_train_timesteps: int = 1000) -> torch.Tensor:
    """MaPO (Hong et al. 2024), reference-free: no second UNet is run.

    With the per-sample log-odds proxy ``o(L) = s·L / (exp(s·L) - 1)`` (s = ``snr_value``),

        loss = L_w,θ - β · log σ(T · (o(L_w) - o(L_l)))

    where T = ``num_train_timesteps`` spreads the margin over the whole denoising chain. The
    first term is plain fine-tuning on the chosen clips; the second widens the likelihood
    margin between chosen and rejected.
    """
    import torch
    import torch.nn.functional as F

    def log_odds(losses: torch.Tensor) -> torch.Tensor:
        scaled = snr_value * losses
        # x / (e^x - 1) -> 1 as x -> 0; keep the limit instead of 0/0.
        return torch.where(scaled > 0, scaled / torch.expm1(scaled).clamp_min(1e-30), torch.ones_like(scaled))

    return policy_w - beta_mapo * F.logsigmoid(num_train_timesteps * (log_odds(policy_w) - log_odds(policy_l)))


def sft_loss(policy_w: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning on the chosen clips only: ``L_w,θ`` (Tango 2's first epoch, and
    the "SFT on chosen" baseline). The rejected clip is ignored."""
    return policy_w


LOSS_NAMES = ("dpo", "crpo", "hinge", "ipo", "mapo", "sft")
REFERENCE_FREE = ("mapo", "sft")


# -- the one entry point -------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceLossConfig:
    """Which loss and its constants (train_dpo.py's ``--loss``, ``--beta_dpo``, ...)."""

    name: str = "dpo"
    beta_dpo: float = 2000.0  # margin scale of dpo, crpo, hinge, ipo (Tango 2: 2000)
    sft_weight: float = 1.0  # λ of crpo, relative to β (crpo_loss)
    beta_mapo: float = 0.1  # margin weight of mapo
    mapo_snr_value: float = 0.2  # s of mapo's log-odds proxy
    num_train_timesteps: int = 1000  # T of mapo
    snr_gamma: float | None = None  # min-SNR-γ weighting of the per-sample denoising losses (denoising_loss)

    def __post_init__(self):
        if self.name not in LOSS_NAMES:
            raise ValueError(f"`name` must be one of {LOSS_NAMES}, got {self.name!r}")

    @property
    def needs_reference(self) -> bool:
        return self.name not in REFERENCE_FREE


def implicit_accuracy(margin: torch.Tensor) -> torch.Tensor:
    """Share of pairs with m > 0, ties counted half. Shape: `()`."""
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()


def preference_loss(
    config: PreferenceLossConfig,
    policy_w: torch.Tensor,
    policy_l: torch.Tensor,
    ref_w: torch.Tensor | None = None,
    ref_l: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss named by ``config`` over a batch of pairs, and its detached metrics.

    ``policy_w, policy_l, ref_w, ref_l``: per-sample denoising losses, Shape: `(batch_size,)`;
    the reference pair may be omitted only for the reference-free losses (mapo, sft).
    Returns the scalar loss and ``{"implicit_acc", "loss_chosen", "loss_rejected"}`` plus
    ``"reward_margin"`` (mean m) whenever reference losses are given. Without a reference,
    implicit accuracy counts pairs with ``L_w < L_l``.
    """
    if config.needs_reference and (ref_w is None or ref_l is None):
        raise ValueError(f"loss {config.name!r} needs the reference model's losses `ref_w` and `ref_l`")
    metrics = {"loss_chosen": policy_w.mean(), "loss_rejected": policy_l.mean()}
    if ref_w is not None and ref_l is not None:
        margin = reward_margin(policy_w, policy_l, ref_w, ref_l, config.beta_dpo)
        metrics["reward_margin"] = margin.mean()
    else:
        margin = policy_l - policy_w
    metrics["implicit_acc"] = implicit_accuracy(margin)
    if config.name == "dpo":
        losses = dpo_loss(margin)
    elif config.name == "crpo":
        losses = crpo_loss(margin, policy_w, config.sft_weight, config.beta_dpo)
    elif config.name == "hinge":
        losses = hinge_loss(margin)
    elif config.name == "ipo":
        losses = ipo_loss(margin, config.beta_dpo)
    elif config.name == "mapo":
        losses = mapo_loss(policy_w, policy_l, config.beta_mapo, config.mapo_snr_value, config.num_train_timesteps)
    else:
        losses = sft_loss(policy_w)
    return losses.mean(), {name: value.detach() for name, value in metrics.items()}


# -- online preference optimisation on the sampler's own steps (train_grpo.py) -----------------


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages (Shao et al. 2024; Flow-GRPO): each clip's reward against the other clips of its prompt.

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

    ``rewards``, Shape: `(groups * group_size,)`, the clips of one prompt adjacent; std is the population std.
    A group whose clips all scored the same gets advantage 0 for every clip: it says nothing about which way to go.
    """
    grouped = rewards.reshape(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, unbiased=False, keepdim=True)
    return ((grouped - mean) / (std + eps)).reshape(-1)


def grpo_loss(log_prob, old_log_prob, advantages, clip_range: float, kl=None, beta: float = 0.0):
    """The clipped policy-gradient loss of one denoising step (PPO's, as DDPO and Flow-GRPO use it), plus a KL term.

        ratio = exp(log π_θ(x_s | x_t) - log π_old(x_s | x_t))
        loss  = mean(max(-A · ratio, -A · clip(ratio, 1 - ε, 1 + ε))) + β · mean(KL)

    ``log_prob``: the policy's log-density of each recorded transition (with gradients), ``old_log_prob``: the
    sampler's when it drew it, ``advantages`` from ``group_advantages``, all Shape: `(batch_size,)`; ``kl``: each
    clip's KL(π_θ || π_ref) at this step (Shape: `(batch_size,)`, or None). Returns ``(loss, metrics)``, the
    metrics detached: ``clip_fraction`` (share of clips whose ratio left [1 - ε, 1 + ε]) and the mean ``kl``.
    """
    import torch

    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    metrics = {"clip_fraction": float(((ratio - 1).abs() > clip_range).float().mean()), "kl": 0.0}
    if kl is not None:
        loss = loss + beta * kl.mean()
        metrics["kl"] = float(kl.detach().mean())
    return loss, metrics
