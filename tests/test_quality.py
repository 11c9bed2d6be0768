"""The project's own standards, checked by the suite: typed and lint-clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_python

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_mypy_strict_is_clean() -> None:
    result = run(sys.executable, "-m", "mypy", "--strict", "heartbeat")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = run(sys.executable, "-m", "ruff", "check", "heartbeat", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(
        sys.executable, "-m", "ruff", "format", "--check", "heartbeat", "tests", "benchmarks"
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the layers: imports run one way ------------------------------------------------------------

PURE = ["heartbeat._judge", "heartbeat._schedule", "heartbeat._validate", "heartbeat._stats"]
PURE += ["heartbeat.transport", "heartbeat._cause", "heartbeat._evidence", "heartbeat._tally"]
PURE += ["heartbeat._names", "heartbeat._responsive", "heartbeat._tracebacks"]
PURE += ["heartbeat._memory", "heartbeat._memory_share", "heartbeat._cause_words"]


def module_imports(lazy: bool = False) -> dict[str, set[str]]:
    """For each module of the package: the package modules it imports (not under
    TYPE_CHECKING), at module level or, with ``lazy``, inside functions too."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "heartbeat").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text())
        found: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            in_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for sub in ast.walk(node) if lazy or not in_function else []:
                if not lazy and isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    break
                if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                    if sub.module == "heartbeat":
                        found.update(f"heartbeat.{alias.name}" for alias in sub.names)
                    elif sub.module.startswith("heartbeat."):
                        found.add(sub.module)
                elif isinstance(sub, ast.Import):
                    found.update(a.name for a in sub.names if a.name.startswith("heartbeat."))
        graph[name] = found
    return graph


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    # On every claimed Python (.ci/other-pythons runs this on each): what runs at import, such
    # as a subscripted LoggerAdapter (3.11+ only), is not checked by mypy's python_version.
    code = "".join(f"import {module}\n" for module in sorted(module_imports()))
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_the_pure_core_imports_neither_zmq_nor_tornado() -> None:
    code = (
        "import sys\n"
        "sys.modules['zmq'] = sys.modules['tornado'] = None  # any import of them fails\n"
        + "".join(f"import {module}\n" for module in PURE)
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_package_imports_have_no_cycle_and_the_monitor_imports_no_transport_but_its_default() -> (
    None
):
    graph = module_imports()
    assert not graph["heartbeat.monitor"] & {"heartbeat.pool", "heartbeat._sockets"}, graph[
        "heartbeat.monitor"
    ]
    for module in PURE:
        assert graph[module] <= set(PURE), (module, graph[module])
    # A cycle through an import inside a function is a cycle too (it only hides from Python).
    graph = module_imports(lazy=True)
    # Depth-first search for a cycle among the modules (the package itself imports lazily).
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in graph.get(module, set()) - {"heartbeat"}:
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*path, dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
