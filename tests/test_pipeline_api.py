"""TangoPipeline's public behaviour: batching, seeds, lengths, round trips, bad input."""

import json
import logging

import numpy as np
import pytest
import torch

from pipeline import TangoPipeline, load_pipeline

PROMPTS = ["A dog barks in the distance while rain falls", "Birds chirp nearby"]
SHORT = 1.28  # seconds: 32 latent frames, keeps these tests fast


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_batched_prompts_and_candidates_equal_separate_calls(fixture_pipe):
    """Two prompts x two candidates run as one batch, and each clip is reproducible on its own."""
    unet_batches = []
    hook = fixture_pipe.unet.register_forward_hook(lambda module, args, out: unet_batches.append(args[0].shape[0]))
    try:
        batched = fixture_pipe(
            PROMPTS,
            num_inference_steps=3,
            num_waveforms_per_prompt=2,
            audio_length_in_s=SHORT,
            generator=generators(1, 2, 3, 4),
        ).audios
    finally:
        hook.remove()
    assert batched.shape == (4, int(SHORT * 16000))
    assert unet_batches == [8, 8, 8]  # one forward per step: 2 prompts x 2 clips x (uncond, cond)

    for index, (prompt, seed) in enumerate([(PROMPTS[0], 1), (PROMPTS[0], 2), (PROMPTS[1], 3), (PROMPTS[1], 4)]):
        alone = fixture_pipe(
            prompt, num_inference_steps=3, audio_length_in_s=SHORT, generator=generators(seed)
        ).audios[0]
        np.testing.assert_allclose(batched[index], alone, atol=1e-4)
    assert not np.allclose(batched[0], batched[1], atol=1e-3)  # different seeds, different clips


def test_same_seed_same_audio_and_guidance_changes_it(fixture_pipe):
    def run(seed, guidance=3.0):
        return fixture_pipe(
            PROMPTS[1], num_inference_steps=2, guidance_scale=guidance, audio_length_in_s=SHORT,
            generator=torch.Generator().manual_seed(seed),
        ).audios[0]

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.allclose(run(7), run(8), atol=1e-3)
    assert not np.allclose(run(7, guidance=1.0), run(7, guidance=5.0), atol=1e-3)


def test_negative_prompt_replaces_the_empty_unconditional_branch(fixture_pipe):
    embeds, mask = fixture_pipe.encode_prompt([PROMPTS[1]], "cpu", 1, True, negative_prompt=[PROMPTS[0]])
    reference, _ = fixture_pipe.encode_prompt([PROMPTS[0]], "cpu", 1, False)
    # The longer negative prompt sets the padded length; its embedding is unaffected by padding.
    assert embeds.shape[1] == reference.shape[1]
    np.testing.assert_allclose(embeds[0].numpy(), reference[0].numpy(), atol=1e-6)
    assert mask[1].sum() < mask[0].sum()


def test_audio_length_is_rounded_up_for_the_unet_and_cut_back(fixture_pipe):
    audio = fixture_pipe(
        PROMPTS[1], num_inference_steps=1, audio_length_in_s=1.0, generator=torch.Generator().manual_seed(0)
    ).audios
    assert audio.shape == (1, 16000)
    assert fixture_pipe.default_audio_length_in_s == pytest.approx(10.24)


