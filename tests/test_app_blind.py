"""Issue 19: nobody unblinded. The Demo cannot regenerate a pool's clips, whatever seed the pool was made
with; the clip ids an annotator sees are theirs alone; the models are named only after a real ranking."""

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf

import app
from annotate import InvalidVote
from annotate.clips import decode_wav
from annotate.pool import MAX_POOL_SEED, build_pool
from studio import Studio, StudioConfig
from studio.annotation import AnnotationSession
from studio.generation import GenerationSettings, LoadedModel, generator_seed
from tests.annotate_helpers import make_tasks

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


def blind_studio(tmp_path, target_overlap: int | None = None) -> Studio:
    """No models (annotation needs none), two 3-clip tasks, models revealed after a ranking (votes count at once:
    how long clips were heard is test_app_campaign's)."""
    config = StudioConfig(data_dir=tmp_path / "data", device="cpu", reveal_models=True, min_heard_fraction=0)
    studio = Studio(config, models=[LoadedModel("base", "Base", "none-a", None, "not loaded in this test"),
                                    LoadedModel("dpo", "DPO-tuned", "none-b", None, "not loaded in this test")])
    make_tasks(studio.store, 2, clips=3, target_overlap=target_overlap)
    return studio


@pytest.fixture
def studio(tmp_path):
    return blind_studio(tmp_path)


@pytest.fixture
def revealing(tmp_path):
    """Tasks of one annotator each: the one vote a task needs may see its models (``Store.reveal``)."""
    return blind_studio(tmp_path, target_overlap=1)


def play_all(studio, name, task):
    for label in task.labels:
        app.played(studio, name, task.task_id, label, None, None)


def test_clip_ids_are_per_assignment(studio):
    """Issue 19: clip ids were the same for every annotator, so one account's reveals unblinded everybody. Each
    annotator now sees ids of their own (stable for them, across a restart too); another's are refused."""
    tasks = {name: app.next_task(studio, name, None, None)[2] for name in ("ann", "bo")}
    assert tasks["ann"].task_id == tasks["bo"].task_id
    stored = set(studio.store.candidates())
    assert not set(tasks["ann"].clip_ids) & set(tasks["bo"].clip_ids)
    assert not (set(tasks["ann"].clip_ids) | set(tasks["bo"].clip_ids)) & stored
    restarted = AnnotationSession(studio.store, studio.secret)
    assert restarted.next_task("ann").clip_ids == tasks["ann"].clip_ids == app.next_task(studio, "ann", None, None)[2].clip_ids
    task_id = tasks["ann"].task_id
    with pytest.raises(gr.Error, match=r"by its letter \(A, B, C\) or its clip id"):
        app.played(studio, "ann", task_id, tasks["bo"].clip_ids[0], None, None)
    for stored_id in stored:  # the store's own ids name nothing either
        with pytest.raises(gr.Error, match="by its letter"):
            app.played(studio, "ann", task_id, stored_id, None, None)
    plays = app.played(studio, "ann", task_id, tasks["ann"].clip_ids[1], None, None)
    assert plays == {tasks["ann"].clip_ids[1]: 1}


def test_models_are_named_only_after_a_ranking_of_clips_all_played(revealing):
    """Issue 19: a Skip returned the clip-to-model map; now only a ranking does, keyed by the ranker's own ids."""
    info, _, task = app.next_task(revealing, "ann", None, None)
    answer = app.vote(revealing, "ann", task.task_id, None, "skip")
    assert "models" not in answer
    with pytest.raises(InvalidVote, match="models stay hidden"):
        revealing.annotation.reveal("ann", task.task_id)
    message = app.vote_from_form(revealing, "skip", "ann", app.next_task(revealing, "ann", None, None)[2], "", None, None)
    assert "Revealed" not in message

    _, _, task = app.next_task(revealing, "bo", None, None)
    play_all(revealing, "bo", task)
    answer = app.vote(revealing, "bo", task.task_id, {"A": 1, "B": 2, "C": 3})
    assert list(answer["models"]) == task.clip_ids and set(answer["models"].values()) == {"base", "dpo"}
    _, _, other = app.next_task(revealing, "cy", None, None)
    assert other.task_id != task.task_id  # a task whose models were shown is never given to anyone again
    for position in range(3):
        app.play_clip(revealing, position, "cy", other, None, None)
    message = app.vote_from_form(revealing, "rank", "cy", other, "", None, None, "1", "1", "2")
    assert "Revealed: **A** was `" in message and "**C** was `" in message


def test_a_vote_sent_again_gets_its_id_back_and_refusals_speak_in_letters(revealing):
    """Issue 19: a client that lost the answer and sent its vote again was told "task N is not open"; and a
    refused ranking named the store's clip ids."""
    _, _, task = app.next_task(revealing, "ann", None, None)
    play_all(revealing, "ann", task)
    stored = set(revealing.store.candidates())
    for ranking, message in (({"A": 1}, r"missing \['B', 'C'\]"), ({"A": 1, "B": 3, "C": 3}, "must be dense"),
                             ({"A": 1, "B": 2, "C": "x"}, r"ranking\['C'\]"),
                             ({"A": 1, task.clip_ids[0]: 2, "C": 3}, "names clip A twice"),
                             ({"A": 1, "B": 2, "D": 3}, r"by its letter \(A, B, C\)")):
        with pytest.raises(gr.Error, match=message) as refused:
            app.vote(revealing, "ann", task.task_id, ranking)
        assert not any(clip_id in refused.value.message for clip_id in stored), refused.value.message
    first = app.vote(revealing, "ann", task.task_id, {"A": 2, "B": 1, "C": 1})
    again = app.vote(revealing, "ann", task.task_id, {task.clip_ids[0]: 2, "B": 1, "C": 1})
    assert again["vote_id"] == first["vote_id"] and again["models"] == first["models"]
    with pytest.raises(gr.Error, match="already voted differently"):
        app.vote(revealing, "ann", task.task_id, {"A": 1, "B": 2, "C": 3})
    assert revealing.store.counts()["rankings"] == 1
