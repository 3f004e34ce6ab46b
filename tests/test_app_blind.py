"""Issue 19: nobody unblinded. The Demo cannot regenerate a pool's clips, whatever seed the pool was made
with; the clip ids an annotator sees are theirs alone; the models are named only after a real ranking."""

from pathlib import Path

import numpy as np
import soundfile as sf

from annotate.clips import decode_wav
from annotate.pool import MAX_POOL_SEED, build_pool
from studio import Studio, StudioConfig
from studio.generation import GenerationSettings, generator_seed

PROMPT = "a beep then a hiss"


def demo_clips(studio: Studio, seed: int, candidates: int) -> tuple[list[np.ndarray], list[int]]:
    generation = studio.generate(GenerationSettings.checked(PROMPT, 2, 3.0, seed, candidates))
    clips = [clip for column in generation.columns for clip in column.clips]
    return [sf.read(clip.audio_path, dtype="float32")[0] for clip in clips], [clip.seed for clip in clips]


def same_audio(a: np.ndarray, b: np.ndarray) -> bool:
    n = min(len(a), len(b))
    return bool(np.corrcoef(a[:n], b[:n])[0, 1] > 0.9)


def test_the_demo_cannot_regenerate_a_pools_clips(app_models, tmp_path):
    """A pool made with --seed 0 (as the README's recipes did): the Demo at seed 0, or at any pool clip's own
    seed, makes other clips; the same Demo seed still gives the same clips on this server, not on another."""
    base, dpo = map(str, app_models)
    config = StudioConfig(base_model=base, dpo_model=dpo, data_dir=tmp_path / "data", device="cpu")
    studio = Studio(config)
    build_pool(studio.store, [PROMPT], [base, dpo], k=2, seed=0, steps=2, progress=False)
    pool = list(studio.store.candidates().values())
    pool_audio = [decode_wav(Path(clip.audio_path).read_bytes())[0] for clip in pool]
    assert len({clip.seed for clip in pool}) == 4  # no two clips of the task share a seed

    demo_audio, demo_seeds = demo_clips(studio, 0, 2)
    audio, seeds = demo_clips(studio, pool[0].seed, 1)  # a script that knows how pools derive seeds asks for one
    assert not any(same_audio(demo, pooled) for demo in demo_audio + audio for pooled in pool_audio)
    # The Demo never seeds where pools do, whichever Demo seed is asked for.
    assert all(seed > MAX_POOL_SEED for seed in demo_seeds + seeds + [generator_seed(studio.secret, clip.seed)
                                                                        for clip in pool])

    again, seeds_again = demo_clips(studio, 0, 2)
    assert seeds_again == demo_seeds and all(np.array_equal(a, b) for a, b in zip(again, demo_audio))
    elsewhere = Studio(StudioConfig(base_model=base, dpo_model=dpo, data_dir=tmp_path / "other", device="cpu"),
                       models=studio.models)
    other, _ = demo_clips(elsewhere, 0, 2)
    assert not any(same_audio(a, b) for a, b in zip(other, demo_audio))
    assert (config.data_dir / "secret").stat().st_mode & 0o077 == 0  # the key is the owner's alone
