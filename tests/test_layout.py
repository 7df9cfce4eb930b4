"""The package's architecture, as tests: no import cycles, tasks behind one interface that imports
no Keras until a job runs, no task importing the job runner, and the public paths kept working."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cifar_exp"


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (conf/ holds YAML only)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at the top or inside a function alike (a lazy
    import still runs, so a lazy cycle is still a cycle). `from pkg import name` counts as the
    module pkg.name when that is a module, else as pkg."""
    modules = _modules()

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {owner(a.name) for a in node.names if a.name.split(".")[0] == "cifar_exp"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base.split(".")[0] == "cifar_exp":
                    targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else owner(base)
                                for a in node.names}
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "cifar_exp.tasks.transfer" in graph  # the scan saw the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_find_cycle_finds_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_task_imports_the_job_runner_or_the_entry_point():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("cifar_exp.tasks"):
            assert not targets & {"cifar_exp.job", "cifar_exp.main", "cifar_exp.validate"}, name


def test_every_task_module_has_the_interface_and_imports_no_keras():
    """validate.py calls each task's `check` in processes that must not import TensorFlow (--cfg job,
    the sweeper): the task modules themselves are light; Keras comes inside `run`."""
    code = (
        "import sys, inspect; from cifar_exp.tasks import TASKS, load\n"
        "for name in TASKS:\n"
        "    task = load(name)\n"
        "    assert callable(task.check), name\n"
        "    assert list(inspect.signature(task.run).parameters)[:3] == ['cfg', 'tracker', 'checkpoint_dir'], name\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'jax', 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_validate_accepts_exactly_the_registered_tasks():
    from conftest import compose

    from cifar_exp.errors import ConfigError
    from cifar_exp.tasks import TASKS
    from cifar_exp.validate import validate

    with pytest.raises(ConfigError, match="classify, kfold_poly, transfer"):
        validate(compose(["task=segment"]))
    assert list(TASKS) == ["classify", "kfold_poly", "transfer"]


def test_public_paths_kept_by_the_shims():
    """`from cifar_exp.saved import load_model` (README) and `python -m cifar_exp.report` still work."""
    import cifar_exp.saved
    import cifar_exp.tracking.saved

    assert cifar_exp.saved.load_model is cifar_exp.tracking.saved.load_model
    result = subprocess.run([sys.executable, "-m", "cifar_exp.report", "--help"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--sweep-id" in result.stdout, result.stderr


def test_every_subpackage_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(ROOT)} needs a docstring saying what it holds"
