"""The app through its named API (gradio_client against the app served on 127.0.0.1), and the
studio logic behind it without a server: generation of both columns, blind ranking with play
tracking, admin-only export, configuration and identity."""

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pathlib import Path

import gradio as gr
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from gradio_client import Client
from gradio_client.exceptions import AppError

import app
from annotate.pool import build_pool
from studio import Studio, StudioConfig, parse_config
from studio.generation import GenerationError, GenerationSettings, generate_both, load_models, send_to_annotation
from studio.identity import IdentityError, read_auth_file, resolve_name
from tests.app_helpers import agreed_ranking, free_port

PROMPTS = ["a beep then a hiss", "two knocks", "a siren after a click", "three clicks", "a hum then a buzz", "a hiss"]


@pytest.fixture(scope="module")
def served(app_models, tmp_path_factory):
    """The app on a free port (in this process), with one 2-clip task per prompt from the test models."""
    base, dpo = map(str, app_models)
    config = StudioConfig(base_model=base, dpo_model=dpo, data_dir=tmp_path_factory.mktemp("app-data"),
                          admins=frozenset({"admin"}), device="cpu", port=free_port(),
                          generate_per_minute=1000,  # these tests generate often, from one address
                          min_heard_fraction=0)  # and vote as soon as they played (listening time: test_app_campaign)
    studio = Studio(config)
    build_pool(studio.store, PROMPTS, [base, dpo], k=1, steps=2, progress=False)
    demo = app.build_app(studio)
    app.launch(studio, demo, prevent_thread_lock=True, quiet=True)
    yield studio, f"http://127.0.0.1:{config.port}/"
    demo.close()


@pytest.fixture
def client(served):
    return Client(served[1], verbose=False)


def fetch_and_play(client, name):
    task, files = client.predict(name, api_name="/next_task")
    for clip in task["clips"]:
        client.predict(name, task["task_id"], clip["label"], api_name="/played")
    return task, files


def test_generate_returns_both_columns_with_the_same_seeds(served, client):
    studio, _ = served
    base, dpo, details = client.predict("a beep then a hiss", 2, 3.0, 7, 2, api_name="/generate")
    assert len(base) == len(dpo) == 2
    first = sf.read(base[0])[0]
    assert first.ndim == 1 and len(first) == round(3.84 * 16000)
    assert [c["seeds"] for c in details["columns"]] == [[7, 8], [7, 8]]
    assert all(c["seconds_per_clip"] > 0 and c["error"] is None for c in details["columns"])
    # Same seed and settings: the same clips again; another sampler: other clips, shared pipeline untouched.
    again, _, _ = client.predict("a beep then a hiss", 2, 3.0, 7, 2, api_name="/generate")
    np.testing.assert_array_equal(sf.read(again[0])[0], first)
    scheduler_before = type(studio.models[0].pipe.scheduler)
    ddim, _, details = client.predict("a beep then a hiss", 2, 3.0, 7, 1, "DDIM", api_name="/generate")
    assert type(studio.models[0].pipe.scheduler) is scheduler_before
    assert details["columns"][0]["stored_as"].endswith("+DDIMScheduler")
    assert not np.array_equal(sf.read(ddim[0])[0], first)


