"""The documentation cannot drift: it builds strictly, and every example in it runs."""

from __future__ import annotations

import doctest
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from traitlets.config.loader import PyFileConfigLoader

from heartbeat import Heart
from tests.test_cli import EXE, write_connection_file
from tests.test_extension import ENABLE
from tests.test_jupyter_server import CONFIG_LINE

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for n, match in enumerate(FENCE.finditer(page.read_text())):
            if match.group(1) == language:
                found.append((f"{page.name}#{n}", match.group(2)))
    return found


PYTHON = [(name, code) for name, code in blocks("python") if "get_config()" not in code]
CONFIGS = [(name, code) for name, code in blocks("python") if "get_config()" in code]


def test_the_docs_build_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("HeartMonitor") > 3


@pytest.mark.parametrize(("name", "code"), PYTHON, ids=[n for n, _ in PYTHON])
def test_every_python_example_runs(name: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{name}\n{result.stdout}\n{result.stderr}"


def test_there_are_examples_to_run() -> None:
    assert len(PYTHON) >= 5 and CONFIGS


@pytest.mark.parametrize(("name", "code"), CONFIGS, ids=[n for n, _ in CONFIGS])
def test_config_file_examples_load_as_jupyter_config(name: str, code: str, tmp_path: Path) -> None:
    (tmp_path / "jupyter_server_config.py").write_text(code)
    config = PyFileConfigLoader("jupyter_server_config.py", path=str(tmp_path)).load_config()
    cls = config.AsyncMappingKernelManager.kernel_manager_class
    module, _, attr = cls.rpartition(".")
    from heartbeat.jupyter import HeartbeatKernelManager

    assert getattr(importlib.import_module(module), attr) is HeartbeatKernelManager
    km = HeartbeatKernelManager(config=config)
    settings = config.HeartbeatKernelManager
    assert settings and all(getattr(km, key) == value for key, value in settings.items())


def test_the_documented_server_line_is_the_tested_one() -> None:
    jupyter_page = (ROOT / "docs" / "jupyter.md").read_text()
    assert f"jupyter server {CONFIG_LINE}" in jupyter_page


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [code.strip() for _, code in blocks("bash") if _.startswith("README")]
    assert commands[0] == "pip install . && heartbeat demo"
    test_command = commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.replace("pip install", "python -m pip install -q") in ci
    assert "heartbeat demo" in readme.split("```")[1]


def test_the_pythons_the_readme_says_are_tested_are_the_claimed_ones_and_ci_runs_them() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    claimed = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    lowest = min(claimed, key=lambda v: int(v.split(".")[1]))
    assert f'requires-python = ">={lowest}"' in pyproject
    assert f'python_version = "{lowest}"' in pyproject  # mypy
    assert f'target-version = "py{lowest.replace(".", "")}"' in pyproject  # ruff
    said = re.search(r"Tested on Python ([0-9., and]+):", (ROOT / "README.md").read_text())
    assert said is not None
    assert re.findall(r"3\.\d+", said.group(1)) == claimed
    # .ci/run goes on to the other Pythons, where the README's two commands run.
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(".ci/other-pythons")
    others = (ROOT / ".ci" / "other-pythons").read_text()
    assert "Programming Language :: Python :: " in others  # it reads the claimed versions
    assert "python -m pip install -q . && heartbeat demo" in others
    assert "python -m pip install -q -e '.[test]' && python -m pytest" in others


def test_every_shell_example_is_one_the_suite_or_ci_runs() -> None:
    readme = [code.strip() for name, code in blocks("bash") if name.startswith("README")]
    # The extension's enable command: tests/test_extension.py runs it.
    tested = {*readme, f"jupyter server {CONFIG_LINE}", ENABLE}
    for name, code in blocks("bash"):
        assert code.strip() in tested, name


def test_the_kubernetes_probe_example_works_against_a_real_heart(tmp_path: Path) -> None:
    [(_, spec)] = blocks("yaml")
    pod = yaml.safe_load(spec)
    probe = pod["spec"]["containers"][0]["livenessProbe"]
    command = probe["exec"]["command"]
    assert command[:2] == ["heartbeat", "probe"]
    assert probe["initialDelaySeconds"] > 0 and probe["failureThreshold"] >= 1
    timeout = float(command[command.index("--timeout") + 1])
    assert timeout < probe["timeoutSeconds"]  # the probe returns before Kubernetes gives up
    with Heart() as heart:
        assert heart.port is not None
        connection = write_connection_file(tmp_path / "kernel.json", heart.port)
        argv = [EXE, *command[1:]]
        argv[2] = str(connection)  # the pod's connection file, here
        alive = subprocess.run(argv, capture_output=True, timeout=60, check=False)
        assert alive.returncode == 0
    dead = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert dead.returncode == 1


@pytest.mark.parametrize("module", ["heartbeat._judge", "heartbeat.heart", "heartbeat.probe"])
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_the_timing_diagram_script_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "diagram.py"), str(tmp_path / "t.png")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t.png").stat().st_size > 10_000
