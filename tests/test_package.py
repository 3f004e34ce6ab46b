"""The project installs as a package (`pip install .`): built offline from pyproject.toml and installed into a folder
of its own, it works from a folder outside the repository: the README's Python snippet loads the embedded `tiny`
model from inside the package, the console commands answer --help before anything heavy loads, and the
requirements are requirements.txt's pins (the test tools an extra)."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.test_cli import HEAVY

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("tango-studio", "tango-annotate", "tango-train-dpo", "tango-train-grpo")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                                reason="building the package offline (--no-build-isolation) needs setuptools installed")

# The README's Python snippet with the embedded model instead of a Hub download, and a few steps.
README_SNIPPET = """
import torch
from pipeline import load_pipeline, save_audio
from pipeline.specs import EMBEDDED

pipe = load_pipeline("tiny")
generator = torch.Generator().manual_seed(0)
audio = pipe("two knocks then a hiss", num_inference_steps=2, generator=generator).audios
save_audio("knocks.wav", audio[0], pipe.sampling_rate)
print(EMBEDDED["tiny"])
"""

# Runs an installed console script as its shell would, then names the heavy modules it imported.
RUN_AND_LIST_IMPORTS = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as done:
    code = done.code
print("exit", code, "heavy", sorted(name for name in {heavy!r} if name in sys.modules))
""".format(heavy=HEAVY)


def copy_build_inputs(target: Path) -> Path:
    """What the build reads (pyproject.toml and what it names), copied to ``target``: the build writes build/ and an
    egg-info beside its sources, which stay out of the checkout that way."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name.split(".")[0] for name in setuptools["packages"]} | set(setuptools["package-dir"].values())
    for folder in folders:
        shutil.copytree(REPO / folder, target / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ["pyproject.toml", "README.md", "requirements.txt", "requirements-test.txt", *(f"{m}.py" for m in setuptools["py-modules"])]:
        shutil.copy2(REPO / name, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package as `pip install --target` lays it out, without its dependencies (this environment has them)."""
    root = tmp_path_factory.mktemp("package")
    sources = copy_build_inputs(root / "sources")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--no-compile", "--quiet", "--target", str(root / "installed"),
                    # a stored wheel: deflating the embedded models' 37 MB was most of the build's time
                    "--config-settings=--build-option=--compression=stored", str(sources)],
                   check=True, capture_output=True, timeout=300)
    return root / "installed"


def run_outside(installed: Path, folder: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``python ARGUMENTS`` in ``folder`` (outside the repository) with only the installed package importable."""
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *arguments], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_readme_snippet_runs_outside_the_repository_with_the_packaged_model(installed, tmp_path):
    finished = run_outside(installed, tmp_path, "-c", README_SNIPPET)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert Path(finished.stdout.splitlines()[-1]).is_relative_to(installed)  # the copy inside the package
    assert (tmp_path / "knocks.wav").stat().st_size > 1000


@pytest.mark.parametrize("command", COMMANDS)
def test_console_commands_answer_help_before_anything_heavy_loads(installed, tmp_path, command):
    finished = run_outside(installed, tmp_path, "-c", RUN_AND_LIST_IMPORTS, str(installed / "bin" / command), "--help")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.startswith(f"usage: {command} ") and finished.stdout.splitlines()[-1] == "exit 0 heavy []"


def test_the_package_requires_the_pins_of_requirements_txt_and_the_test_tools_only_as_an_extra(installed):
    [metadata] = installed.glob("tango_dpo_studio-*.dist-info/METADATA")
    required = {line.removeprefix("Requires-Dist: ") for line in metadata.read_text().splitlines()
                if line.startswith("Requires-Dist: ")}

    def pins(name: str) -> set[str]:
        return {line for line in (REPO / name).read_text().splitlines() if line and not line.startswith("#")}

    test_tools = {f'{pin}; extra == "test"' for pin in pins("requirements-test.txt")}
    assert required == pins("requirements.txt") | test_tools and "torch==2.13.0" in required
    assert not any(pin.startswith(("pytest", "playwright")) for pin in pins("requirements.txt"))
