"""The app's logic without a server: configuration of the new flags, the Results/leaderboard data,
progress counters, reveal-after-vote, the prompt check, duration, and the Hub backup at start."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import soundfile as sf

from annotate import InvalidVote, Store
from annotate.verdict import compute_verdict, model_votes
from soundworld import render
from studio import Studio, StudioConfig, parse_config
from studio.admin import dataset_overview, leaderboard, results_markdown
from studio.generation import (EVALUATION_LINES, GeneratedClip, GenerationError, GenerationSettings, LoadedModel,
                               check_prompt, duration_note, evaluation_line, generate_both)
from tests.annotate_helpers import add_rendered_gold, make_tasks
from tests.local_hub import LocalHub
from tests.test_annotate_backup import backed_up
from tests.test_annotate_verdict import BASE, DPO, dpo_first, make_pool, vote_all

SOUND_WORLD = [LoadedModel("base", "Base", "tiny", None, "not loaded in this test")]  # judged by the embedded world
NO_MODELS = [LoadedModel("base", "Base", "none-a", None, "not loaded in this test")]
REAL_TANGO = [LoadedModel("base", "Base", "declare-lab/tango", SimpleNamespace(reads_only_the_sound_world=False))]


def test_new_flags_and_their_environment_variables(tmp_path):
    config = parse_config(["--hub-dataset", "me/prefs", "--push-every", "5", "--reveal-models",
                           "--min-gold-accuracy", "0.8"], {})
    assert (config.push_every, config.reveal_models, config.min_gold_accuracy, config.informative_first) == (
        5.0, True, 0.8, False)
    env = {"TANGO_HUB_DATASET": "me/prefs", "TANGO_PUSH_EVERY": "2.5", "TANGO_INFORMATIVE_FIRST": "true",
           "TANGO_REVEAL_MODELS": "0"}
    config = parse_config([], env)
    assert (config.push_every, config.informative_first, config.reveal_models) == (2.5, True, False)
    assert parse_config([], {}).push_every is None
    assert parse_config([], {"TANGO_GENERATE_THREADS": "3"}).generate_threads == 3
    assert parse_config(["--generate-threads", "2"], {}).generate_threads == 2
    assert not parse_config([], {}).allow_shrinking_backup
    assert parse_config(["--allow-shrinking-backup"], {}).allow_shrinking_backup
    assert parse_config([], {"TANGO_ALLOW_SHRINKING_BACKUP": "yes"}).allow_shrinking_backup
    assert (parse_config([], {}).min_comparisons, parse_config([], {}).show_gold_accuracy) == (10, False)
    assert parse_config(["--min-comparisons", "30", "--show-gold-accuracy"], {}).min_comparisons == 30
    config = parse_config([], {"TANGO_MIN_COMPARISONS": "0", "TANGO_SHOW_GOLD_ACCURACY": "1"})
    assert (config.min_comparisons, config.show_gold_accuracy) == (0, True)
    for bad in (["--push-every", "5"], ["--hub-dataset", "a/b", "--push-every", "soon"],
                ["--min-gold-accuracy", "80"], ["--reveal-models", "maybe"], ["--generate-threads", "-1"],
                ["--generate-threads", "1.5"], ["--min-comparisons", "-1"], ["--show-gold-accuracy", "maybe"]):
        with pytest.raises(SystemExit):
            parse_config(bad, {})


def test_progress_shows_the_target_and_counts_started_tasks(tmp_path):
    studio = Studio(StudioConfig(data_dir=tmp_path / "data", min_heard_fraction=0), models=[])
    make_tasks(studio.store, 6)
    for name in ("ann", "bob"):
        while (task := studio.annotation.next_task(name)) is not None:
            for clip_id in task.clip_ids:
                studio.annotation.record_play(name, task.task_id, clip_id)
            studio.annotation.vote(name, task.task_id, {"A": 1, "B": 2})
    progress = studio.annotation.progress("ann")
    assert (progress.ranked_by_you, progress.tasks_started, progress.tasks_done, progress.target) == (6, 6, 0, 3)
    assert "Of 6 tasks, **6** have at least one ranking and **0** have the 3 rankings" in progress.as_markdown()


def test_models_are_revealed_after_the_vote_and_never_before(tmp_path):
    studio = Studio(StudioConfig(data_dir=tmp_path / "data", min_heard_fraction=0), models=[])
    make_tasks(studio.store, 1, target_overlap=1)
    task = studio.annotation.next_task("ann")
    with pytest.raises(InvalidVote, match="hidden"):
        studio.annotation.reveal("ann", task.task_id)
    for label in task.labels:
        studio.annotation.record_play("ann", task.task_id, label)
    studio.annotation.vote("ann", task.task_id, {"A": 1, "B": 1}, comment="same to me")
    [vote] = studio.store.rankings()
    models = {c.id: c.model for c in studio.store.candidates().values()}
    assert studio.annotation.reveal("ann", task.task_id) == {  # by the ids the annotator was shown, in that order
        public_id: models[clip_id] for public_id, clip_id in zip(task.clip_ids, vote.shown_order)}
    assert vote.comment == "same to me"


def test_leaderboard_and_results_name_the_models_the_dataset_tab_adds_gold_accuracy(tmp_path):
    config = StudioConfig(data_dir=tmp_path / "data", min_gold_accuracy=0.8, leaderboard_every=1, min_comparisons=1)
    studio = Studio(config, models=[])
    assert leaderboard(studio.store, config) == []
    make_pool(studio.store, ["two knocks", "three beeps", "a hiss then a click"])
    add_rendered_gold(studio.store, ["a low hum"])
    answer = {clip_id: rank for ranks in studio.store.gold_answers().values() for clip_id, rank in ranks.items()}
    vote_all(studio.store, ["ann", "bob"], lambda ids, models: [answer[i] for i in ids] if ids[0] in answer
             else dpo_first(ids, models))
    rows = leaderboard(studio.store, config)
    assert [row["model"] for row in rows] == [DPO, BASE]
    assert set(rows[0]) == {"model", "win_rate", "win_rate_interval", "bt_score", "bt_interval", "comparisons",
                            "too_few_votes", "preliminary"}
    results = results_markdown(studio.store, config)
    assert f"| {DPO} (preliminary) | 1.000 |" in results and "gold:" not in results
    overview = dataset_overview(studio.store, config)
    assert "1 gold task(s)" in overview.as_markdown()
    assert "gold accuracy threshold**: 80%" in overview.as_markdown() and f"| {DPO} |" in overview.as_markdown()
    assert [row[6:8] for row in overview.annotator_rows()] == [[1.0, 1], [1.0, 1]]  # gold accuracy, answered


def test_the_public_results_take_in_votes_in_whole_batches(tmp_path):
    """Bar (issue 19): after a vote, the change in /leaderboard's win counts pinned which clips were whose."""
    config = StudioConfig(data_dir=tmp_path / "data", leaderboard_every=4)
    studio = Studio(config, models=[])
    make_pool(studio.store, [f"two knocks {i}" for i in range(6)])
    add_rendered_gold(studio.store, ["a low hum"])
    models = {clip_id: clip.model for clip_id, clip in studio.store.candidates().items()}
    published, model_votes_cast = [], []
    names = ["ann", "bob", "cy", "dee"]  # a batch needs votes of four annotators (MIN_BATCH_ANNOTATORS, at most 4)
    while names:
        for name in list(names):
            task = studio.store.next_task(name)
            if task is None:
                names.remove(name)
                continue
            ids = [clip.id for clip in task.candidates]
            studio.store.submit(name, task.id, dict(zip(ids, dpo_first(ids, [models[i] for i in ids]))))
            published.append(sum(row["comparisons"] for row in leaderboard(studio.store, config)))
            model_votes_cast.append(len(model_votes(studio.store.rankings(), studio.store.gold_answers())))
    assert model_votes_cast[-1] == 24 and len(published) == 28  # four gold votes among them
    changes = [model_votes_cast[i] for i in range(1, len(published)) if published[i] != published[i - 1]]
    assert published[0] == 0 and changes == [4, 8, 12, 16, 20, 24]  # after every 4th model vote only
    assert published[-1] == sum(row["comparisons"] for row in compute_verdict(studio.store).rows)
    assert "after every 4 rankings that tell clips apart" in results_markdown(studio.store, config)
    assert dataset_overview(studio.store, config).verdicts[0].votes == 24  # the admins see every vote


