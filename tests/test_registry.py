"""Model specs: local folders of both formats, Hub ids (through a local stand-in), bad checkpoints."""

import fnmatch
import shutil
from pathlib import Path

import pytest
import torch

import pipeline.registry as registry
from pipeline import TangoPipeline, load_pipeline
from pipeline.original import CheckpointError, load_original, main as convert_main
from pipeline.registry import SpecError
from tests.conftest import FIXTURE_DIR


@pytest.fixture
def checkpoint_copy(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURE_DIR, folder)
    return folder


def test_loaded_pipelines_are_cached(fixture_pipe):
    assert load_pipeline(str(FIXTURE_DIR), device="cpu") is fixture_pipe
    assert fixture_pipe.device.type == "cpu" and fixture_pipe.unet.dtype == torch.float32


@pytest.mark.parametrize("spec", ["", "not a spec!", "/no/such/folder", "./missing-dir", "a/b/c"])
def test_unknown_specs_are_refused_clearly(spec):
    with pytest.raises(SpecError, match="spec"):
        load_pipeline(spec)


def test_folder_of_neither_format(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SpecError, match="neither model_index.json"):
        load_pipeline(str(tmp_path))


@pytest.mark.parametrize("name", ["pytorch_model_main.bin", "pytorch_model_vae.bin", "vae_config.json"])
def test_missing_checkpoint_file_is_named(checkpoint_copy, name):
    (checkpoint_copy / name).unlink()
    with pytest.raises(CheckpointError, match=name):
        load_original(checkpoint_copy)


def test_corrupt_checkpoint_file_is_named(checkpoint_copy):
    path = checkpoint_copy / "pytorch_model_vae.bin"
    path.write_bytes(path.read_bytes()[:10_000])
    with pytest.raises(CheckpointError, match="pytorch_model_vae.bin.*corrupt"):
        load_original(checkpoint_copy)


def test_mismatched_and_missing_keys_are_named(checkpoint_copy):
    path = checkpoint_copy / "pytorch_model_main.bin"
    state = torch.load(path, weights_only=True)
    state["unet.conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    del state["unet.conv_out.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_original(checkpoint_copy)
    message = str(info.value)
    assert "conv_in.weight" in message and "conv_out.bias" in message and "pytorch_model_main.bin" in message


def test_pickled_code_is_not_loaded(checkpoint_copy):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    with open(checkpoint_copy / "pytorch_model_stft.bin", "wb") as f:
        pickle.dump({"mel_basis": Payload()}, f)
    with pytest.raises(CheckpointError, match="pytorch_model_stft.bin"):
        load_original(checkpoint_copy)


class LocalHub:
    """Stands in for huggingface_hub.snapshot_download: serves repos from local folders, honours allow_patterns."""

    def __init__(self, root: Path, repos: dict[str, Path]):
        self.root, self.repos, self.calls = root, repos, []

    def __call__(self, repo_id, revision=None, allow_patterns=None, **kwargs):
        self.calls.append((repo_id, tuple(allow_patterns or ())))
        if repo_id not in self.repos:
            raise FileNotFoundError(f"404 {repo_id}")
        snapshot = self.root / repo_id.replace("/", "--") / "snapshots" / "c0ffee"
        for file in self.repos[repo_id].rglob("*"):
            relative = file.relative_to(self.repos[repo_id]).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(relative, p) for p in allow_patterns or ["*"]):
                (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, snapshot / relative)
        snapshot.mkdir(parents=True, exist_ok=True)
        return str(snapshot)


def test_hub_original_repo_is_fetched_selectively_converted_and_cached(tmp_path, monkeypatch, fixture_pipe):
    hub = LocalHub(tmp_path / "hub-cache", {"declare-lab/tango-tiny": FIXTURE_DIR})
    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    monkeypatch.setenv("TANGO_CONVERTED_CACHE", str(tmp_path / "converted"))
    monkeypatch.setattr(registry, "_cache", {})

    pipe = load_pipeline("declare-lab/tango-tiny", device="cpu")
    assert isinstance(pipe, TangoPipeline)
    snapshot = tmp_path / "hub-cache" / "declare-lab--tango-tiny" / "snapshots" / "c0ffee"
    fetched = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    assert "reference.npz" not in fetched and "README.md" not in fetched  # only what loading needs
    assert "pytorch_model_main.bin" in fetched and "flan-t5-tiny/spiece.model" in fetched
    cached = tmp_path / "converted" / "declare-lab--tango-tiny--c0ffee"
    assert (cached / "model_index.json").is_file()

    # Next start: the converted copy is used, no conversion happens.
    monkeypatch.setattr(registry, "_cache", {})
    monkeypatch.setattr(registry, "load_original", lambda folder: pytest.fail("converted again"))
    again = load_pipeline("declare-lab/tango-tiny", device="cpu")
    for name, value in fixture_pipe.unet.state_dict().items():
        torch.testing.assert_close(again.unet.state_dict()[name], value, rtol=0, atol=0)


def test_hub_diffusers_repo_and_missing_repo(tmp_path, monkeypatch, fixture_pipe):
    exported = tmp_path / "exported"
    fixture_pipe.save_pretrained(exported)
    hub = LocalHub(tmp_path / "hub-cache", {"someone/tango-dpo": exported})
    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    monkeypatch.setattr(registry, "_cache", {})
    assert isinstance(load_pipeline("someone/tango-dpo", device="cpu"), TangoPipeline)
    with pytest.raises(SpecError, match="could not fetch model 'nobody/nothing'"):
        load_pipeline("nobody/nothing", device="cpu")


def test_convert_cli_writes_a_loadable_diffusers_folder(tmp_path, capsys):
    out = tmp_path / "converted"
    convert_main([str(FIXTURE_DIR), str(out)])
    assert (out / "model_index.json").is_file() and "wrote" in capsys.readouterr().out
    assert isinstance(load_pipeline(str(out), device="cpu"), TangoPipeline)


def test_a_mistyped_local_folder_is_named_as_a_folder_not_a_failed_download(tmp_path, monkeypatch):
    (tmp_path / "runs" / "my-dpo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_load_hub", lambda repo_id: pytest.fail(f"tried the Hub for {repo_id}"))
    with pytest.raises(SpecError, match=r"'runs/my-dpoo' names a local folder that does not exist; did you mean 'runs/my-dpo'\?"):
        load_pipeline("runs/my-dpoo")
    with pytest.raises(SpecError, match="'./elsewhere/model' names a local folder that does not exist"):
        load_pipeline("./elsewhere/model")
    assert registry.resolve_spec("declare-lab/tango2") == ("hub", None)  # no local "declare-lab" folder: the Hub
