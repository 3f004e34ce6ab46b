"""Reordered pairs: one clip's events cut at the silences between them and put in another order."""

import io

import numpy as np
import soundfile as sf
import torch

from annotate.pool import GeneratedClips
from autopairs.reorder import EventRun, ReorderReport, cut_frames, event_runs, rearrange, reordered_pairs
from soundworld import render
from soundworld.grammar import in_test_split, parse
from soundworld.judge import DetectedEvent, heard_order, judge

SAMPLES_PER_FRAME = 640  # 4 mel frames of 160 samples: the tiny model's latent frame, 40 ms at 16 kHz


class FramedWaveformPipe:
    """A pipeline whose latent is the waveform itself in frames of 40 ms: cutting the latent cuts the audio."""

    vae_scale_factor, hop_length, device = 4, 160, "cpu"

    def decode_latents(self, latents):
        return latents

    def mel_spectrogram_to_waveform(self, mel):
        return mel.reshape(mel.shape[0], -1)


class RenderedClips:
    """Stands in for ``PipelineGenerator``: even seeds render the prompt, odd seeds its events in reverse order."""

    sampling_rate, default_steps, pipe = 16000, 7, FramedWaveformPipe()

    def __call__(self, prompts, seeds, steps, guidance):
        waves = []
        for prompt, seed in zip(prompts, seeds):
            text = prompt if seed % 2 == 0 else reversed_prompt(prompt)
            waves.append(render(text, seed)[0][: 96 * SAMPLES_PER_FRAME])
        waves = np.stack(waves).astype(np.float32)
        return GeneratedClips(waves, waves.reshape(len(waves), 1, 96, SAMPLES_PER_FRAME), "framed")


def reversed_prompt(prompt):
    events = parse(prompt).events
    return " then ".join(f"{'two' if count == 2 else 'a'} {name}{'s' if count == 2 else ''}"
                         for name, count in reversed(events)).replace("_", " ")


def test_event_runs_merge_a_count_and_refuse_clips_that_cannot_be_cut():
    heard = [DetectedEvent("knock", 0.1, 0.2), DetectedEvent("knock", 0.5, 0.6), DetectedEvent("hiss", 1.0, 1.5)]
    assert event_runs(heard, ["knock", "hiss"]) == [EventRun("knock", 0.1, 0.6), EventRun("hiss", 1.0, 1.5)]
    assert event_runs(heard[:2], ["knock", "hiss"]) is None  # a prompted type missing
    assert event_runs([*heard, DetectedEvent("beep", 2.0, 2.2)], ["knock", "hiss"]) is None  # one never prompted
    assert event_runs([*heard, DetectedEvent("knock", 2.0, 2.2)], ["knock", "hiss"]) is None  # A B A


def test_cuts_fall_in_the_middle_of_each_silence_and_pieces_keep_every_frame():
    runs = [EventRun("knock", 0.1, 0.6), EventRun("hiss", 1.0, 1.5), EventRun("beep", 2.0, 2.2)]
    assert cut_frames(runs, 0.04, 96) == [0, 20, 44, 96]  # 0.8 s and 1.75 s at 40 ms a frame
    assert cut_frames([EventRun("knock", 0.1, 0.6), EventRun("hiss", 0.62, 1.0)], 0.04, 96) is None  # no silence

    latent = np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3)
    moved = rearrange(latent, [0, 4, 7, 10], [2, 0, 1])
    np.testing.assert_array_equal(moved, np.concatenate([latent[:, 7:], latent[:, :4], latent[:, 4:7]], axis=1))
    np.testing.assert_array_equal(rearrange(latent, [0, 4, 7, 10], [0, 1, 2]), latent)


def test_every_pair_contrasts_order_alone_and_its_mirror_reads_the_other_way(tmp_path):
    prompts = ["a hiss then two knocks", "a beep followed by a low hum", "a siren, then a hiss, then a click"]
    prompts = [*prompts, *prompts]  # seeds 0-2 render the prompts, seeds 3-5 put their events in reverse
    report = ReorderReport()
    rows = list(reordered_pairs(prompts, RenderedClips(), model="m", seed=0, report=report, exclude={"nothing"}))
    assert report.clips == 6 and report.kept >= 4 and len(rows) == report.kept + report.mirrored
    assert report.mirrored >= 2
    by_prompt = {}
    for row in rows:
        assert row.strategy == "reordered" and row.latent_fingerprint == "framed"
        chosen, rejected = (sf.read(io.BytesIO(wav), dtype="float32")[0] for wav in (row.chosen_wav, row.rejected_wav))
        np.testing.assert_array_equal(chosen, torch.from_numpy(row.chosen_latent).reshape(-1).numpy())
        np.testing.assert_allclose(np.sort(chosen), np.sort(rejected))  # the same sounds, only moved
        assert judge(chosen, 16000, row.prompt).order_correct and judge(rejected, 16000, row.prompt).order_correct is False
        assert not in_test_split(row.prompt)
        by_prompt.setdefault(row.chosen_seed, []).append(row)
    mirrors = [group for group in by_prompt.values() if len(group) == 2]
    assert len(mirrors) == report.mirrored
    for row, mirror in mirrors:  # the same two clips for the prompt written in the rejected clip's order
        rejected = sf.read(io.BytesIO(row.rejected_wav), dtype="float32")[0]
        heard = [name for name, _ in judge(rejected, 16000, row.prompt).detected]
        assert parse(mirror.prompt).types == heard_order(heard, parse(row.prompt).types)
        np.testing.assert_array_equal(mirror.chosen_latent, row.rejected_latent)
        np.testing.assert_array_equal(mirror.rejected_latent, row.chosen_latent)


def test_a_mirrored_prompt_is_never_an_excluded_one():
    prompts = ["a hiss then two knocks", "a hiss then two knocks"]
    everything = list(reordered_pairs(prompts, RenderedClips(), model="m", seed=0))
    mirrored = {row.prompt for row in everything} - set(prompts)
    assert mirrored
    kept = list(reordered_pairs(prompts, RenderedClips(), model="m", seed=0, exclude=mirrored))
    assert [row.pair_id for row in kept] == [row.pair_id for row in everything if row.prompt in prompts]