def test_over_long_prompt_is_truncated_with_a_warning(fixture_pipe, caplog):
    long_prompt = "a dog barks " * 400
    caplog.set_level(logging.WARNING)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_propagation()
    try:
        embeds, _ = fixture_pipe.encode_prompt([long_prompt], "cpu", 1, False)
    finally:
        diffusers_logging.disable_propagation()
    assert embeds.shape[1] == fixture_pipe.tokenizer.model_max_length
    assert "truncated" in caplog.text


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"prompt": 42}, TypeError, "`prompt`"),
        ({"prompt": ["ok", None]}, TypeError, "`prompt`"),
        ({"prompt": []}, ValueError, "`prompt`"),
        ({"prompt": "   "}, ValueError, "`prompt`"),
        ({"num_inference_steps": 0}, ValueError, "`num_inference_steps`"),
        ({"num_inference_steps": 2.5}, ValueError, "`num_inference_steps`"),
        ({"guidance_scale": -1.0}, ValueError, "`guidance_scale`"),
        ({"guidance_scale": float("nan")}, ValueError, "`guidance_scale`"),
        ({"guidance_scale": "3"}, TypeError, "`guidance_scale`"),
        ({"num_waveforms_per_prompt": 0}, ValueError, "`num_waveforms_per_prompt`"),
        ({"audio_length_in_s": 0.0}, ValueError, "`audio_length_in_s`"),
        ({"audio_length_in_s": 1000.0}, ValueError, "`audio_length_in_s`"),
        ({"negative_prompt": ["a", "b", "c"]}, ValueError, "`negative_prompt`"),
        ({"output_type": "wav"}, ValueError, "`output_type`"),
        ({"generator": generators(1, 2, 3)}, ValueError, "generators"),
        ({"latents": torch.zeros(1, 8, 3, 16)}, ValueError, "`latents`"),
        ({"guidance_interval": (800, 200)}, ValueError, "`guidance_interval`"),
        ({"guidance_interval": (-1, 200)}, ValueError, "`guidance_interval`"),
        ({"guidance_interval": "early"}, ValueError, "`guidance_interval`"),
    ],
)
def test_bad_input_gets_a_clear_error(fixture_pipe, kwargs, error, message):
    call = {"prompt": "Birds chirp nearby", "num_inference_steps": 1, "audio_length_in_s": SHORT, **kwargs}
    with pytest.raises(error, match=message):
        fixture_pipe(**call)


def test_save_pretrained_round_trip(fixture_pipe, tmp_path):
    fixture_pipe.save_pretrained(tmp_path)
    weights = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.safetensors"))
    assert weights == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "vocoder/model.safetensors",
    ]
    assert not list(tmp_path.rglob("*.bin"))
    reloaded = load_pipeline(str(tmp_path), device="cpu")
    assert isinstance(reloaded, TangoPipeline) and reloaded is not fixture_pipe
    reloaded.set_progress_bar_config(disable=True)
    call = dict(prompt=PROMPTS[0], num_inference_steps=2, audio_length_in_s=SHORT)
    a = fixture_pipe(**call, generator=torch.Generator().manual_seed(3)).audios
    b = reloaded(**call, generator=torch.Generator().manual_seed(3)).audios
    np.testing.assert_array_equal(a, b)
    # Same components come back with the same settings read from their configs.
    assert reloaded.sampling_rate == 16000 and reloaded.hop_length == 160 and reloaded.vae_scale_factor == 4
    assert reloaded.vae.config.scaling_factor == fixture_pipe.vae.config.scaling_factor


def test_time_position_maps():
    from pipeline.time_position_unet import time_position_maps

    maps = time_position_maps(16, 3)
    assert maps.shape == (3, 16)
    ramp = maps[0]
    assert ramp[0] == -1 and ramp[-1] == 1 and torch.all(ramp[1:] > ramp[:-1])
    torch.testing.assert_close(maps[1], torch.sin(torch.pi * ramp))  # then sin/cos pairs of rising frequency
    torch.testing.assert_close(maps[2], torch.cos(torch.pi * ramp))


