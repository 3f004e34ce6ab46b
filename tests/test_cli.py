"""The command lines read their flags before anything heavy loads: `--help` shows every default without
importing torch, gradio, diffusers, datasets or scipy, and flags naming something unusable (a device this machine
lacks, float16 on a CPU, a missing dataset folder, an unknown model spec) are refused in one line with a
non-zero exit. (How long `--help` takes is measured by bench/cli_help.py, not here.)"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "gradio", "diffusers", "transformers", "accelerate", "datasets", "scipy")

# name -> (how Python runs it, its arguments before --help)
COMMANDS = {
    "app.py": ("path", "app.py", []),
    "train_dpo.py": ("path", "train_dpo.py", []),
    "train_grpo.py": ("path", "train_grpo.py", []),
    "train_rounds.py": ("path", "train_rounds.py", []),
    "annotate": ("module", "annotate", []),
    "annotate pool": ("module", "annotate", ["pool"]),
    "annotate export": ("module", "annotate", ["export"]),
    "autopairs.autorank": ("module", "autopairs.autorank", []),
}
# Runs a command as `python FILE` / `python -m MODULE` would, then names the heavy modules it imported.
RUN_AND_LIST_IMPORTS = """
import runpy, sys
kind, target, arguments = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.argv = [target, *arguments]
try:
    runpy.run_path(target, run_name="__main__") if kind == "path" else runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as done:
    code = done.code
print("exit", code, "heavy", sorted(name for name in {heavy!r} if name in sys.modules))
""".format(heavy=HEAVY)


def python(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *arguments], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_default_before_anything_heavy_loads(name):
    kind, target, arguments = COMMANDS[name]
    finished = python("-c", RUN_AND_LIST_IMPORTS, kind, target, *arguments, "--help")
    assert finished.returncode == 0, finished.stderr[-2000:]
    help_text, last_line = finished.stdout.rsplit("\n", 2)[0], finished.stdout.splitlines()[-1]
    assert help_text.startswith("usage:") and last_line == "exit 0 heavy []", last_line
    options = re.split(r"\n  (?=-)", help_text.split("options:", 1)[1])[1:]
    assert options
    for option in options:
        if not option.startswith("-h, --help"):
            assert "(default:" in option, f"{name}: no default shown for {option.split()[0]}"


def refusal(*arguments: str) -> str:
    """The one line a refused command prints; it exits non-zero."""
    finished = python(*arguments)
    assert finished.returncode != 0 and not finished.stdout
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr[-2000:]
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is usable here")
def test_the_app_refuses_cuda_without_a_gpu(tmp_path):
    assert refusal("app.py", "--device", "cuda", "--data-dir", str(tmp_path)).startswith(
        "error: --device cuda: this torch has no CUDA support" if torch.version.cuda is None else
        "error: --device cuda: torch finds no CUDA GPU")


def test_the_app_refuses_float16_on_the_cpu(tmp_path):
    assert refusal("app.py", "--device", "cpu", "--dtype", "float16", "--data-dir", str(tmp_path)).startswith(
        "error: --dtype float16 on the CPU runs several times slower than float32")


def test_training_refuses_a_missing_dataset_folder_and_an_unknown_model(tmp_path):
    common = ["train_dpo.py", "--output_dir", str(tmp_path / "out")]
    assert refusal(*common, "--dataset", "./nope") == "error: --dataset './nope' names a local folder that does not exist"
    assert refusal(*common, "--dataset", str(tmp_path), "--pretrained_model", "nope-model") == (
        "error: --pretrained_model: unknown model spec 'nope-model': not an embedded name (tiny, tiny-dpo), not an "
        "existing folder, and not a Hub repo id like 'declare-lab/tango2'")
    assert not (tmp_path / "out").exists()


# Modules that left `annotate` (issue 30): the old `python -m` path still runs the command for a release, saying
# where it went, and the new path runs it with no note.
MOVED = {"annotate.autorank": ["-m", "autopairs.autorank"], "annotate.perturb": ["-m", "soundworld.perturb"],
         "annotate.reward": ["-m", "preference.reward"], "annotate.rounds": ["train_rounds.py"]}


@pytest.mark.parametrize("old", MOVED)
def test_a_moved_command_answers_at_its_old_path_and_says_where_it_went(old):
    new = MOVED[old]
    before, after = python("-m", old, "--help"), python(*new, "--help")
    assert before.returncode == after.returncode == 0, before.stderr[-2000:] + after.stderr[-2000:]
    assert before.stdout.split("\n", 1)[1] == after.stdout.split("\n", 1)[1]  # the same options (usage names the file)
    assert f"`python -m {old}` moved to `{' '.join(['python', *new])}`" in before.stderr and not after.stderr.strip()
