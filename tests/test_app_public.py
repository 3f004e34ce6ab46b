"""The app in public (issue 13): nothing but clip audio is served, under names that carry nothing;
the blind order cannot be predicted; no annotator can be stuck on a task."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

import app
from annotate import Store
from annotate.pool import build_pool
from annotate.validation import InvalidInput
from studio import Studio, StudioConfig
from studio.annotation import AnnotationSession
from studio.generation import LoadedModel
from studio.serving import NotAClip
from tests.annotate_helpers import SineGenerator, make_tasks
from tests.app_helpers import agreed_ranking, free_port


def no_models():
    return [LoadedModel("base", "Base", "none-a", None, "not loaded in this test"),
            LoadedModel("dpo", "DPO-tuned", "none-b", None, "not loaded in this test")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("public-data")
    config = StudioConfig(data_dir=data_dir, admins=frozenset({"admin"}), device="cpu", port=free_port())
    studio = Studio(config, models=no_models())
    make_tasks(studio.store, 6, clips=2)
    demo = app.build_app(studio)
    app.launch(studio, demo, prevent_thread_lock=True, quiet=True)
    yield studio, f"http://127.0.0.1:{config.port}/"
    demo.close()


def fetch(url: str, path) -> httpx.Response:
    return httpx.get(f"{url}gradio_api/file={path}", timeout=10)


def test_only_clip_audio_is_served_under_random_names(served):
    studio, url = served
    client = Client(url, verbose=False)
    for name in ("ann", "bo"):  # two votes, then an export: every kind of file exists in the data folder
        task, files = client.predict(name, api_name="/next_task")
        for clip in task["clips"]:
            client.predict(name, task["task_id"], clip["label"], api_name="/played")
        client.predict(name, task["task_id"], agreed_ranking(task, files), api_name="/vote")
    client.predict("admin", api_name="/export")
    (studio.config.data_dir / "notes.txt").write_text("not for visitors")
    data = studio.config.data_dir.resolve()
    private = [data / "annotate.sqlite", data / "annotate.sqlite-wal", data / "annotate.sqlite-shm", data / "notes.txt",
               data / "secret",
               *sorted((data / "export").rglob("*.*"))[:3], *sorted(studio.store.audio_dir.rglob("*.wav"))[:2]]
    assert all(path.exists() for path in private) and any("export" in str(p) for p in private)
    for path in private:
        for spelled in (path, str(path).replace(str(data), str(studio.config.data_dir))):
            assert fetch(url, spelled).status_code in (403, 404), spelled

    # What an annotator gets: the clip's bytes, under a name that is neither the content hash nor stable.
    task, files = client.predict("cy", api_name="/next_task")
    hashes = {c.sha256 for c in studio.store.candidates().values()}
    copies = sorted(studio.clip_server.folder.glob("*.wav"))
    assert copies and all(fetch(url, copy).status_code == 403 for copy in copies)  # only through gradio's cache
    served_names = [f.rsplit("/", 1)[-1].removesuffix(".wav") for f in files]
    assert not set(served_names) & hashes and len(set(served_names)) == len(served_names)
    again, files_again = client.predict("cy", api_name="/next_task")  # reload: same order and files
    assert [c["clip_id"] for c in again["clips"]] == [c["clip_id"] for c in task["clips"]]
    assert [f.rsplit("/", 1)[-1] for f in files_again] == [f.rsplit("/", 1)[-1] for f in files]
    other, other_files = Client(url, verbose=False).predict("dee", api_name="/next_task")
    assert not {f.rsplit("/", 1)[-1] for f in other_files} & set(f.rsplit("/", 1)[-1] for f in files)


def test_stats_beside_the_running_app_breaks_nothing(served):
    studio, url = served
    for _ in range(2):
        result = subprocess.run([sys.executable, "-m", "annotate", "stats", "--data-dir", str(studio.config.data_dir)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "tasks: 6" in result.stdout
    client = Client(url, verbose=False)
    task, _ = client.predict("eve", api_name="/next_task")
    for clip in task["clips"]:
        client.predict("eve", task["task_id"], clip["label"], api_name="/played")
    assert client.predict("eve", task["task_id"], {"A": 2, "B": 1}, api_name="/vote")["vote_id"] > 0
    assert studio.store.integrity_check() == "ok"


def test_the_shown_order_is_not_a_function_of_name_and_task(tmp_path):
    """1000 annotators, one task each time: the model behind position 1 in two identical stores differs
    about half of the time (a function of the public inputs would agree every time) and is balanced."""
    names = [f"annotator-{i}" for i in range(1000)]
    firsts = []
    for run in range(2):
        store = Store(tmp_path / f"run{run}")
        make_tasks(store, 1, clips=2, models=("base", "dpo"))
        models = {clip.id: clip.model for clip in store.candidates().values()}
        firsts.append([models[store.next_task(name).candidates[0].id] for name in names])
    agree = sum(a == b for a, b in zip(*firsts))
    assert 400 < agree < 600, agree
    assert 400 < Counter(firsts[0])["base"] < 600


def test_no_annotator_is_ever_stuck(tmp_path):
    store = Store(tmp_path / "data")
    with pytest.raises(InvalidInput, match="2 models x k=5 clips; it must be 2..8"):
        build_pool(store, ["a beep"], ["m1", "m2"], k=5, make_generator=SineGenerator, progress=False)
    assert store.counts()["tasks"] == 0
    with pytest.raises(InvalidInput, match="2..8 clips"):
        make_tasks(store, 1, clips=9)
    report = build_pool(store, ["a beep", "a hiss"], ["m1", "m2"], k=4, make_generator=SineGenerator, progress=False)
    session = AnnotationSession(store, b"secret")
    task = session.next_task("fay")
    assert task.task_id in report.task_ids and len(task.clip_ids) == 8
    # The app restarts (plays forgotten): a skip still works, and the next task comes.
    restarted = AnnotationSession(store, b"secret")
    assert restarted.vote("fay", task.task_id, None, "skip") > 0
    assert restarted.next_task("fay").task_id != task.task_id


def test_pool_seeds_are_drawn_at_random_and_kept(tmp_path):
    stores = [Store(tmp_path / f"s{i}") for i in range(2)]
    for store in stores:
        build_pool(store, ["a beep", "a hiss"], ["m1", "m2"], k=2, make_generator=SineGenerator, progress=False)
    seeds = [sorted(c.seed for c in store.candidates().values()) for store in stores]
    assert seeds[0] != seeds[1] and len(set(seeds[0])) == 8  # every clip its own seed, across models too
    again = build_pool(stores[0], ["a beep", "a hiss", "a hum"], ["m1", "m2"], k=2, make_generator=SineGenerator,
                       progress=False)
    assert again.reused == 8 and again.generated == 4  # the stored seeds are found again


# On a Space gradio also starts its hot-reloader, whose thread wants the `spaces` package (which Spaces preinstall).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_space_mode_starts_and_sends_visitors_to_the_hub_log_in(tmp_path, monkeypatch):
    """Issue 19: on a Space (SPACE_ID set, no auth file) the app serves with the "Sign in with Hugging Face"
    button, which needs gradio's OAuth extra. The Hub's OpenID provider is a local stand-in here."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import gradio.oauth

    class OpenIDProvider(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"issuer": provider_url, "authorization_endpoint": f"{provider_url}/authorize",
                               "token_endpoint": f"{provider_url}/token"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    provider = ThreadingHTTPServer(("127.0.0.1", 0), OpenIDProvider)
    provider_url = f"http://127.0.0.1:{provider.server_port}"
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    # What a Space with `hf_oauth: true` sets (gradio reads the OAuth variables when it is imported).
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/tango-studio")
    for name, value in (("OAUTH_CLIENT_ID", "client-id"), ("OAUTH_CLIENT_SECRET", "client-secret"),
                        ("OAUTH_SCOPES", "openid profile"), ("OPENID_PROVIDER_URL", provider_url)):
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(gradio.oauth, name, value)
    config = StudioConfig(data_dir=tmp_path / "data", device="cpu", port=free_port())
    studio = Studio(config, models=no_models())
    assert studio.identity_mode == "oauth"
    demo = app.build_app(studio)
    app.launch(studio, demo, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{config.port}"
        assert httpx.get(f"{url}/", timeout=10).status_code == 200
        login = httpx.get(f"{url}/login/huggingface", timeout=10, follow_redirects=False)
        assert login.status_code in (302, 307), login.text
        assert login.headers["location"].startswith(f"{provider_url}/authorize?") and "client_id=client-id" in login.headers["location"]
        with pytest.raises(Exception, match="log in with your Hugging Face account first"):
            Client(f"{url}/", verbose=False).predict("anyone", api_name="/next_task")
    finally:
        demo.close()
        provider.shutdown()


def test_a_restart_after_a_kill_finds_its_port_free_while_old_connections_linger():
    """Issue 19: after kill -9 the dead server's connections sit in TIME_WAIT for a minute; the port is free to
    listen on (uvicorn sets SO_REUSEADDR), so the start-up check must not call it "in use". A port another
    program listens on still is."""
    import socket

    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        connection, _ = server.accept()
        connection.close()  # the server's end closes first, so it is the one left in TIME_WAIT
        client.close()
    app.check_port_free("127.0.0.1", port)
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        with pytest.raises(SystemExit, match=f"port {port} on 127.0.0.1 is in use"):
            app.check_port_free("127.0.0.1", port)


def test_only_regular_files_in_the_clip_folder_are_served(tmp_path):
    """Issue 19: a stored clip replaced by a link to the database was served as a .wav."""
    studio = Studio(StudioConfig(data_dir=tmp_path / "data"), models=no_models())
    make_tasks(studio.store, 3, clips=2)
    clips = sorted(studio.store.audio_dir.rglob("*.wav"))
    database = studio.config.data_dir / "annotate.sqlite"
    clips[0].unlink()
    clips[0].symlink_to(database.resolve())  # a link out of the clip folder
    clips[1].unlink()
    clips[1].symlink_to(clips[2])  # a link to another clip, inside the folder
    for clip in clips[:2]:
        with pytest.raises(NotAClip, match="it is not served") as refused:
            studio.clip_server.serve(clip)
        assert str(tmp_path) not in str(refused.value)
    outside = tmp_path / "elsewhere.wav"
    outside.write_bytes(clips[2].read_bytes())
    with pytest.raises(NotAClip, match="outside the clip folder"):
        studio.clip_server.serve(outside)
    assert Path(studio.clip_server.serve(clips[2])).read_bytes() == clips[2].read_bytes()
    assert not any(p.read_bytes().startswith(b"SQLite format") for p in studio.clip_server.folder.iterdir())
