"""Candidate pools with a deterministic stand-in generator, then once with the real pipeline (through the CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annotate import InvalidAudio, InvalidInput, Store
from annotate.__main__ import main
from annotate.clips import decode_wav
from annotate.pool import PipelineGenerator, build_pool
from tests.conftest import FIXTURE_DIR
from tests.annotate_helpers import SineGenerator

PROMPTS = ["a hiss then two knocks", "a beep after a rising chirp", "three clicks"]


@pytest.fixture
def generators() -> dict[str, SineGenerator]:
    return {}


def factory(generators: dict[str, SineGenerator], **kwargs):
    return lambda spec: generators.setdefault(spec, SineGenerator(spec, **kwargs))


def test_pool_makes_one_task_per_prompt_with_k_clips_from_each_model(tmp_path, generators):
    store = Store(tmp_path)
    report = build_pool(store, PROMPTS, ["tiny", "tiny-dpo"], k=2, seed=5, steps=20, guidance=2.5,
                        make_generator=factory(generators), batch_size=2, progress=False)
    assert (report.generated, report.reused, report.task_ids) == (12, 0, [1, 2, 3])
    # One generator per model, prompts batched, every call asking for k clips per prompt from seed 5.
    for spec in ("tiny", "tiny-dpo"):
        assert generators[spec].calls == [(PROMPTS[:2], 2, 5, 20, 2.5), (PROMPTS[2:], 2, 5, 20, 2.5)]

    clips = store.candidates().values()
    for prompt in PROMPTS:
        mine = sorted((c.model, c.seed) for c in clips if c.prompt == prompt)
        assert mine == [("tiny", 5), ("tiny", 6), ("tiny-dpo", 5), ("tiny-dpo", 6)]  # clip i of each model: seed + i
    assert store.counts()["task_candidates"] == 12
    task = store.next_task("alice")
    assert len(task.candidates) == 4 and task.prompt == PROMPTS[0]

    # The stored clip is exactly what the generator made for it.
    clip = next(c for c in clips if (c.prompt, c.model, c.seed) == (PROMPTS[1], "tiny-dpo", 6))
    expected = SineGenerator("tiny-dpo")([PROMPTS[1]], 2, 5, 20, 2.5)[1]
    np.testing.assert_array_equal(decode_wav(Path(clip.audio_path).read_bytes())[0], expected)


def test_pool_rerun_is_idempotent_and_loads_no_model(tmp_path, generators):
    store = Store(tmp_path)
    first = build_pool(store, PROMPTS, k=2, steps=20, make_generator=factory(generators), progress=False)
    counts = store.counts()

    def no_model(spec):
        raise AssertionError(f"{spec} loaded although nothing was missing")

    again = build_pool(store, PROMPTS, k=2, steps=20, make_generator=no_model, progress=False)
    assert (again.generated, again.reused, again.task_ids) == (0, 12, first.task_ids)
    assert store.counts() == counts


def test_pool_only_generates_what_is_missing(tmp_path, generators):
    store = Store(tmp_path)
    build_pool(store, PROMPTS[:2], k=2, make_generator=factory(generators), progress=False)
    grown = build_pool(store, PROMPTS + [PROMPTS[0]], k=2, make_generator=factory(generators), progress=False)
    assert (grown.generated, grown.reused, grown.task_ids) == (4, 8, [1, 2, 3])
    assert generators["tiny"].calls[-1][0] == [PROMPTS[2]]


def test_pool_refuses_bad_settings_before_generating(tmp_path, generators):
    store = Store(tmp_path)
    for kwargs in ({"prompts": []}, {"prompts": [""]}, {"k": 0}, {"models": ["only-one"], "k": 1},
                   {"k": 9}, {"guidance": float("nan")}, {"steps": 0}):
        arguments = {"prompts": PROMPTS, "models": ["tiny", "tiny-dpo"], "k": 2} | kwargs
        with pytest.raises(InvalidInput):
            build_pool(store, arguments.pop("prompts"), make_generator=factory(generators), progress=False, **arguments)
    assert generators == {} and store.counts()["candidates"] == 0


def test_pool_rejects_generators_that_break_the_contract(tmp_path, generators):
    class WrongRate(SineGenerator):
        sampling_rate = 22050

    with pytest.raises(InvalidAudio, match="22050"):
        build_pool(Store(tmp_path / "a"), PROMPTS, make_generator=WrongRate, progress=False)

    class MissingClips(SineGenerator):
        def __call__(self, prompts, k, seed, steps, guidance):
            return super().__call__(prompts, k, seed, steps, guidance)[:-1]

    with pytest.raises(ValueError, match="shape"):
        build_pool(Store(tmp_path / "b"), PROMPTS, make_generator=MissingClips, progress=False)


def test_pool_cli_with_the_real_pipeline_makes_reproducible_clips(tmp_path):
    """End to end through ``python -m annotate pool`` with the tiny original-format checkpoint."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# sound world prompts\n\na dog barks\n")
    data_dir = tmp_path / "data"
    assert main(["pool", "--data-dir", str(data_dir), "--prompts", str(prompts), "--models", str(FIXTURE_DIR),
                 "--k", "2", "--seed", "7", "--steps", "2"]) == 0

    store = Store(data_dir)
    clips = sorted(store.candidates().values(), key=lambda c: c.seed)
    assert [(c.prompt, c.seed, c.steps, c.guidance) for c in clips] == [("a dog barks", 7, 2, 3.0), ("a dog barks", 8, 2, 3.0)]
    assert all(c.sample_rate == 16000 and c.duration_s == pytest.approx(10.24) for c in clips)
    assert store.counts()["tasks"] == 1
    # Clip i is reproducible alone: generating just seed 8 gives the second clip back (same noise;
    # a batch of 1 instead of 2 only changes float rounding in the batched kernels).
    alone = PipelineGenerator(str(FIXTURE_DIR))(["a dog barks"], 1, 8, 2, 3.0).waveforms[0]
    np.testing.assert_allclose(decode_wav(Path(clips[1].audio_path).read_bytes())[0], alone, atol=1e-4)
    other = decode_wav(Path(clips[0].audio_path).read_bytes())[0]
    assert np.abs(other - alone).max() > 1e-2  # and seed 7 is a different clip
