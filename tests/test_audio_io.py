"""Audio files in and out: resampling, validation of bad audio, lossless round trips."""

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.audio import AudioError, as_mono_16k, load_audio, save_audio, wav_to_fbank


def tone(seconds=0.5, rate=16000, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "tone.wav"
    save_audio(path, tone())
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.shape == (8000,)
    np.testing.assert_allclose(loaded, tone(), atol=1 / 32768)


def test_other_sample_rates_are_resampled_to_16k(tmp_path):
    path = tmp_path / "tone44k.wav"
    sf.write(path, tone(rate=44100), 44100)
    loaded = load_audio(path)
    assert loaded.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(loaded))
    assert np.argmax(spectrum) * 16000 / len(loaded) == pytest.approx(440, abs=4)


def test_stereo_file_uses_first_channel(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([tone(), np.zeros(8000, np.float32)], axis=1), 16000)
    np.testing.assert_allclose(load_audio(path), tone(), atol=1 / 32768)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10), "cannot read"),
        (lambda p: None, "cannot read"),  # missing file
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "empty"),
    ],
)
def test_bad_audio_files_get_clear_errors(tmp_path, write, message):
    path = tmp_path / "bad.wav"
    write(path)
    with pytest.raises(AudioError, match=message):
        load_audio(path)


@pytest.mark.parametrize(
    "waveform, rate, message",
    [
        (np.array([0.0, np.nan, 0.1], np.float32), 16000, "NaN"),
        (np.zeros((2, 100), np.float32), 16000, "mono"),
        (np.zeros(100, np.float32), 0, "sample rate"),
    ],
)
def test_bad_arrays_get_clear_errors(waveform, rate, message):
    with pytest.raises(AudioError, match=message):
        as_mono_16k(waveform, rate)


def test_fbank_of_silence_is_the_log_floor_and_batches_mixed_lengths():
    fbank, _, waveform = wav_to_fbank([np.zeros(4000, np.float32), tone(1.0)], target_length=64)
    assert fbank.shape == (2, 64, 64)
    assert torch.all(waveform[0] == 0)
    assert torch.allclose(fbank[0], torch.full_like(fbank[0], float(np.log(1e-5))))
    assert torch.isfinite(fbank).all() and fbank[1].max() > fbank[0].max()