def test_out_of_vocabulary_prompts_are_refused_for_sound_world_models_only(app_models, tmp_path):
    sound_world = [LoadedModel("base", "Base", str(app_models[0]), __import__("pipeline").load_pipeline(
        str(app_models[0]), device="cpu"))]
    with pytest.raises(GenerationError) as refused:
        check_prompt(sound_world, "a dog barks in the rain")
    message = str(refused.value)
    assert "unknown word 'dog'" in message and "9 sounds" in message and "a rising chirp" in message
    check_prompt(sound_world, "a hiss then two knocks")
    check_prompt(REAL_TANGO, "a dog barks in the rain")  # real Tango takes any text
    with pytest.raises(GenerationError, match="dog"):
        generate_both(sound_world, GenerationSettings.checked("a dog barks", 2, 3.0, 0, 1), tmp_path, secret=b"test")


def test_a_sound_world_pipeline_warns_about_a_prompt_it_cannot_read(caplog):
    from pipeline import load_pipeline

    pipe = load_pipeline("tiny", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    pipe("a dog barks", num_inference_steps=1, audio_length_in_s=0.5)
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "cannot read the prompt: unknown word 'dog'" in warning and "9 sounds" in warning
    caplog.clear()
    pipe("two knocks", num_inference_steps=1, audio_length_in_s=0.5)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_each_clip_says_what_the_judge_heard_and_each_column_its_mean_score(app_models, tmp_path):
    from pipeline import load_pipeline

    models = [LoadedModel(role, role, str(folder), load_pipeline(str(folder), device="cpu"))
              for role, folder in zip(("base", "dpo"), app_models)]
    generation = generate_both(models, GenerationSettings.checked("two knocks then a hiss", 2, 3.0, 0, 2), tmp_path,
                               secret=b"test")
    for column in generation.columns:
        assert all(clip.judged.prompt == "two knocks then a hiss" for clip in column.clips)
        assert column.judge_score == pytest.approx(sum(c.judged.score for c in column.clips) / 2)
        assert f"judge score {column.judge_score:.2f}" in column.summary()
        assert all("**Judge heard:**" in clip.heard() and "knock" in clip.heard() for clip in column.clips)
    assert [c["judge_score"] for c in generation.as_dict()["columns"]] == [c.judge_score for c in generation.columns]

    def heard(clip_of: str) -> str:  # a render of a prompt, judged against "two knocks then a hiss"
        from soundworld import judge

        waveform, rate, _ = render(clip_of, seed=0)
        return GeneratedClip("a.wav", "a.png", 0, judged=judge(waveform, rate, "two knocks then a hiss")).heard()

    assert heard("two knocks then a hiss") == ("**Judge heard:** knock → knock → hiss  \n"
                                              "**Prompt:** ✓ 2 × knock · ✓ hiss · ✓ in order — score 1.00")
    assert heard("a hiss then a knock") == ("**Judge heard:** hiss → knock  \n"
                                           "**Prompt:** ✗ 2 × knock (heard 1) · ✓ hiss · ✗ out of order — score 0.33")
    assert "✗ hiss missing" in heard("two knocks") and "+1 not asked for" in heard("two knocks then a hiss then a beep")
    assert GeneratedClip("a.wav", "a.png", 0).heard() == ""  # real Tango: no judge, nothing shown


def test_the_demo_states_the_measured_difference_and_no_more():
    embedded = [LoadedModel("base", "Base", "tiny", None), LoadedModel("dpo", "DPO-tuned", "tiny-dpo", None)]
    line = EVALUATION_LINES[("tiny", "tiny-dpo")]
    assert evaluation_line(embedded) == line and "+0.027" in line
    assert "not" in line and "order" in line  # says what did not move, too
    others = [LoadedModel("base", "Base", "tiny", None), LoadedModel("dpo", "DPO-tuned", "runs/mine", None)]
    assert "No evaluation of these two models" in evaluation_line(others)


def test_the_tuned_column_is_titled_by_how_its_model_was_tuned(tmp_path):
    from studio.generation import tuned_title

    grpo = tmp_path / "grpo"
    grpo.mkdir()
    (grpo / "train_config.json").write_text('{"reward": "judge", "group_size": 8}')
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train_config.json").write_text("{not json")
    assert tuned_title(str(grpo)) == "GRPO-tuned"
    assert tuned_title("tiny-dpo") == tuned_title(str(broken)) == tuned_title("declare-lab/tango2") == "DPO-tuned"


def test_the_duration_control_says_what_the_models_were_trained_on():
    from pipeline import load_pipeline

    models = [LoadedModel("base", "Base", "tiny", load_pipeline("tiny", device="cpu"))]
    assert duration_note(models) == "The models were trained on 3.84 s clips; longer clips repeat events."


def test_duration_sets_the_clip_length(app_models, tmp_path):
    from pipeline import load_pipeline

    models = [LoadedModel("base", "Base", str(app_models[0]), load_pipeline(str(app_models[0]), device="cpu"))]
    settings = GenerationSettings.checked("two knocks", 2, 3.0, 0, 1, duration=2.0)
    [column] = generate_both(models, settings, tmp_path, secret=b"test").columns
    samples, rate = sf.read(column.clips[0].audio_path)
    assert abs(len(samples) / rate - 2.0) < 0.1  # rounded to the model's latent frame block
    assert GenerationSettings.checked("two knocks", 2, 3.0, 0, 1, duration=0).duration is None
    with pytest.raises(GenerationError, match="duration"):
        GenerationSettings.checked("two knocks", 2, 3.0, 0, 1, duration=-1)


def test_a_restarted_studio_with_an_empty_data_folder_gets_its_votes_back_from_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "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123")
    hub = LocalHub(tmp_path / "hub")
    config = StudioConfig(data_dir=tmp_path / "data", hub_dataset="me/prefs", push_every=60, leaderboard_every=1)
    studio = Studio(config, models=SOUND_WORLD, hub_api=hub)
    for prompt in ("two knocks", "a hiss then a click"):  # clips the judge can score
        ids = [studio.store.add_candidate(prompt, render(prompt, seed)[0], sample_rate=16000, model=model,
                                          seed=seed, steps=10, guidance=3.0).id
               for seed, model in enumerate([BASE, DPO])]
        studio.store.add_task(ids)
    assert studio.score_clips() == 4 and all(c.auto_score == 1.0 for c in studio.store.candidates().values())
    vote_all(studio.store, ["ann", "bob"], dpo_first)
    studio.scheduled_push.trigger().result()
    votes = [(r.annotator, r.ranks) for r in studio.store.rankings()]
    studio.close()
    assert (hub.repo("me/prefs") / "README.md").is_file()  # the export went up too

    shutil.rmtree(tmp_path / "data")
    again = Studio(config, models=SOUND_WORLD, hub_api=hub)
    try:
        assert [(r.annotator, r.ranks) for r in again.store.rankings()] == votes and len(votes) == 4
        assert leaderboard(again.store, config)[0]["model"] == DPO
    finally:
        again.close()


def test_a_studio_whose_store_holds_nothing_restores_the_backup(tmp_path, monkeypatch):
    """An empty annotate.sqlite (left by `annotate stats` before) no longer stops the restore."""
    monkeypatch.setenv("HF_TOKEN", "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123")
    hub, store = backed_up(tmp_path)
    Store(tmp_path / "fresh")
    config = StudioConfig(data_dir=tmp_path / "fresh", hub_dataset="me/tango-prefs", push_every=60)
    studio = Studio(config, models=NO_MODELS, hub_api=hub)
    try:
        assert [r.ranks for r in studio.store.rankings()] == [r.ranks for r in store.rankings()] and len(store.rankings()) == 5
    finally:
        studio.close()


def test_a_mistyped_local_model_folder_is_reported_as_such(tmp_path, monkeypatch):
    from studio.generation import load_models

    (tmp_path / "runs" / "my-dpo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    base, dpo = load_models(StudioConfig(base_model="runs/my-dpoo", dpo_model="./runs/nothing-here"))
    assert "'runs/my-dpoo' names a local folder that does not exist; did you mean 'runs/my-dpo'?" in base.error
    assert "names a local folder that does not exist" in dpo.error and "internet" not in base.error + dpo.error


def test_uploads_and_large_bodies_are_refused_before_the_app_reads_them():
    """Bar (issue 19): /gradio_api/upload took 64 MB or 300 files; two 9.5 MB /vote bodies stalled everyone."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from studio.calls import MAX_BODY_BYTES, RequestLimits

    async def echo(request):
        return PlainTextResponse(str(len(await request.body())))

    served = TestClient(Starlette(routes=[Route("/{path:path}", echo, methods=["POST"])],
                                  middleware=[Middleware(RequestLimits)]))
    assert served.post("/gradio_api/upload", files={"files": ("a.wav", b"x")}).status_code == 403
    assert served.post("/gradio_api/call/vote", content=b"x" * (MAX_BODY_BYTES + 1)).status_code == 413
    chunked = served.post("/gradio_api/queue/join", content=iter([b"x" * MAX_BODY_BYTES, b"y"]))
    assert chunked.status_code == 413  # no length said: counted as it comes
    assert served.post("/gradio_api/call/vote", content=b"{}").text == "2"


def test_served_copies_are_bounded_and_the_temporary_folder_goes_at_close(tmp_path):
    from studio.serving import ClipServer

    studio = Studio(StudioConfig(data_dir=tmp_path / "data"), models=[])
    make_tasks(studio.store, 1)
    clip = next(iter(studio.store.candidates().values())).audio_path
    size = Path(clip).stat().st_size
    server = ClipServer(tmp_path / "served", studio.store.audio_dir, max_bytes=3 * size)
    copies = [server.serve(clip) for _ in range(10)]  # as ten new names would each get theirs
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == sorted(Path(c).name for c in copies[-3:])
    folder = studio.generated_dir
    assert folder.name.startswith("tango-studio-") and folder.is_dir()
    studio.close()
    assert not folder.exists()
    studio.close()  # again at exit: nothing to do


def test_every_sampler_makes_finite_audio_and_names_itself_in_the_stored_model(app_models):
    """Each sampler the Demo offers is its scheduler with its settings over the model's config; the model name stored
    with a clip tells a changed setting (Karras sigmas) from the model's own sampler; the shared pipeline is untouched."""
    import diffusers
    import numpy as np

    from pipeline import load_pipeline
    from studio.generation import SAMPLERS, sampler_model_label, with_sampler

    model = LoadedModel("base", "Base", str(app_models[0]), load_pipeline(str(app_models[0]), device="cpu"))
    own = dict(model.pipe.scheduler.config)
    labels = set()
    for sampler, choice in SAMPLERS.items():
        view = with_sampler(model.pipe, sampler)
        if choice is not None:
            class_name, settings = choice
            assert isinstance(view.scheduler, getattr(diffusers, class_name))
            assert all(view.scheduler.config[key] == value for key, value in settings.items())
        audio = view("a knock", num_inference_steps=8, generator=view.clip_generators([0])).audios
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0, sampler
        labels.add(sampler_model_label(model, sampler))
    assert dict(model.pipe.scheduler.config) == own
    karras = model.pipe.scheduler.config.use_karras_sigmas  # the other DPM-Solver++ differs in this setting only
    other = "DPM-Solver++" if karras else "DPM-Solver++ Karras"
    assert sampler_model_label(model, other).endswith(f"[use_karras_sigmas={not karras}]")
    # The model's own sampler and its explicit name store the same model; every other sampler is told apart.
    assert len(labels) == len(SAMPLERS) - 1


def test_spectrograms_show_each_clip_where_its_sound_is(tmp_path):
    """Pictures reuse their drawn frame per duration: each still shows its own clip (sound bright, silence dark),
    at the same size whatever the clip's length."""
    import numpy as np
    from PIL import Image

    from studio.spectrogram import save_spectrogram

    rate, seconds = 16000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 800 * t)).astype(np.float32)
    early, late = tone * (t < 0.5), tone * (t > 1.5)

    def brightness(path, start, stop):
        picture = np.asarray(Image.open(path).convert("L"), dtype=float)
        left, right = 48 + int(start / seconds * 422), 48 + int(stop / seconds * 422)  # inside the axes box
        return picture[20:130, left:right].mean()

    for name, clip in (("early", early), ("late", late), ("early-again", early)):
        save_spectrogram(clip, rate, tmp_path / f"{name}.png")
    assert brightness(tmp_path / "early.png", 0.1, 0.4) > brightness(tmp_path / "early.png", 1.6, 1.9) + 20
    assert brightness(tmp_path / "late.png", 1.6, 1.9) > brightness(tmp_path / "late.png", 0.1, 0.4) + 20
    assert (tmp_path / "early.png").read_bytes() == (tmp_path / "early-again.png").read_bytes()
    save_spectrogram(tone[: rate // 2], rate, tmp_path / "short.png")
    assert Image.open(tmp_path / "short.png").size == Image.open(tmp_path / "early.png").size == (480, 180)
