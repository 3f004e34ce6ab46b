"""Candidate pools with a deterministic stand-in generator, then once with the real pipeline (through the CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annotate import InvalidAudio, InvalidInput, Store
from annotate.__main__ import main
from annotate.clips import decode_wav
from annotate.pool import MAX_POOL_SEED, PipelineGenerator, build_pool, derived_seed
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
    # One generator per model, at most batch_size x k clips per call, each clip with its own seed.
    for spec in ("tiny", "tiny-dpo"):
        calls = generators[spec].calls
        assert [prompts for prompts, *_ in calls] == [[PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, [PROMPTS[2]] * 2]
        assert all(call[2:] == (20, 2.5) for call in calls)
        assert [seeds for _, seeds, *_ in calls] == [[derived_seed(5, spec, i) for i in (0, 1)] * 2,
                                                     [derived_seed(5, spec, i) for i in (0, 1)]]

    clips = store.candidates().values()
    for prompt in PROMPTS:  # no two clips of a task share a seed, across models too (issue 19)
        mine = sorted((c.model, c.seed) for c in clips if c.prompt == prompt)
        assert [model for model, _ in mine] == ["tiny", "tiny", "tiny-dpo", "tiny-dpo"]
        assert len({seed for _, seed in mine}) == 4 and all(0 <= seed <= MAX_POOL_SEED for _, seed in mine)
    assert store.counts()["task_candidates"] == 12
    task = store.next_task("alice")
    assert len(task.candidates) == 4 and task.prompt == PROMPTS[0]

    # The stored clip is exactly what the generator made for it.
    clip = next(c for c in clips if (c.prompt, c.model, c.seed) == (PROMPTS[1], "tiny-dpo", derived_seed(5, "tiny-dpo", 1)))
    expected = SineGenerator("tiny-dpo")([PROMPTS[1]], [clip.seed], 20, 2.5)[0]
    np.testing.assert_array_equal(decode_wav(Path(clip.audio_path).read_bytes())[0], expected)


def test_pool_of_ab_tasks_pits_clip_i_of_one_model_against_clip_i_of_the_other(tmp_path, generators):
    """Issue 20: two-clip tasks for the Annotate tab's A/B form, k per prompt; two models with k=1 make them too."""
    store = Store(tmp_path)
    report = build_pool(store, PROMPTS[:2], ["tiny", "tiny-dpo"], k=3, seed=5, steps=20, ab=True,
                        make_generator=factory(generators), progress=False)
    assert (report.generated, report.task_ids) == (12, [1, 2, 3, 4, 5, 6])
    clips = store.candidates()
    for task_id, ids in store.task_clips().items():
        task = [clips[clip_id] for clip_id in ids]
        assert sorted(c.model for c in task) == ["tiny", "tiny-dpo"] and len({c.prompt for c in task}) == 1
        index = (task_id - 1) % 3
        assert {c.seed for c in task} == {derived_seed(5, "tiny", index), derived_seed(5, "tiny-dpo", index)}
    assert len({frozenset(ids) for ids in store.task_clips().values()}) == 6  # no clip in two tasks
    single = build_pool(Store(tmp_path / "k1"), PROMPTS, k=1, steps=20, make_generator=factory(generators),
                        progress=False)
    assert [len(Store(tmp_path / "k1").task_clips()[t]) for t in single.task_ids] == [2, 2, 2]
    with pytest.raises(InvalidInput, match="A/B tasks pit two models against each other; got 3"):
        build_pool(store, PROMPTS, ["a", "b", "c"], k=1, ab=True, make_generator=factory(generators), progress=False)


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
    assert generators["tiny"].calls[-1][0] == [PROMPTS[2]] * 2


def test_pool_refuses_bad_settings_before_generating(tmp_path, generators):
    store = Store(tmp_path)
    for kwargs in ({"prompts": []}, {"prompts": [""]}, {"k": 0}, {"models": ["only-one"], "k": 1},
                   {"k": 9}, {"guidance": float("nan")}, {"steps": 0}):
        arguments = {"prompts": PROMPTS, "models": ["tiny", "tiny-dpo"], "k": 2} | kwargs
        with pytest.raises(InvalidInput):
            build_pool(store, arguments.pop("prompts"), make_generator=factory(generators), progress=False, **arguments)
    assert generators == {} and store.counts()["candidates"] == 0


def test_pool_refuses_prompts_a_sound_world_model_cannot_read_before_generating(tmp_path, generators, capsys):
    class SoundWorld(SineGenerator):
        reads_only_the_sound_world = True

    store = Store(tmp_path / "a")
    with pytest.raises(InvalidInput, match="unknown word 'dog'.*9 sounds"):
        build_pool(store, [PROMPTS[0], "a dog barks"], make_generator=lambda spec: generators.setdefault(
            spec, SoundWorld(spec)), progress=False)
    assert all(not generator.calls for generator in generators.values()) and store.counts()["candidates"] == 0

    # the real embedded model, from the command line: one line, exit 2, no store left behind
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two knocks\na dog barks\n")
    data_dir = tmp_path / "data"
    assert main(["pool", "--data-dir", str(data_dir), "--prompts", str(prompts), "--models", "tiny", "--k", "2",
                 "--steps", "1"]) == 2
    [refusal] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]  # after tqdm's
    assert refusal.startswith("error: unknown word 'dog'") and "9 sounds" in refusal and not data_dir.exists()


def test_pool_rejects_generators_that_break_the_contract(tmp_path, generators):
    class WrongRate(SineGenerator):
        sampling_rate = 22050

    with pytest.raises(InvalidAudio, match="22050"):
        build_pool(Store(tmp_path / "a"), PROMPTS, make_generator=WrongRate, progress=False)

    class MissingClips(SineGenerator):
        def __call__(self, prompts, seeds, steps, guidance):
            return super().__call__(prompts, seeds, steps, guidance)[:-1]

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
    seeds = sorted(derived_seed(7, str(FIXTURE_DIR), i) for i in (0, 1))
    assert [(c.prompt, c.seed, c.steps, c.guidance) for c in clips] == [("a dog barks", seed, 2, 3.0) for seed in seeds]
    assert all(c.sample_rate == 16000 and c.duration_s == pytest.approx(10.24) for c in clips)
    assert store.counts()["tasks"] == 1
    # A clip is reproducible alone: generating just its seed gives it back (same noise; a batch of 1
    # instead of 2 only changes float rounding in the batched kernels).
    alone = PipelineGenerator(str(FIXTURE_DIR))(["a dog barks"], [clips[1].seed], 2, 3.0).waveforms[0]
    np.testing.assert_allclose(decode_wav(Path(clips[1].audio_path).read_bytes())[0], alone, atol=1e-4)
    other = decode_wav(Path(clips[0].audio_path).read_bytes())[0]
    assert np.abs(other - alone).max() > 1e-2  # and the other seed is a different clip