def test_time_position_unet_is_a_plain_unet_to_its_callers(fixture_pipe, tmp_path):
    """Weights of a UNet2DConditionModel fed latent + position maps by its caller (the old design) give the
    same output inside TimePositionUNet, called with the latent alone; save/load round-trips it and the pipeline
    records its class."""
    from diffusers import UNet2DConditionModel

    from pipeline.time_position_unet import TimePositionUNet, time_position_maps

    config = {**fixture_pipe.unet.config, "in_channels": 11}
    torch.manual_seed(0)
    plain = UNet2DConditionModel.from_config(config)
    unet = TimePositionUNet.from_config(config)
    missing, unexpected = unet.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("time_position_projections.") for name in missing)

    latents, t = torch.randn(2, 8, 16, 4), torch.tensor([10, 500])
    states, mask = torch.randn(2, 5, config["cross_attention_dim"]), torch.ones(2, 5, dtype=torch.bool)
    maps = time_position_maps(16, 3)[None, :, :, None].expand(2, -1, -1, 4)
    with torch.no_grad():
        before = plain(torch.cat([latents, maps], 1), t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        after = unet(latents, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
    torch.testing.assert_close(after, before)

    # The attention-level projections are real parameters: trained ones change the output and survive save/load.
    with torch.no_grad():
        for projection in unet.time_position_projections:
            projection.weight.normal_(std=0.1)
    unet.save_pretrained(tmp_path / "unet")
    reloaded = TimePositionUNet.from_pretrained(tmp_path / "unet")
    with torch.no_grad():
        moved = unet(latents, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        again = reloaded(latents, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
    assert not torch.allclose(moved, before)
    torch.testing.assert_close(again, moved)

    pipe = TangoPipeline(**{**fixture_pipe.components, "unet": unet})
    pipe.set_progress_bar_config(disable=True)
    audio = pipe(PROMPTS[1], num_inference_steps=1, audio_length_in_s=SHORT, generator=torch.Generator().manual_seed(0)).audios
    assert audio.shape == (1, int(SHORT * 16000)) and np.isfinite(audio).all()
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["unet"] == ["pipeline.time_position_unet", "TimePositionUNet"]
    assert isinstance(load_pipeline(str(tmp_path / "pipe")).unet, TimePositionUNet)



def test_a_copied_time_position_unet_trains_its_own_projections(fixture_pipe):
    """train_dpo.py's policy is a deep copy of the reference UNet: the copy's attention blocks must run the copy's
    position projections (under DDP an unused parameter stops training at the second step, issue 23)."""
    import copy

    from pipeline.time_position_unet import TimePositionUNet

    torch.manual_seed(0)
    original = TimePositionUNet.from_config({**fixture_pipe.unet.config, "in_channels": 11})
    policy = copy.deepcopy(original).train()
    latents, t = torch.randn(2, 8, 16, 4), torch.tensor([10, 500])
    states, mask = torch.randn(2, 5, original.config.cross_attention_dim), torch.ones(2, 5, dtype=torch.bool)
    policy(latents, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample.square().mean().backward()
    assert all(p.grad is not None for p in policy.time_position_projections.parameters())
    assert all(p.grad is None for p in original.parameters())
    with torch.no_grad():
        for projection in policy.time_position_projections:
            projection.weight.normal_(std=0.1)
        moved = policy(latents, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        kept = original(latents, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
    assert not torch.allclose(moved, kept)  # the copy's projections act on the copy, and on it alone

def test_default_steps_travel_with_the_model(fixture_pipe, tmp_path):
    """A model saved with its own default steps is sampled with them when a call names none."""
    assert fixture_pipe.config.default_num_inference_steps == 100  # Tango's
    quick = TangoPipeline(**fixture_pipe.components, default_num_inference_steps=2)
    quick.save_pretrained(tmp_path)
    reloaded = load_pipeline(str(tmp_path), device="cpu")
    assert reloaded.config.default_num_inference_steps == 2
    reloaded.set_progress_bar_config(disable=True)
    steps = []
    record = lambda pipe, step, timestep, tensors: steps.append(step) or tensors  # noqa: E731
    reloaded(PROMPTS[0], audio_length_in_s=SHORT, callback_on_step_end=record)
    assert steps == [0, 1]


def test_every_clip_comes_with_the_latent_it_was_decoded_from(fixture_pipe):
    call = dict(num_inference_steps=2, audio_length_in_s=SHORT, num_waveforms_per_prompt=2)
    output = fixture_pipe(PROMPTS[:2], generator=fixture_pipe.clip_generators(range(4)), **call)
    assert output.latents.shape[0] == output.audios.shape[0] == 4 and output.latents.dtype == torch.float32
    with torch.no_grad():
        decoded = fixture_pipe.mel_spectrogram_to_waveform(fixture_pipe.decode_latents(output.latents))
    np.testing.assert_allclose(decoded[:, : output.audios.shape[1]].numpy(), output.audios, atol=1e-5)
    latent_only = fixture_pipe(PROMPTS[:2], generator=fixture_pipe.clip_generators(range(4)), output_type="latent",
                               **call).audios
    torch.testing.assert_close(latent_only.cpu(), output.latents)


def test_latent_space_fingerprint_and_posterior_travel_with_the_model(fixture_pipe, tmp_path):
    """A tuned UNet keeps its base's latent space (same fingerprint); another VAE does not; how the base's training
    latents were drawn is saved with it."""
    tuned = fixture_pipe.with_components(unet=fixture_pipe.unet)
    assert tuned.latent_fingerprint == fixture_pipe.latent_fingerprint
    assert fixture_pipe.config.latent_posterior == "sample"  # Tango samples the posterior
    other_vae = type(fixture_pipe.vae).from_config(fixture_pipe.vae.config)
    assert fixture_pipe.with_components(vae=other_vae).latent_fingerprint != fixture_pipe.latent_fingerprint
    moded = TangoPipeline(**fixture_pipe.components, latent_posterior="mode")
    moded.save_pretrained(tmp_path)
    reloaded = load_pipeline(str(tmp_path), device="cpu")
    assert reloaded.config.latent_posterior == "mode" and reloaded.latent_fingerprint == fixture_pipe.latent_fingerprint
    assert load_pipeline("tiny").config.latent_posterior == "mode"  # the embedded models trained on the mode
    with pytest.raises(ValueError, match="latent_posterior"):
        TangoPipeline(**fixture_pipe.components, latent_posterior="median")


def test_guidance_interval_guides_only_the_steps_within_it(fixture_pipe, tmp_path):
    """Steps outside the interval run the UNet on the prompt alone (half the batch); an interval that holds no step
    is the unguided sampler, one that holds them all is the default; a saved default travels with the model."""
    call = dict(prompt=PROMPTS[0], num_inference_steps=4, audio_length_in_s=SHORT, num_waveforms_per_prompt=2)
    batches = []
    hook = fixture_pipe.unet.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        timesteps = [int(t) for t in (fixture_pipe.scheduler.set_timesteps(4) or fixture_pipe.scheduler.timesteps)]
        low, high = sorted(timesteps)[1], sorted(timesteps)[2]  # the two middle steps
        middle = fixture_pipe(**call, guidance_interval=(low, high), generator=generators(1, 2)).audios
    finally:
        hook.remove()
    assert batches == [4 if low <= t <= high else 2 for t in timesteps]
    full = fixture_pipe(**call, generator=generators(1, 2)).audios
    everywhere = fixture_pipe(**call, guidance_interval=(0, float("inf")), generator=generators(1, 2)).audios
    nowhere = fixture_pipe(**call, guidance_interval=(5000, 6000), generator=generators(1, 2)).audios
    unguided = fixture_pipe(**{**call, "guidance_scale": 1.0}, generator=generators(1, 2)).audios
    np.testing.assert_array_equal(full, everywhere)
    np.testing.assert_allclose(nowhere, unguided, atol=1e-6)
    assert not np.allclose(middle, full) and not np.allclose(middle, unguided)

    saved = {"low": low, "high": high}
    TangoPipeline(**fixture_pipe.components, default_guidance_interval=saved).save_pretrained(tmp_path)
    reloaded = load_pipeline(str(tmp_path), device="cpu")
    assert reloaded.config.default_guidance_interval == saved
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(reloaded(**call, generator=generators(1, 2)).audios, middle)
    assert reloaded.with_components(unet=reloaded.unet).config.default_guidance_interval == saved
    for bad in ([low, high], {"low": high, "high": low}):
        with pytest.raises(ValueError, match="guidance_interval"):
            TangoPipeline(**fixture_pipe.components, default_guidance_interval=bad)


def test_the_prompt_check_comes_from_the_model_folder_and_only_a_registered_one_runs(tmp_path):
    # The embedded models name their grammar's check in model_index.json; a saved copy keeps it; real Tango (no
    # check) reads any text; a folder naming an unregistered function (a Hub folder could name os:system) is refused.
    pipe = load_pipeline("tiny", device="cpu")
    assert "unknown word 'dog'" in pipe.why_unreadable("a dog barks") and pipe.why_unreadable("two knocks") is None
    pipe.save_pretrained(tmp_path / "copy")
    assert load_pipeline(str(tmp_path / "copy"), device="cpu").why_unreadable("a dog barks")
    free_text = pipe.with_components()
    free_text.register_to_config(prompt_check=None)
    free_text.save_pretrained(tmp_path / "free")
    assert load_pipeline(str(tmp_path / "free"), device="cpu").why_unreadable("a dog barks") is None
    pipe.save_pretrained(tmp_path / "hostile")
    index = tmp_path / "hostile" / "model_index.json"
    index.write_text(index.read_text().replace("soundworld.grammar:why_unreadable", "os:system"))
    with pytest.raises(ValueError, match="'os:system' is not a registered prompt check"):
        load_pipeline(str(tmp_path / "hostile"), device="cpu")
