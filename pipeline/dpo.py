"""Preference losses for diffusion models, each a small pure function.

Every loss takes per-sample denoising losses, Shape: `(batch_size,)` — the mean squared
error of the model's prediction for the chosen (``_w``, "winner") and rejected (``_l``,
"loser") clip of each pair, computed with the *same* noise and timestep for both — and
returns ``(loss, implicit_acc)``: a scalar loss to minimise and the fraction of pairs
the model already ranks correctly (detached). Lower denoising loss is higher likelihood,
so a model prefers the chosen clip when its loss on it drops more than on the rejected one.

Notation: ``Δ_θ = L_w - L_l`` for the policy, ``Δ_ref`` the same for the frozen
reference, and the implicit reward margin

    m = -0.5 · β · (Δ_θ - Δ_ref)

(Tango 2's scaling of Wallace et al. 2023, eq. 14: β = 2000 there). Implicit accuracy
counts a pair as right when m > 0 and half right when m = 0, so a policy equal to its
reference scores exactly 0.5 (Tango 2's own code counts ties as wrong).

``PREFERENCE_LOSSES`` names them for the training script's ``--loss``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _implicit_accuracy(margin: torch.Tensor) -> torch.Tensor:
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().detach()


def reward_margin(
    model_losses_w: torch.Tensor,
    model_losses_l: torch.Tensor,
    ref_losses_w: torch.Tensor,
    ref_losses_l: torch.Tensor,
    beta_dpo: float,
) -> torch.Tensor:
    """Implicit reward margin ``m = -0.5·β·((L_w - L_l)_θ - (L_w - L_l)_ref)``. Shape: `(batch_size,)`."""
    return -0.5 * beta_dpo * ((model_losses_w - model_losses_l) - (ref_losses_w - ref_losses_l))


def diffusion_dpo_loss(
    model_losses_w: torch.Tensor,
    model_losses_l: torch.Tensor,
    ref_losses_w: torch.Tensor,
    ref_losses_l: torch.Tensor,
    beta_dpo: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-DPO (Wallace et al. 2023), as Tango 2 trains it:

        loss = mean(-log σ(m)),   m = -0.5·β·((L_w - L_l)_θ - (L_w - L_l)_ref)

    Policy == reference gives m = 0, loss = log 2 and implicit accuracy 0.5.
    """
    margin = reward_margin(model_losses_w, model_losses_l, ref_losses_w, ref_losses_l, beta_dpo)
    return -F.logsigmoid(margin).mean(), _implicit_accuracy(margin)


def crpo_loss(
    model_losses_w: torch.Tensor,
    model_losses_l: torch.Tensor,
    ref_losses_w: torch.Tensor,
    ref_losses_l: torch.Tensor,
    beta_dpo: float,
    sft_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CRPO (TangoFlux, Hung et al. 2024): Diffusion-DPO plus the chosen clip's own denoising loss,

        loss = mean(-log σ(m)) + λ · mean(L_w,θ)

    The second term keeps the policy a good model of the preferred audio, which plain
    DPO can trade away while it widens the margin.
    """
    dpo, implicit_acc = diffusion_dpo_loss(model_losses_w, model_losses_l, ref_losses_w, ref_losses_l, beta_dpo)
    return dpo + sft_weight * model_losses_w.mean(), implicit_acc


def diffusion_hinge_loss(
    model_losses_w: torch.Tensor,
    model_losses_l: torch.Tensor,
    ref_losses_w: torch.Tensor,
    ref_losses_l: torch.Tensor,
    beta_dpo: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge (SLiC, Zhao et al. 2023) on the same margin: ``loss = mean(max(0, 1 - m))``;
    pairs already separated by a margin of 1 stop pulling."""
    margin = reward_margin(model_losses_w, model_losses_l, ref_losses_w, ref_losses_l, beta_dpo)
    return torch.relu(1 - margin).mean(), _implicit_accuracy(margin)


def diffusion_ipo_loss(
    model_losses_w: torch.Tensor,
    model_losses_l: torch.Tensor,
    ref_losses_w: torch.Tensor,
    ref_losses_l: torch.Tensor,
    beta_dpo: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IPO (Azar et al. 2023) on the same margin: ``loss = mean((m/β - 1/(2β))²)``.

    The log-ratio difference ``m/β`` is pulled to a fixed target instead of to
    infinity, which bounds how far a few easy pairs can move the model.
    """
    margin = reward_margin(model_losses_w, model_losses_l, ref_losses_w, ref_losses_l, beta_dpo)
    return ((margin / beta_dpo - 1 / (2 * beta_dpo)) ** 2).mean(), _implicit_accuracy(margin)


def mapo_loss(
    model_losses_w: torch.Tensor,
    model_losses_l: torch.Tensor,
    beta_mapo: float,
    snr_value: float = 0.2,
    num_train_timesteps: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaPO (Hong et al. 2024), reference-free: no second UNet in memory.

    With the per-sample log-odds proxy ``o(L) = s·L / (exp(s·L) - 1)`` (s = ``snr_value``),

        loss = mean(L_w,θ) - β · mean(log σ(T · (o(L_w) - o(L_l))))

    where T = ``num_train_timesteps`` spreads the margin over the whole denoising
    chain. The first term is plain fine-tuning on the chosen clips; the second widens
    the likelihood margin between chosen and rejected. Implicit accuracy counts pairs
    with ``L_w < L_l``.
    """

    def log_odds(losses: torch.Tensor) -> torch.Tensor:
        scaled = snr_value * losses
        # x / (e^x - 1) -> 1 as x -> 0; keep the limit instead of 0/0.
        return torch.where(scaled > 0, scaled / torch.expm1(scaled).clamp_min(1e-30), torch.ones_like(scaled))

    ratio = F.logsigmoid(num_train_timesteps * (log_odds(model_losses_w) - log_odds(model_losses_l)))
    loss = model_losses_w.mean() - beta_mapo * ratio.mean()
    return loss, _implicit_accuracy(model_losses_l - model_losses_w)


PREFERENCE_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "dpo": diffusion_dpo_loss,
    "crpo": crpo_loss,
    "hinge": diffusion_hinge_loss,
    "ipo": diffusion_ipo_loss,
}
"""Losses that need a reference model, by ``--loss`` name; ``mapo`` is the reference-free one."""
