"""Preference losses against hand-computed values, at extremes, and in the direction they push."""

import math

import pytest
import torch

from pipeline.dpo import PREFERENCE_LOSSES, crpo_loss, diffusion_dpo_loss, diffusion_hinge_loss, diffusion_ipo_loss, mapo_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_hand_computed():
    # Δθ = 0.1 - 0.2 = -0.1, Δref = 0 -> m = -0.5 * 10 * -0.1 = 0.5
    loss, acc = diffusion_dpo_loss(t(0.1), t(0.2), t(0.15), t(0.15), beta_dpo=10)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    assert acc.item() == 1.0
    # margins +0.5 and -0.5 in one batch
    loss, acc = diffusion_dpo_loss(t(0.1, 0.2), t(0.2, 0.1), t(0.15, 0.15), t(0.15, 0.15), beta_dpo=10)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.5))) / 2)
    assert acc.item() == 0.5


@pytest.mark.parametrize("loss_type", sorted(PREFERENCE_LOSSES))
def test_policy_equal_to_reference(loss_type):
    losses_w, losses_l = t(0.3, 0.1, 0.7), t(0.2, 0.4, 0.7)
    loss, acc = PREFERENCE_LOSSES[loss_type](losses_w, losses_l, losses_w, losses_l, beta_dpo=2000)
    expected = {
        "dpo": math.log(2),
        "crpo": math.log(2) + losses_w.mean().item(),
        "hinge": 1.0,
        "ipo": (1 / (2 * 2000)) ** 2,
    }[loss_type]
    assert loss.item() == pytest.approx(expected)
    assert acc.item() == 0.5


def test_crpo_hinge_ipo_hand_computed():
    args = (t(0.1), t(0.2), t(0.15), t(0.15))  # m = 0.5 at beta 10
    dpo, _ = diffusion_dpo_loss(*args, beta_dpo=10)
    assert crpo_loss(*args, beta_dpo=10, sft_weight=2.0)[0].item() == pytest.approx(dpo.item() + 2 * 0.1)
    assert diffusion_hinge_loss(*args, beta_dpo=10)[0].item() == pytest.approx(0.5)
    assert diffusion_ipo_loss(*args, beta_dpo=10)[0].item() == pytest.approx(0.0)  # m/β = 0.05 = 1/(2β)
    assert diffusion_ipo_loss(t(0.2), t(0.2), t(0.2), t(0.2), beta_dpo=10)[0].item() == pytest.approx(0.05**2)


def test_mapo_hand_computed():
    odds = lambda x: 0.2 * x / math.expm1(0.2 * x)
    expected_ratio = -math.log(1 + math.exp(-1000 * (odds(0.1) - odds(0.2))))
    loss, acc = mapo_loss(t(0.1), t(0.2), beta_mapo=0.5, snr_value=0.2, num_train_timesteps=1000)
    assert loss.item() == pytest.approx(0.1 - 0.5 * expected_ratio)
    assert acc.item() == 1.0
    assert torch.isfinite(mapo_loss(t(0.0), t(1e-12), beta_mapo=0.5)[0])


@pytest.mark.parametrize("loss_type", sorted(PREFERENCE_LOSSES) + ["mapo"])
@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e4])
def test_extreme_values_stay_finite(loss_type, scale):
    generator = torch.Generator().manual_seed(0)
    losses = [torch.rand(16, generator=generator, dtype=torch.float32) * scale for _ in range(4)]
    if loss_type == "mapo":
        loss, acc = mapo_loss(losses[0], losses[1], beta_mapo=0.5)
    else:
        loss, acc = PREFERENCE_LOSSES[loss_type](*losses, beta_dpo=2000)
    assert torch.isfinite(loss) and 0.0 <= acc.item() <= 1.0


@pytest.mark.parametrize("loss_type", sorted(PREFERENCE_LOSSES) + ["mapo"])
def test_a_gradient_step_prefers_the_chosen_clip(loss_type):
    """A toy 'model' whose losses on the chosen and rejected clip depend on one parameter each:
    descending the loss must widen (L_l - L_w) relative to the frozen reference."""
    theta = torch.zeros(2, requires_grad=True)
    ref_w, ref_l = t(0.5), t(0.5)

    def model_losses():
        return (0.5 + theta[0]).reshape(1).double(), (0.5 + theta[1]).reshape(1).double()

    optimizer = torch.optim.SGD([theta], lr=1e-4)
    for _ in range(3):
        losses_w, losses_l = model_losses()
        if loss_type == "mapo":
            loss, _ = mapo_loss(losses_w, losses_l, beta_mapo=0.5)
        else:
            loss, _ = PREFERENCE_LOSSES[loss_type](losses_w, losses_l, ref_w, ref_l, beta_dpo=50)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    losses_w, losses_l = model_losses()
    assert (losses_l - losses_w).item() > 0
    assert theta.grad is not None and theta.detach().abs().sum() > 0
