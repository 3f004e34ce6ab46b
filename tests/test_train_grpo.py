"""Online preference optimisation (issue 33): the stochastic sampler's recorded log-probabilities, the GRPO
losses, and train_grpo.py (an update's direction, resume, several processes, the saved pipeline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

import losses
import train_grpo
from pipeline import load_pipeline
from pipeline.tango import ddim_step_with_log_prob

PROMPT = "a beep then a hiss"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from tests.app_helpers import build_test_pipeline

    return build_test_pipeline(tmp_path_factory.mktemp("grpo") / "model", seed=0)


@pytest.fixture(scope="module")
def small_pipe(small_model):
    pipe = load_pipeline(str(small_model), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def guided_prediction_by_hand(pipe, latents, t, prompt, guidance_scale):
    """Classifier-free guidance written out: unconditional (empty prompt) and conditional UNet calls."""
    embeds, mask = pipe.encode_prompt([prompt] * len(latents), "cpu", 1, True)
    with torch.no_grad():
        out = pipe.unet(torch.cat([latents, latents]), t, encoder_hidden_states=embeds,
                        encoder_attention_mask=mask).sample
    unconditional, text = out.chunk(2)
    return unconditional + guidance_scale * (text - unconditional)


def test_a_recorded_step_log_probability_is_the_gaussian_density_of_that_transition(small_pipe):
    from diffusers import DDIMScheduler

    steps, eta = 8, 0.7  # 1000 / 8 steps: diffusers' DDIM steps to the same next timestep as the trailing schedule
    trajectory = small_pipe.sample_trajectory([PROMPT], num_inference_steps=steps, stochastic_steps=3, eta=eta,
                                              num_waveforms_per_prompt=2, generator=small_pipe.clip_generators([3, 4]),
                                              output_type="latent")
    assert trajectory.timesteps.tolist() == [999, 874, 749]
    assert trajectory.step_latents.shape[:2] == (2, 4) and trajectory.log_probs.shape == (2, 3)
    ddim = DDIMScheduler.from_config(small_pipe.scheduler.config, timestep_spacing="trailing")
    ddim.set_timesteps(steps)
    alphas = ddim.alphas_cumprod.double().numpy()
    for step, t in enumerate(trajectory.timesteps.tolist()):
        before, after = trajectory.step_latents[:, step], trajectory.step_latents[:, step + 1]
        prediction = guided_prediction_by_hand(small_pipe, before, t, PROMPT, 3.0)
        # diffusers' own DDIM update without its noise is the mean; eq. 16's sigma the std
        mean = ddim.step(prediction, t, before, eta=eta, variance_noise=torch.zeros_like(before)).prev_sample
        a_t, a_s = alphas[t], alphas[t - 1000 // steps]
        std = eta * np.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        expected = norm.logpdf(after.double().numpy(), mean.double().numpy(), std).mean(axis=(1, 2, 3))
        np.testing.assert_allclose(trajectory.log_probs[:, step].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_the_same_seed_gives_the_same_trajectory_whatever_the_batch(small_pipe):
    def sample(prompts, seeds):
        return small_pipe.sample_trajectory(prompts, num_inference_steps=6, stochastic_steps=2,
                                            generator=small_pipe.clip_generators(seeds))

    first, again, alone = sample([PROMPT, "two knocks"], [5, 6]), sample([PROMPT, "two knocks"], [5, 6]), sample(["two knocks"], [6])
    assert torch.equal(first.step_latents, again.step_latents) and torch.equal(first.log_probs, again.log_probs)
    np.testing.assert_array_equal(first.audios, again.audios)
    torch.testing.assert_close(first.step_latents[1], alone.step_latents[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(first.step_latents[0, 1:], first.step_latents[1, 1:])  # each clip draws its own noise


def test_a_stochastic_sampler_refuses_what_it_cannot_do(small_pipe):
    with pytest.raises(ValueError, match="stochastic_steps"):
        small_pipe.sample_trajectory(PROMPT, num_inference_steps=4, stochastic_steps=5)
    with pytest.raises(ValueError, match="eta"):
        small_pipe.sample_trajectory(PROMPT, num_inference_steps=4, eta=0.0)
    with pytest.raises(ValueError, match="empty"):
        small_pipe.sample_trajectory("  ", num_inference_steps=4)


def test_a_deterministic_ddim_step_has_no_density():
    sample = torch.randn(1, 2, 4, 4)
    mean, log_prob = ddim_step_with_log_prob(torch.zeros_like(sample), 999, 499, sample,
                                             torch.linspace(0.999, 0.01, 1000), "v_prediction", eta=0.0)
    assert log_prob is None and mean.shape == sample.shape


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2])
    # group 1: mean 0.5, population std sqrt(0.125) = 0.35355; group 2: all equal -> 0
    expected = [0.5 / (0.35355339 + 1e-4), -0.5 / (0.35355339 + 1e-4), 0, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(losses.group_advantages(rewards, 4).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_grpo_loss_by_hand():
    log_prob = torch.tensor([0.1, 0.0, -0.2], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, -2.0])
    loss, metrics = losses.grpo_loss(log_prob, torch.zeros(3), advantages, clip_range=0.05,
                                     kl=torch.tensor([0.2, 0.4, 0.0]), beta=0.5)
    ratio = np.exp([0.1, 0.0, -0.2])
    # clip 1: A > 0, ratio 1.105 above 1.05 -> the clipped term -1.05 is the larger; clip 2: ratio 1 -> +1;
    # clip 3: A < 0, ratio 0.819 below 0.95 -> max(2 * 0.819, 2 * 0.95) = 1.9 (clipped)
    expected = np.mean([max(-ratio[0], -1.05), 1.0, max(2 * ratio[2], 2 * 0.95)]) + 0.5 * 0.2
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert metrics == {"clip_fraction": pytest.approx(2 / 3), "kl": pytest.approx(0.2)}
    loss.backward()
    np.testing.assert_allclose(log_prob.grad.numpy(), [0.0, 1.0 / 3, 0.0], atol=1e-7)  # clipped clips pass no gradient


def test_one_update_raises_the_log_probability_of_the_rewarded_trajectory(small_model):
    """The trainer's own step (``train_grpo.policy_step`` + ``losses.grpo_loss``) on one group whose first clip
    alone scored: one optimizer step makes that clip's recorded path likelier and the others' less likely."""
    import copy

    args = train_grpo.parse_args(["--output_dir", "unused", "--num_inference_steps", "6", "--stochastic_steps", "2",
                                  "--beta_kl", "0"])
    pipe = load_pipeline(str(small_model), device="cpu")
    policy = pipe.with_components(unet=copy.deepcopy(pipe.unet))
    policy.set_progress_bar_config(disable=True)
    trajectory = policy.sample_trajectory([PROMPT], num_inference_steps=6, stochastic_steps=2,
                                          num_waveforms_per_prompt=4, generator=policy.clip_generators(range(4)))
    advantages = losses.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    scheduler = policy.trajectory_scheduler(6)
    guided = policy.guided_steps(scheduler.timesteps.tolist())
    embeds, mask = policy.encode_prompt([PROMPT] * 4, "cpu", 1, True)
    batch = {"step_latents": trajectory.step_latents, "prompt_embeds": embeds, "attention_mask": mask}

    def path_log_probs():
        return sum(train_grpo.policy_step(policy, policy.unet, None, batch, step, args, scheduler, guided)[0]
                   for step in range(2))

    before = path_log_probs().detach()
    torch.testing.assert_close(before, trajectory.log_probs.sum(dim=1), rtol=1e-4, atol=1e-4)  # re-scored exactly
    optimizer = torch.optim.SGD(policy.unet.parameters(), lr=1e-3)
    total = sum(losses.grpo_loss(train_grpo.policy_step(policy, policy.unet, None, batch, step, args, scheduler,
                                                        guided)[0], trajectory.log_probs[:, step], advantages, 1.0)[0]
                for step in range(2))
    total.backward()
    optimizer.step()
    change = path_log_probs().detach() - before
    assert change[0] > 0 and (change[1:] < 0).all(), change


def run(out: Path, model, *extra: str) -> dict:
    """A short run; on the shipped ``tiny`` by default (a random-weight model's clips all score 0: nothing to learn)."""
    assert train_grpo.main(["--pretrained_model", str(model), "--output_dir", str(out), "--prompts_per_iteration", "2",
                            "--group_size", "4", "--num_inference_steps", "4", "--stochastic_steps", "2",
                            "--train_batch_size", "2", "--validation_prompts", "4", "--validation_every", "1",
                            "--learning_rate", "1e-3", *extra]) == 0
    return json.loads((out / "train_metrics.json").read_text())


def unet_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_a_killed_run_resumes_to_the_same_state(tmp_path):
    from pipeline.specs import EMBEDDED

    straight = run(tmp_path / "straight", "tiny", "--iterations", "2")
    run(tmp_path / "killed", "tiny", "--iterations", "1")
    (tmp_path / "killed" / ".partial-checkpoint").mkdir()  # killed while writing the next checkpoint
    (tmp_path / "killed" / ".partial-checkpoint" / "model.safetensors").write_bytes(b"half")
    resumed = run(tmp_path / "killed", "tiny", "--iterations", "2", "--resume")
    assert [r["reward_mean"] for r in resumed["train"]] == [r["reward_mean"] for r in straight["train"]]
    assert all(r["groups_trained"] > 0 for r in straight["train"])
    assert len(resumed["validation"]) == len(straight["validation"]) == 3
    a, b = unet_weights(tmp_path / "straight" / "final"), unet_weights(tmp_path / "killed" / "final")
    base = unet_weights(EMBEDDED["tiny"])
    assert any(not a[k].equal(base[k]) for k in a)  # it trained
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit, match="other settings"):
        run(tmp_path / "killed", "tiny", "--iterations", "3", "--resume", "--learning_rate", "1e-4")


