"""Issue 13: owner-set limits on generation, steps checked per sampler, and malformed calls to every
endpoint answered with a message that says what is wrong, writing nothing."""

import shutil
import threading
import time

import httpx
import pytest
import soundfile as sf
from gradio_client import Client
from gradio_client.exceptions import AppError, ValidationError

import app
from pipeline.registry import SpecError, load_pipeline
from studio import Studio, StudioConfig, parse_config
from studio.generation import GenerationError, GenerationSettings, check_steps, load_models
from studio.limits import Busy, GenerationGate, generation_threads
from tests.annotate_helpers import make_tasks
from tests.app_helpers import free_port


@pytest.fixture(scope="module")
def served(app_models, tmp_path_factory):
    base, dpo = map(str, app_models)
    config = StudioConfig(base_model=base, dpo_model=dpo, data_dir=tmp_path_factory.mktemp("limits-data"),
                          admins=frozenset({"admin"}), device="cpu", port=free_port(), max_steps=1000)
    studio = Studio(config)
    make_tasks(studio.store, 3, clips=2)
    demo = app.build_app(studio)
    app.launch(studio, demo, prevent_thread_lock=True, quiet=True)
    yield studio, f"http://127.0.0.1:{config.port}/"
    demo.close()


GOOD = ("a beep then a hiss", 2, 3.0, 0, 1)
MALFORMED = [  # (endpoint, arguments, what the message must say)
    *[("/generate", args, message) for args, message in [
        (("", 2, 3.0, 0, 1), "`prompt` is empty"),
        ((None, 2, 3.0, 0, 1), "`prompt` is empty"),
        (("x" * 1001, 2, 3.0, 0, 1), "at most 1000"),
        (("a beep\x00", 2, 3.0, 0, 1), "control/invisible character U+0000"),
        (("a beep \u202e", 2, 3.0, 0, 1), "U+202E"),
        (("a\u200bbeep", 2, 3.0, 0, 1), "U+200B"),
        (("a beep", 2.5, 3.0, 0, 1), "`steps` must be a whole number"),
        (("a beep", "abc", 3.0, 0, 1), "`steps` must be a whole number"),
        (("a beep", None, 3.0, 0, 1), "`steps` must be a whole number"),
        (("a beep", 0, 3.0, 0, 1), "`steps` must be a whole number"),
        (("a beep", -3, 3.0, 0, 1), "`steps` must be a whole number"),
        (("a beep", 1001, 3.0, 0, 1), "within 1..1000"),
        (("a beep", True, 3.0, 0, 1), "`steps` must be a whole number"),
        (("a beep", 2, "loud", 0, 1), "`guidance` must be a number"),
        (("a beep", 2, -1, 0, 1), "`guidance` must be a number"),
        (("a beep", 2, 31, 0, 1), "`guidance` must be a number"),
        (("a beep", 2, None, 0, 1), "`guidance` must be a number"),
        (("a beep", 2, 3.0, 1.5, 1), "`seed` must be a whole number"),
        (("a beep", 2, 3.0, -1, 1), "`seed` must be a whole number"),
        (("a beep", 2, 3.0, 2**40, 1), "`seed` must be a whole number"),
        (("a beep", 2, 3.0, "7", 1), "`seed` must be a whole number"),
        (("a beep", 2, 3.0, 0, 0), "`candidates` must be a whole number"),
        (("a beep", 2, 3.0, 0, 5), "`candidates` must be a whole number"),
        (("a beep", 2, 3.0, 0, 1.5), "`candidates` must be a whole number"),
        (("a beep", 2, 3.0, 0, [1]), "`candidates` must be a whole number"),
        (("a beep", 1000, 3.0, 0, 1, "DPM-Solver++"), "noise levels repeat"),
        (("a beep", 2, 3.0, 0, 1, "Heun"), "Heun is not in the list of choices"),
        # Issue 19: a duration of the wrong type answered an error without a message; the limit is the models'.
        (("a beep", 2, 3.0, 0, 1, "DDIM", "5"), "`duration` must be 0 or none (each model's own length) or seconds"),
        (("a beep", 2, 3.0, 0, 1, "DDIM", [5]), "`duration` must be 0 or none"),
        (("a beep", 2, 3.0, 0, 1, "DDIM", 20), "seconds within 0.16..11.52"),
        (("a beep", 2, 3.0, 0, 1, "DDIM", -1), "seconds within 0.16..11.52"),
    ]],
    ("/next_task", ("",), "type your annotator name first, in the name box at the top"),
    ("/next_task", (5,), "type your annotator name first: `annotator` must be a string, got int"),
    ("/next_task", ("bad\x07name",), "type your annotator name first: a name is text of at most 64 characters"),
    ("/next_task", ({"name": "x"},), "`annotator` must be a string, got dict"),
    ("/vote", (5, 1, {"A": 1}), "`annotator` must be a string, got int"),
    ("/played", (["mal"], 1, "A"), "`annotator` must be a string, got list"),
    ("/next_task", ("n" * 200,), "type your annotator name first"),
    ("/played", ("mal", 1, "A"), "ask for the next task first"),
    ("/played", ("mal", "one", "A"), "`task_id` must be an integer"),
    ("/played", ("mal", 1.5, "A"), "`task_id` must be an integer"),
    ("/played", ("mal", None, "A"), "`task_id` must be an integer"),
    ("/played", ("", 1, "A"), "type your annotator name first"),
    ("/vote", ("mal", 1, {"A": 1, "B": 2}), "ask for the next task first"),
    ("/vote", ("mal", "x", {"A": 1}), "`task_id` must be an integer"),
    ("/vote", ("mal", 1, {"A": 1}, "maybe"), "`verdict` must be one of"),
    ("/vote", ("mal", 1, None, None), "`verdict` must be one of"),
    ("/vote", ("", 1, None, "skip"), "type your annotator name first"),
    ("/undo", ("mal",), "you have no vote to undo"),
    ("/undo", (5,), "`annotator` must be a string, got int"),
    ("/export", ("mal",), "'mal' is not an admin"),
    ("/export", ("",), "type your annotator name first"),
    ("/push", ("mal",), "'mal' is not an admin"),
    ("/push", ("admin",), "no Hub dataset configured"),
]