@pytest.mark.parametrize("args, message", [
    (("", 2, 3.0, 0, 1), "`prompt` is empty"),
    (("   ", 2, 3.0, 0, 1), "`prompt` is empty"),
    (("a beep", 0, 3.0, 0, 1), "`steps` must be a whole number"),
    (("a beep", 2, 3.0, -1, 1), "`seed` must be a whole number"),
])
def test_bad_generation_settings_are_visible_errors(client, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/generate")


def test_ranking_through_the_api(served, client):
    studio, _ = served
    task, files = client.predict("rita", api_name="/next_task")
    assert task["prompt"] in PROMPTS and len(files) == len(task["clips"]) == 2
    assert [c["label"] for c in task["clips"]] == ["A", "B"]
    before = studio.store.counts()["rankings"]
    with pytest.raises(AppError, match="play every clip before voting: not played yet: A, B"):
        client.predict("rita", task["task_id"], {"A": 1, "B": 2}, api_name="/vote")
    client.predict("rita", task["task_id"], "A", api_name="/played")
    with pytest.raises(AppError, match="not played yet: B"):
        client.predict("rita", task["task_id"], {"A": 1, "B": 2}, api_name="/vote")
    assert client.predict("rita", task["task_id"], task["clips"][1]["clip_id"], api_name="/played") == {
        c["clip_id"]: 1 for c in task["clips"]}
    for ranking, message in [({"A": 1, "B": 3}, "dense"), ({"A": 1}, "exactly the 2 clips"), ({"A": 1, "Z": 1}, "by its letter")]:
        with pytest.raises(AppError, match=message):
            client.predict("rita", task["task_id"], ranking, api_name="/vote")
    with pytest.raises(AppError, match="`verdict` must be one of"):
        client.predict("rita", task["task_id"], None, "meh", api_name="/vote")
    assert studio.store.counts()["rankings"] == before  # refused votes wrote nothing

    result = client.predict("rita", task["task_id"], {"A": 1, "B": 1}, api_name="/vote")  # a tie
    [stored] = [r for r in studio.store.rankings() if r.id == result["vote_id"]]
    assert stored.annotator == "rita" and set(stored.ranks.values()) == {1}
    assert set(stored.play_counts.values()) == {1} and stored.time_spent_s > 0
    assert "You have ranked **1** task(s)" in result["progress"]
    # The next task is another one; a skip needs no listening.
    following, _ = client.predict("rita", api_name="/next_task")
    assert following["task_id"] != task["task_id"]
    assert client.predict("rita", following["task_id"], None, "skip", api_name="/vote")["vote_id"] > result["vote_id"]


def test_no_name_no_task(client):
    with pytest.raises(AppError, match="type your annotator name first"):
        client.predict("", api_name="/next_task")
    with pytest.raises(AppError, match="ask for the next task first"):
        client.predict("nobody-yet", 1, "A", api_name="/played")


def test_export_and_push_are_for_admins(served, client):
    for name in ("admin2", "rita2"):
        task, files = fetch_and_play(client, name)
        client.predict(name, task["task_id"], agreed_ranking(task, files), api_name="/vote")  # both agree
    with pytest.raises(AppError, match="'rita2' is not an admin"):
        client.predict("rita2", api_name="/export")
    result = client.predict("admin", api_name="/export")
    assert result["pairs"] >= 1 and "pairs" in result["message"]
    rows = pq.read_table(Path(result["folder"]) / "data").to_pylist()
    assert len(rows) == result["pairs"] and rows[0]["strategy"] == "human"
    with pytest.raises(AppError, match="not an admin"):
        client.predict("rita2", api_name="/push")
    with pytest.raises(AppError, match="no Hub dataset configured"):
        client.predict("admin", api_name="/push")


def test_votes_are_not_lost_while_a_generation_runs(served):
    """Six annotators vote at once while a long generation holds the device; every vote lands."""
    studio, url = served
    annotators = [f"crowd{i}" for i in range(6)]
    clients = {name: Client(url, verbose=False) for name in annotators}
    generating = Client(url, verbose=False).submit("a siren then a beep", 30, 3.0, 1, 4, api_name="/generate")
    time.sleep(0.5)
    latencies, votes = [], []
    lock = threading.Lock()

    def annotate(name):
        client = clients[name]
        task, _ = fetch_and_play(client, name)
        started = time.perf_counter()
        vote_id = client.predict(name, task["task_id"], {"A": 2, "B": 1}, api_name="/vote")["vote_id"]
        with lock:
            latencies.append(time.perf_counter() - started)
            votes.append(vote_id)

    before = studio.store.counts()["rankings"]
    with ThreadPoolExecutor(len(annotators)) as pool:
        list(pool.map(annotate, annotators))
    was_generating = not generating.done()
    generating.result(timeout=300)
    assert len(set(votes)) == len(annotators)
    assert studio.store.counts()["rankings"] == before + len(annotators)
    assert studio.store.integrity_check() == "ok"
    print(f"\nvote latency during generation ({'still running' if was_generating else 'finished first'}): "
          f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 10  # answered while the generation ran, not queued behind it


def test_a_model_that_does_not_load_leaves_its_column_saying_why(app_models, tmp_path):
    config = StudioConfig(base_model=str(app_models[0]), dpo_model=str(tmp_path / "not-trained-yet"),
                          data_dir=tmp_path / "data", device="cpu")
    models = load_models(config)
    assert models[0].pipe is not None and models[1].pipe is None
    assert "not available" in models[1].status() and "SpecError" in models[1].status()
    generation = generate_both(models, GenerationSettings.checked("a beep", 2, 3.0, 0, 2), tmp_path / "out",
                               secret=b"test")
    assert len(generation.columns[0].clips) == 2 and "not available" in generation.columns[1].error
    app.build_app(Studio(config, models=models))  # the page builds with one model missing
    # Two base clips still make a ranking task.
    store = Studio(config, models=models).store
    task_id = send_to_annotation(store, generation)
    assert len(store.next_task("x").candidates) == 2 and task_id == 1


def test_send_to_annotation_stores_both_columns_once(served, tmp_path):
    studio, _ = served
    generation = studio.generate(GenerationSettings.checked("a knock then a beep", 2, 3.0, 3, 2))
    task_id = send_to_annotation(studio.store, generation)
    assert send_to_annotation(studio.store, generation) == task_id  # idempotent
    models = {c.model for c in studio.store.candidates().values() if c.prompt == "a knock then a beep"}
    assert models == {studio.config.base_model, studio.config.dpo_model}
    single = studio.generate(GenerationSettings.checked("a short beep", 2, 3.0, 3, 1))
    single.columns.pop()  # only one clip left
    with pytest.raises(GenerationError, match="at least 2 distinct clips"):
        send_to_annotation(studio.store, single)


def test_the_page_labels_clips_with_what_they_were_made_with_and_locks_generate_meanwhile(served):
    """Issue 32: a second Generate during a generation was dropped unseen and the page then showed the first
    prompt's clips under the second prompt's form."""
    studio, _ = served
    made_with, *_, send_button, _, generate_button, state = app.clear_generation(studio)
    assert made_with == "" and state is None  # nothing to send while generating
    assert generate_button["interactive"] is False and send_button["interactive"] is False
    generation = studio.generate(GenerationSettings.checked("a hiss then a beep", 3, 2.5, 11, 1, "DDIM", 2.0))
    made_with, *_, send_button, _, generate_button = app.show_generation(studio, generation, "")
    for shown in ("“a hiss then a beep”", "3 steps", "guidance 2.5", "seed 11", "1 candidate(s)", "DDIM", "2 s"):
        assert shown in made_with
    assert generate_button["interactive"] is True and send_button["interactive"] is True
    made_with, *_, generate_button = app.show_generation(studio, None, "`prompt` is empty")
    assert made_with == "" and generate_button["interactive"] is True

def test_progress_names_the_model_at_work_and_its_percent_is_of_the_whole_generation(served):
    """Issue 32: "DPO-tuned: step 14/200 - 53.5%" mixed one model's step with the whole generation's percent."""
    studio, _ = served
    seen = []
    studio.generate(GenerationSettings.checked("a beep", 3, 3.0, 0, 1), progress=lambda *shown: seen.append(shown))
    assert [text for _, text in seen] == ["Base, model 1 of 2"] * 3 + ["DPO-tuned, model 2 of 2"] * 3
    assert [round(fraction, 3) for fraction, _ in seen] == [0.167, 0.333, 0.5, 0.667, 0.833, 1.0]


def test_an_admin_makes_tasks_from_prompts_in_the_app_and_they_are_scored(served):
    studio, _ = served
    before = set(studio.store.candidates())
    made = app.make_tasks(studio, "admin", "# the Demo's examples, say\na beep then a knock\n\ntwo clicks\n", 2,
                          None, None)
    assert len(made["task_ids"]) == 2 and "2 task(s) ready" in made["message"]
    new = [clip for clip_id, clip in studio.store.candidates().items() if clip_id not in before]
    assert len(new) == 2 * 2 * 2  # prompts x models x k
    assert {clip.model for clip in new} == {studio.config.base_model, studio.config.dpo_model}
    assert all(clip.auto_score is not None for clip in new)  # the judge scored them at once
    again = app.make_tasks(studio, "admin", "a beep then a knock", 2, None, None)  # idempotent, as the CLI
    assert again["task_ids"] == made["task_ids"][:1] and "0 clip(s) made, 4 already stored" in again["message"]
    with pytest.raises(gr.Error, match="whole number"):
        app.make_tasks(studio, "admin", "a beep", 1.5, None, None)


def test_config_from_flags_and_environment(tmp_path):
    env = {"TANGO_BASE_MODEL": "declare-lab/tango", "TANGO_ADMINS": "ann, bob", "GRADIO_SERVER_PORT": "9000"}
    config = parse_config(["--dpo-model", "declare-lab/tango2", "--data-dir", str(tmp_path)], env)
    assert (config.base_model, config.dpo_model, config.port) == ("declare-lab/tango", "declare-lab/tango2", 9000)
    assert config.admins == {"ann", "bob"} and config.data_dir == tmp_path and config.host == "127.0.0.1"
    assert parse_config(["--port", "1234"], env).port == 1234  # the flag wins
    defaults = parse_config([], {})
    assert (defaults.base_model, defaults.dpo_model, str(defaults.data_dir)) == ("tiny", "tiny-dpo", "data")
    for bad in (["--dtype", "float8"], ["--port", "x"], ["--auth-file", str(tmp_path / "missing")]):
        with pytest.raises(SystemExit):
            parse_config(bad, {})


def test_the_login_address_reaches_the_password_check():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from studio.identity import LOGIN_ADDRESS, LoginAddress

    async def login(request):
        return PlainTextResponse(str(LOGIN_ADDRESS.get()))

    served = Starlette(routes=[Route("/login", login, methods=["POST"])],
                       middleware=[Middleware(LoginAddress, trust_proxy=False)])
    answer = TestClient(served).post("/login", headers={"X-Forwarded-For": "1.2.3.4"})
    assert answer.text == "address:testclient"  # the header is not trusted without --trust-proxy


def test_name_mode_with_admins_warns_at_start(tmp_path, caplog):
    Studio(StudioConfig(data_dir=tmp_path / "data", admins=frozenset({"boss"})), models=[])
    assert "anyone who types one can export" in caplog.text and "boss" in caplog.text


def test_auth_file_and_identity(tmp_path):
    auth = tmp_path / "users.txt"
    auth.write_text("# annotators\nalice:s3cret\n\nbob:pa:ss\n")
    assert read_auth_file(auth) == {"alice": "s3cret", "bob": "pa:ss"}
    auth.write_text("alice\n")
    with pytest.raises(IdentityError, match="line 1: expected 'name:password'"):
        read_auth_file(auth)
    assert resolve_name("password", typed="mallory", username="alice", oauth_username=None) == "alice"
    assert resolve_name("name", typed=" carol ", username=None, oauth_username=None) == "carol"
    assert resolve_name("oauth", typed="mallory", username=None, oauth_username="dave") == "dave"
    with pytest.raises(IdentityError, match="log in"):
        resolve_name("oauth", typed="mallory", username=None, oauth_username=None)