def test_the_output_loads_as_a_pipeline_with_its_curves_and_card(tmp_path, small_model):
    out = tmp_path / "run"
    metrics = run(out, small_model, "--iterations", "1", "--lora_rank", "0")
    assert set(metrics["train"][0]) >= {"reward_mean", "kl", "clip_fraction", "groups_trained", "seconds"}
    assert {"score", "recall", "order", "extra_events"} <= set(metrics["validation"][0])
    for folder in ("best", "final"):
        pipe = load_pipeline(str(out / folder), device="cpu")
        assert type(pipe.unet).__name__ == "TimePositionUNet"
    assert (out / "training_curves.png").stat().st_size > 10_000
    card = (out / "README.md").read_text()
    assert "GRPO" in card and "full UNet" in card and "{" not in card


def test_help_names_the_reward_choices_and_bad_flags_are_refused():
    done = subprocess.run([sys.executable, "train_grpo.py", "--help"], capture_output=True, text=True,
                          cwd=Path(train_grpo.__file__).parent)
    assert done.returncode == 0 and "judge" in done.stdout and "reward:PATH" in done.stdout and "clap" in done.stdout
    for flags, message in [(["--reward", "votes"], "judge, clap or reward:PATH"),
                           (["--group_size", "1"], "at least 2"),
                           (["--stochastic_steps", "20", "--num_inference_steps", "10"], "cannot exceed")]:
        done = subprocess.run([sys.executable, "train_grpo.py", "--output_dir", "x", *flags], capture_output=True,
                              text=True, cwd=Path(train_grpo.__file__).parent)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_two_cpu_processes_share_the_sampling_and_train_one_model(tmp_path):
    from pipeline.specs import EMBEDDED

    out = tmp_path / "two"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               str(Path(train_grpo.__file__)), "--pretrained_model", "tiny", "--output_dir", str(out),
               "--prompts_per_iteration", "2", "--group_size", "4", "--num_inference_steps", "4",
               "--stochastic_steps", "2", "--train_batch_size", "2", "--iterations", "2", "--validation_prompts", "0",
               "--learning_rate", "1e-3"]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert json.loads((out / "train_config.json").read_text())["num_processes"] == 2
    assert [r["clips"] for r in metrics["train"]] == [8, 8]  # both processes' clips gathered
    assert all(r["groups_trained"] > 0 for r in metrics["train"])
    tuned, base = unet_weights(out / "final"), unet_weights(EMBEDDED["tiny"])
    assert any(not tuned[k].equal(base[k]) for k in tuned)
    assert type(load_pipeline(str(out / "final"), device="cpu").unet).__name__ == "TimePositionUNet"


def test_a_prompts_file_is_read_as_everywhere_and_never_yields_a_validation_prompt(tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("# my campaign\na beep\n\ntwo knocks\na beep\na hiss\n")
    held_out = train_grpo.validation_prompts(str(prompts_file), 1, seed=0)
    assert held_out == ["a beep"]
    drawn = train_grpo.prompt_source(str(prompts_file), held_out)(seed=3, n=6)
    assert len(drawn) == 6 and set(drawn) <= {"two knocks", "a hiss"}