def state(studio):
    files = sorted(p.relative_to(studio.config.data_dir) for p in studio.config.data_dir.rglob("*") if "-wal" not in p.name
                   and "-shm" not in p.name and p.suffix != ".sqlite")
    return studio.store.counts(), files, sorted(studio.generated_dir.rglob("*.wav"))


def test_malformed_calls_get_a_clear_error_and_write_nothing(served):
    studio, url = served
    client = Client(url, verbose=False)
    assert len(MALFORMED) >= 40
    before = state(studio)
    for endpoint, args, message in MALFORMED:
        with pytest.raises(AppError) as refused:
            client.predict(*args, api_name=endpoint)
        text = str(refused.value)
        assert message in text, (endpoint, args, text)
        assert str(studio.generated_dir) not in text and "/tmp" not in text, text  # no server path
    assert state(studio) == before
    # The same calls well-formed still work; duration 0 or none is each model's own length, as documented.
    base, _, details = client.predict(*GOOD, api_name="/generate")
    assert len(base) == 1 and details["columns"][0]["error"] is None
    for own_length in (0, None):
        base, _, details = client.predict(*GOOD, "DDIM", own_length, api_name="/generate")
        assert details["settings"]["duration"] is None and abs(len(sf.read(base[0])[0]) / 16000 - 3.84) < 0.01


def test_a_call_with_more_or_fewer_values_than_its_endpoint_takes_is_refused(served):
    """Issue 19: extra values were dropped (a vote sent with eight was stored), missing ones answered an error
    without a message."""
    studio, url = served
    before = state(studio)
    for endpoint, data in (("vote", ["mal"]), ("vote", ["mal", 1, {"A": 1}, "rank", "", "x", "y", "z"]),
                           ("next_task", []), ("played", ["mal", 1, "A", "B"]), ("leaderboard", [1]),
                           ("generate", [*GOOD, "DDIM", 2.0, "extra"])):
        response = httpx.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=10)
        assert response.status_code == 422 and f"/{endpoint} takes " in response.text, (endpoint, response.text)
        assert f"got {len(data)}" in response.text
    with pytest.raises(ValidationError, match=r"/vote takes 5 argument\(s\) \(annotator, task_id, ranking, "
                                              r"verdict, comment\), got 8"):
        Client(url, verbose=False).predict("mal", 1, {"A": 1}, "rank", "", "x", "y", "z", api_name="/vote")
    assert state(studio) == before


def test_a_visitor_over_the_rate_limit_is_told_when_to_come_back():
    now = [1000.0]
    gate = GenerationGate(queue_size=4, per_minute=2, clock=lambda: now[0])
    for _ in range(2):
        with gate.admit("address:1.2.3.4"):
            pass
    with pytest.raises(Busy, match="2 generations per minute: try again in 60 s"):
        with gate.admit("address:1.2.3.4"):
            pass
    with gate.admit("user:other"):  # others are not limited by this visitor
        pass
    now[0] += 45
    with pytest.raises(Busy, match="try again in 15 s"):
        with gate.admit("address:1.2.3.4"):
            pass
    now[0] += 15
    with gate.admit("address:1.2.3.4"):
        pass


