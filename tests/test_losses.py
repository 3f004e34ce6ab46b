"""The training losses against hand-computed values, at extremes, and in the direction they push."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from losses import (LOSS_NAMES, PreferenceLossConfig, crpo_loss, denoising_loss, dpo_loss, hinge_loss, ipo_loss,
                    mapo_loss, preference_loss, reward_margin)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_hand_computed():
    # Δθ = 0.1 - 0.2 = -0.1, Δref = 0 -> m = -0.5 * 10 * -0.1 = 0.5
    loss, metrics = preference_loss(PreferenceLossConfig("dpo", beta_dpo=10), t(0.1), t(0.2), t(0.15), t(0.15))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    assert metrics["implicit_acc"].item() == 1.0 and metrics["reward_margin"].item() == pytest.approx(0.5)
    # margins +0.5 and -0.5 in one batch
    loss, metrics = preference_loss(PreferenceLossConfig("dpo", beta_dpo=10), t(0.1, 0.2), t(0.2, 0.1),
                                    t(0.15, 0.15), t(0.15, 0.15))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.5))) / 2)
    assert metrics["implicit_acc"].item() == 0.5 and metrics["reward_margin"].item() == pytest.approx(0.0)
    assert metrics["loss_chosen"].item() == pytest.approx(0.15) and not metrics["loss_chosen"].requires_grad


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n not in ("mapo", "sft")])
def test_policy_equal_to_reference(name):
    losses_w, losses_l = t(0.3, 0.1, 0.7), t(0.2, 0.4, 0.7)
    loss, metrics = preference_loss(PreferenceLossConfig(name, beta_dpo=2000), losses_w, losses_l, losses_w, losses_l)
    expected = {
        "dpo": math.log(2),
        "crpo": math.log(2) + 2000 / 4 * losses_w.mean().item(),
        "hinge": 1.0,
        "ipo": (1 / (2 * 2000)) ** 2,
    }[name]
    assert loss.item() == pytest.approx(expected)
    assert metrics["implicit_acc"].item() == 0.5 and metrics["reward_margin"].item() == 0.0


def test_each_variant_hand_computed():
    margin = reward_margin(t(0.1), t(0.2), t(0.15), t(0.15), beta_dpo=10)  # m = 0.5
    assert margin.item() == pytest.approx(0.5)
    assert dpo_loss(margin).item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    # λ = 2 relative to β = 10: 2 * 10/4 * 0.1
    assert crpo_loss(margin, t(0.1), sft_weight=2.0, beta_dpo=10).item() == pytest.approx(
        math.log(1 + math.exp(-0.5)) + 0.5)
    assert hinge_loss(margin).item() == pytest.approx(0.5)
    assert ipo_loss(margin, beta_dpo=10).item() == pytest.approx(0.0)  # m/β = 0.05 = 1/(2β)
    assert ipo_loss(t(0.0), beta_dpo=10).item() == pytest.approx(0.05**2)


def test_crpo_anchor_matches_dpo_pull_at_the_start():
    """λ = 1: at policy == reference the chosen clip's loss gets the SFT term's gradient equal to DPO's, for any β."""
    for beta in (100.0, 2000.0):
        policy_w = t(0.3).requires_grad_()
        dpo_part = dpo_loss(reward_margin(policy_w, t(0.4), t(0.3), t(0.4), beta))
        (dpo_grad,) = torch.autograd.grad(dpo_part.sum(), policy_w)
        policy_w = t(0.3).requires_grad_()
        crpo = crpo_loss(reward_margin(policy_w, t(0.4), t(0.3), t(0.4), beta), policy_w, 1.0, beta)
        (crpo_grad,) = torch.autograd.grad(crpo.sum(), policy_w)
        assert (crpo_grad - dpo_grad).item() == pytest.approx(dpo_grad.item()) == pytest.approx(beta / 4)


