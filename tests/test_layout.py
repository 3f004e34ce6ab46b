"""The shape of the code (issue 30), read from the source with `ast`: imports point down with no circle between
files, the library never imports a script, the pipeline knows nothing of the packages above it, no package holds
more than a quarter of the code, and every public command answers `--help`."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "soundworld", "preference_data", "annotate", "preference", "autopairs", "studio")
SCRIPTS = ("app", "entry_points", "train_dpo", "train_grpo", "train_rounds")
# Old paths that forward to a module's new place for one release: they name the new module by string only.
FORWARDERS = {"annotate/moved.py", "bench/moved.py"}


def project_files() -> list[Path]:
    return sorted(p for p in REPO.glob("*.py")) + sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, resolved to this project's modules."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in project_files()}
    return {name: {m for m in imported_modules(path) if m in files and m != name} for name, path in files.items()}


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_library_never_imports_a_script_and_the_pipeline_nothing_above_it(graph):
    for module, imports in graph.items():
        if top(module) in PACKAGES:
            assert not {m for m in imports if top(m) in SCRIPTS}, f"{module} imports a script: {imports}"
        if top(module) == "pipeline":
            above = {m for m in imports if top(m) != "pipeline"}
            assert not above, f"{module} imports {above}: the pipeline must not know the packages above it"


def test_no_import_circle_between_files(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for child in sorted(graph[module]):
            if state.get(child) == 1:
                circle = path[path.index(child):] + [child] if child in path else [module, child]
                pytest.fail("import circle: " + " -> ".join(circle))
            if child not in state:
                visit(child, path + [child])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_package_holds_more_than_a_quarter_of_the_code():
    def lines(path: Path) -> int:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())

    code = [p for p in REPO.rglob("*.py") if not {"tests", ".git"} & set(p.relative_to(REPO).parts)]
    total = sum(map(lines, code))
    for package in (*PACKAGES, "bench", "experiments"):
        share = sum(lines(p) for p in code if p.relative_to(REPO).parts[0] == package) / total
        assert share <= 0.25, f"{package}/ holds {share:.0%} of the {total} non-test lines"


# Public commands the other tests do not already run with --help (test_cli: app.py, the train_*.py scripts,
# annotate, annotate pool|export, autopairs.autorank and the moved paths; test_package: the console commands).
COMMANDS = [["-m", "annotate", "stats"], ["-m", "annotate", "verdict"], ["-m", "annotate", "push"],
            ["-m", "annotate", "gold"], ["-m", "soundworld.evaluate"], ["-m", "preference.reward", "train"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_public_command_answers_help(command):
    finished = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0 and finished.stdout.startswith("usage:"), finished.stderr[-2000:]