def test_a_full_queue_answers_busy_at_once():
    gate = GenerationGate(queue_size=2, per_minute=100)
    release = threading.Event()
    entered = []

    def generation(name):
        with gate.admit(name):
            entered.append(name)
            release.wait(10)

    threads = [threading.Thread(target=generation, args=(f"v{i}",)) for i in range(3)]  # 1 running, 2 queued
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    started = time.perf_counter()
    with pytest.raises(Busy, match=r"busy: 3 generations are running or queued, try again in \d+ s"):
        with gate.admit("v-late"):
            pass
    assert time.perf_counter() - started < 0.05
    release.set()
    for thread in threads:
        thread.join()
    assert len(entered) == 3
    with gate.admit("v-late"):  # room again
        pass


def test_one_visitor_has_at_most_one_generation_running_or_queued():
    """Issue 19: at the defaults (6 per minute, queue 4) six concurrent requests from one address took five
    places; now they take one and everyone else still gets in."""
    gate = GenerationGate(queue_size=4, per_minute=6)
    release = threading.Event()
    admitted, refused = [], []

    def generation(name):
        try:
            with gate.admit(name):
                admitted.append(name)
                release.wait(10)
        except Busy as err:
            refused.append(str(err))

    threads = [threading.Thread(target=generation, args=("address:10.0.0.1",)) for _ in range(6)]
    threads.append(threading.Thread(target=generation, args=("address:10.0.0.2",)))
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    release.set()
    for thread in threads:
        thread.join()
    assert sorted(admitted) == ["address:10.0.0.1", "address:10.0.0.2"]
    assert refused == ["you already have a generation running or queued: wait for it to finish"] * 5
    with gate.admit("address:10.0.0.1"):  # finished: the next one is welcome
        pass


def test_a_forwarded_for_header_counts_only_behind_the_owners_proxy(tmp_path):
    """Issue 19: a client-written X-Forwarded-For reset the per-visitor limit. Without --trust-proxy the
    connection's address counts; with it, the address the proxy saw (the header's last entry)."""
    from types import SimpleNamespace

    def request(forwarded, username=None):
        return SimpleNamespace(username=username, client=SimpleNamespace(host="10.0.0.7"),
                               headers={"x-forwarded-for": forwarded} if forwarded else {})

    studio = SimpleNamespace(config=StudioConfig())
    assert {app.visitor(studio, request(f"198.51.100.{i}")) for i in range(8)} == {"address:10.0.0.7"}
    studio.config = parse_config(["--trust-proxy"], {})
    assert app.visitor(studio, request("1.2.3.4, 203.0.113.9")) == "address:203.0.113.9"  # the client wrote 1.2.3.4
    assert app.visitor(studio, request(None)) == "address:10.0.0.7"
    assert app.visitor(studio, request("1.2.3.4", username="ann")) == "user:ann"
    assert parse_config([], {"TANGO_TRUST_PROXY": "1"}).trust_proxy and not parse_config([], {}).trust_proxy


def test_generation_leaves_a_core_to_the_annotation_endpoints_on_a_cpu():
    assert generation_threads(0, "cpu", cores=2) == 1
    assert generation_threads(0, "cpu", cores=16) == 15
    assert generation_threads(0, "cpu", cores=1) == 1  # one core: nothing to leave
    assert generation_threads(0, "cuda", cores=16) is None  # the GPU computes; torch keeps its own choice
    assert generation_threads(3, "cpu", cores=16) == 3  # the owner's --generate-threads wins


def test_launch_sets_the_generation_threads(app_models, tmp_path):
    import torch

    config = StudioConfig(base_model=str(app_models[0]), dpo_model=str(app_models[1]), data_dir=tmp_path / "d",
                          device="cpu", port=free_port(), generate_threads=1)
    studio = Studio(config)
    demo = app.build_app(studio)
    torch.set_num_threads(2)
    app.launch(studio, demo, prevent_thread_lock=True, quiet=True)
    try:
        assert torch.get_num_threads() == 1
    finally:
        demo.close()


def test_steps_are_checked_per_sampler(app_models, tmp_path):
    [model, _] = load_models(StudioConfig(base_model=str(app_models[0]), dpo_model=str(app_models[1]), device="cpu"))
    check_steps(model.pipe, GenerationSettings.checked("a beep", 1000, 3.0, 0, 1, "DDIM"))
    with pytest.raises(GenerationError, match="`steps` 1000 is too many for the 'DPM-Solver\\+\\+' sampler"):
        check_steps(model.pipe, GenerationSettings.checked("a beep", 1000, 3.0, 0, 1, "DPM-Solver++"))
    with pytest.raises(GenerationError, match="within 1..200"):
        GenerationSettings.checked("a beep", 201, 3.0, 0, 1, max_steps=200)


def test_a_model_folder_missing_a_component_names_it(app_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(app_models[0], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(SpecError, match="lacks its `vae` component"):
        load_pipeline(str(broken), device="cpu")
