"""Shared test fixtures: the original-format tiny Tango checkpoint and its reference outputs."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "tango-original-tiny"

# datasets caches a local folder under a key its file names and sizes can repeat (the tests write the same
# deterministic rows into fresh temporary folders): a cache of this run's own keeps one test's rows out of another's.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="tango-tests-datasets-cache-")


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """A test that launches the app may leave generation fewer threads (studio.limits): later tests get them back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reference():
    return dict(np.load(FIXTURE_DIR / "reference.npz"))


@pytest.fixture(scope="session")
def fixture_pipe():
    from pipeline import load_pipeline

    pipe = load_pipeline(str(FIXTURE_DIR), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def app_models(tmp_path_factory):
    """Two random-weight tiny-architecture pipelines (different seeds) for the app: (base folder, dpo folder)."""
    from tests.app_helpers import build_test_pipeline

    root = tmp_path_factory.mktemp("app-models")
    return build_test_pipeline(root / "base", seed=0), build_test_pipeline(root / "dpo", seed=1)
