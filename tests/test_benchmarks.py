"""The benchmarks run, in a short form (HEARTBEAT_SLOW=1: a long one). They print numbers;
these tests assert only behaviour: no false death, every real death reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SLOW

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scale_benchmark_smoke() -> None:
    sizes, duration = ("1000", "30") if SLOW else ("200", "3")
    result = run(
        "benchmarks.scale",
        "--sizes",
        sizes,
        "--duration",
        duration,
        "--kinds",
        "pool",
        "kernelmanager",
        "--start",
        "staggered",
        "--rounds",
        "2",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr  # exit 1: a false death
    lines = result.stdout.splitlines()
    rows = [line.split() for line in lines if line.strip()[:1].isdigit() and "," not in line]
    table = {row[1]: row for row in rows[-2:]}
    assert set(table) == {"pool", "kernelmanager"}
    managed = table["kernelmanager"]
    assert managed[6] == "0" and managed[7] != "-"  # as the kernel managers make them
    pool = table["pool"]
    assert pool[0] == sizes and pool[2] == "staggered" and pool[6] == "0"  # false deaths
    assert pool[7] != "-"  # the killed heart was reported dead
    low, _, high = pool[9].partition("-")  # two rounds: the median and the range of CPU
    assert float(low) <= float(pool[3]) <= float(high)
    assert f"{sizes} hearts, pool staggered: " in result.stdout  # the goals, side by side
    assert "kernel managers at " in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_memory_benchmark_smoke() -> None:
    hearts, beats = ("2000", "450") if SLOW else ("100", "50")
    result = run("benchmarks.memory", "--hearts", hearts, "--beats", beats, timeout=500)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["beats"][-1] == beats
    assert len(rows["bare"]) == len(rows["pool"]) == len(rows["beats"])
    assert all(float(mib) > 0 for mib in rows["bare"] + rows["pool"])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_chaos() -> None:
    duration = "600" if SLOW else "40"
    result = run(
        "benchmarks.soak",
        "--hearts",
        "6",
        "--duration",
        duration,
        "--seed",
        "7",
        timeout=float(duration) + 300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(
        (line.rsplit(maxsplit=1)[0].strip(), line.rsplit(maxsplit=1)[1])
        for line in result.stdout.splitlines()[1:8]
    )
    assert counts["false deaths"] == "0"
    assert int(counts["deaths reported"]) >= 1  # chaos did happen, and was reported
    assert result.stdout.strip().endswith("0 violations")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_crash_benchmark_smoke() -> None:
    result = run("benchmarks.crash", "--kills", "1", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line}
    ours, stock = rows["HeartbeatKernelManager"], rows["AsyncIOLoopKernelManager"]
    assert len(ours) == 5 and len(stock) == 6, result.stdout  # four times each