def test_mapo_hand_computed():
    odds = lambda x: 0.2 * x / math.expm1(0.2 * x)  # noqa: E731
    expected_ratio = -math.log(1 + math.exp(-1000 * (odds(0.1) - odds(0.2))))
    assert mapo_loss(t(0.1), t(0.2), beta_mapo=0.5).item() == pytest.approx(0.1 - 0.5 * expected_ratio)
    config = PreferenceLossConfig("mapo", beta_mapo=0.5, mapo_snr_value=0.2, num_train_timesteps=1000)
    loss, metrics = preference_loss(config, t(0.1), t(0.2))  # no reference needed
    assert loss.item() == pytest.approx(0.1 - 0.5 * expected_ratio)
    assert metrics["implicit_acc"].item() == 1.0 and "reward_margin" not in metrics
    assert torch.isfinite(mapo_loss(t(0.0), t(1e-12), beta_mapo=0.5))


def test_sft_trains_on_the_chosen_clip_only_and_still_reports_the_margin():
    loss, metrics = preference_loss(PreferenceLossConfig("sft", beta_dpo=10), t(0.1, 0.3), t(0.2, 0.2), t(0.15, 0.15),
                                    t(0.15, 0.15))
    assert loss.item() == pytest.approx(0.2)
    assert metrics["reward_margin"].item() == pytest.approx((0.5 - 0.5) / 2)  # m = +0.5 and -0.5


def test_reference_losses_refuse_to_run_without_a_reference():
    with pytest.raises(ValueError, match="needs the reference"):
        preference_loss(PreferenceLossConfig("dpo"), t(0.1), t(0.2))
    with pytest.raises(ValueError, match="must be one of"):
        PreferenceLossConfig("kto")


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e4])
def test_extreme_values_stay_finite(name, scale):
    generator = torch.Generator().manual_seed(0)
    losses = [torch.rand(16, generator=generator, dtype=torch.float32) * scale for _ in range(4)]
    loss, metrics = preference_loss(PreferenceLossConfig(name, beta_dpo=2000), *losses)
    assert torch.isfinite(loss) and 0.0 <= metrics["implicit_acc"].item() <= 1.0
    assert all(torch.isfinite(value) for value in metrics.values())


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n != "sft"])
def test_a_gradient_step_prefers_the_chosen_clip(name):
    """A toy 'model' whose losses on the chosen and rejected clip depend on one parameter each:
    descending the loss must widen (L_l - L_w) relative to the frozen reference."""
    theta = torch.zeros(2, requires_grad=True)
    ref_w, ref_l = t(0.5), t(0.5)

    def model_losses():
        return (0.5 + theta[0]).reshape(1).double(), (0.5 + theta[1]).reshape(1).double()

    optimizer = torch.optim.SGD([theta], lr=1e-4)
    for _ in range(3):
        loss, _ = preference_loss(PreferenceLossConfig(name, beta_dpo=50, beta_mapo=0.5), *model_losses(), ref_w, ref_l)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    losses_w, losses_l = model_losses()
    assert (losses_l - losses_w).item() > 0
    assert theta.grad is not None and theta.detach().abs().sum() > 0


class ConstantUNet(torch.nn.Module):
    """Predicts a fixed tensor whatever it is given, so the loss can be computed by hand."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, sample, timestep, encoder_hidden_states=None, encoder_attention_mask=None):
        return type("Output", (), {"sample": self.value})()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_denoising_loss_hand_computed(prediction_type, snr_gamma):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    x0 = torch.full((2, 1, 1, 1), 2.0)
    noise = torch.full((2, 1, 1, 1), 1.0)
    timesteps = torch.tensor([10, 900])
    unet = ConstantUNet(torch.zeros(2, 1, 1, 1))  # the loss is then the target squared
    losses = denoising_loss(unet, scheduler, x0, noise, timesteps, None, None, snr_gamma=snr_gamma)
    assert losses.shape == (2,)
    for i, step in enumerate(timesteps.tolist()):
        abar = scheduler.alphas_cumprod[step].item()
        target = 1.0 if prediction_type == "epsilon" else math.sqrt(abar) * 1.0 - math.sqrt(1 - abar) * 2.0
        snr = abar / (1 - abar)
        weight = 1.0 if snr_gamma is None else min(snr, snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        assert losses[i].item() == pytest.approx(weight * target**2, rel=1e-5)
    if snr_gamma is not None:  # at t=10 the SNR is far above 5: the weight cuts the easy step down
        assert losses[0] < denoising_loss(unet, scheduler, x0, noise, timesteps, None, None)[0]
