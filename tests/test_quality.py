"""The project's own standards, checked by the suite: typed and lint-clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
