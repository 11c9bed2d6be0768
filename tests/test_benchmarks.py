"""The benchmarks run, in a short form (HEARTBEAT_SLOW=1: a long one). They print numbers;
these tests assert only behaviour: no false death, every real death reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
        "pool-rep",
        "kernelmanager",
        "--start",
        "staggered",
        "--rounds",
        # Two rounds in full (the medians and the CPU range of real runs); the short form one:
        # how rounds combine is tested on plain rows below (test_rounds_combine_...).
        "2" if SLOW else "1",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr  # exit 1: a false death
    lines = result.stdout.splitlines()
    rows = [line.split() for line in lines if line.strip()[:1].isdigit() and "," not in line]
    table = {row[1]: row for row in rows[-3:]}
    assert set(table) == {"pool", "pool-rep", "kernelmanager"}
    rep = table["pool-rep"]  # REP hearts (IRkernel's kind), each reached by a DEALER
    assert rep[6] == "0" and rep[7] != "-" and int(rep[9]) > 2 * int(sizes)
    managed = table["kernelmanager"]
    assert managed[6] == "0" and managed[7] != "-"  # as the kernel managers make them
    pool = table["pool"]
    assert pool[0] == sizes and pool[2] == "staggered" and pool[6] == "0"  # false deaths
    assert pool[7] != "-"  # the killed heart was reported dead
    assert int(pool[9]) > 200  # the open descriptors: one a heart's connection, and more
    if SLOW:
        low, _, high = pool[10].partition("-")  # two rounds: the median and the range of CPU
        assert float(low) <= float(pool[3]) <= float(high)
    assert f"{sizes} hearts, pool staggered: " in result.stdout  # the goals, side by side
    assert "kernel managers at " in result.stdout


def test_rounds_combine_into_medians_every_false_death_and_the_cpu_range() -> None:
    from benchmarks.scale import combine, table

    def run(cpu: float, false_deaths: int, detect: float | None) -> dict[str, Any]:
        return {
            "n": 200,
            "kind": "pool",
            "start": "staggered",
            "cpu": cpu,
            "rss": 50.0,
            "beats_per_s": 600.0,
            "false_deaths": false_deaths,
            "detect": detect,
            "silent": None,
            "fds": 210,
        }

    row = combine([run(3.0, 0, 1.2), run(9.0, 1, None), run(4.0, 0, 1.0)])
    assert row["cpu"] == 4.0 and row["detect"] == 1.1  # medians, of what was measured
    assert row["false_deaths"] == 1  # every one, never a median
    assert row["cpu_range"] == (3.0, 9.0) and row["rounds"] == 3
    assert table([row]).splitlines()[-1].split()[-1] == "3.0-9.0"
    single = run(5.0, 0, 1.0)
    assert combine([single]) is single and "range" not in table([single])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scale_benchmark_compares_the_pool_with_metrics_on_in_one_run() -> None:
    sizes, duration = ("1000", "30") if SLOW else ("200", "3")
    result = run(
        "benchmarks.scale",
        *("--sizes", sizes, "--duration", duration, "--kinds", "pool", "pool+metrics"),
        *("--start", "staggered", "--scrape-every", "1"),
        timeout=500,
    )
    assert result.returncode == 0, result.stdout + result.stderr  # exit 1: a false death
    out = result.stdout
    assert f"{sizes} hearts, pool staggered: metrics on at " in out, out
    # Every monitor counted into the tally (the killed heart had left it), and it was scraped.
    [line] = [line for line in out.splitlines() if "pool+metrics staggered: " in line]
    scrapes = int(line.split(": ")[1].split()[0])
    assert scrapes >= int(duration), line
    assert f"the tally had {sizes} watched" in line, line
    assert int(line.split(" late, ")[1].split()[0]) >= int(sizes) * int(duration), line


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
@pytest.mark.timeout(300)
def test_memory_watch_benchmark_smoke() -> None:
    kernels, seconds = ("1000", "30") if SLOW else ("50", "2")
    result = run("benchmarks.memory_watch", "--kernels", kernels, "--seconds", seconds, timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert rows and rows[0]["layout"] == "one cgroup for all", result.stdout
    for numbers in rows:
        assert numbers["kernels"] == numbers["marked"] == int(kernels)  # each kernel marked
    assert "steady % core" in result.stdout, result.stdout  # the table, configurations side by side


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_chaos() -> None:
    duration = "600" if SLOW else "25"  # the short form: chaos happens within seconds
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


PEER_TEST = """
import jupyter_client
import jupyter_client.ioloop
import jupyter_client.manager
from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_client.ioloop import AsyncIOLoopKernelManager, IOLoopKernelManager
from jupyter_client.restarter import KernelRestarter
from jupyter_client.threaded import ThreadedKernelClient
from jupyter_server.services.kernels.kernelmanager import MappingKernelManager

from heartbeat.jupyter import HBChannel, HeartbeatIOLoopKernelManager, HeartbeatKernelManager


def test_the_names_the_peers_use_are_ours():
    assert KernelManager is HeartbeatIOLoopKernelManager
    assert jupyter_client.manager.AsyncKernelManager is HeartbeatKernelManager
    assert IOLoopKernelManager is HeartbeatIOLoopKernelManager
    assert AsyncIOLoopKernelManager is HeartbeatKernelManager
    assert BlockingKernelClient().hb_channel_class is HBChannel
    assert ThreadedKernelClient().hb_channel_class is HBChannel
    assert isinstance(MappingKernelManager().kernel_manager_factory(), HeartbeatIOLoopKernelManager)
    # The restarters still take either manager.
    KernelRestarter(kernel_manager=HeartbeatKernelManager())
"""


@pytest.mark.parametrize("dropins", ["0", "1"])
def test_the_peer_suites_plugin_swaps_in_the_drop_ins_and_records_outcomes(
    dropins: str, tmp_path: Path
) -> None:
    # python -m benchmarks.peer_suites runs the peers' own suites (minutes, and pip); here, the
    # plugin it loads, on one test.
    (tmp_path / "test_peer.py").write_text(PEER_TEST)
    record = tmp_path / "record.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HEARTBEAT_PEER_DROPINS": dropins,
        "HEARTBEAT_PEER_RECORD": str(record),
    }
    plugins = ["-p", "no:cacheprovider", "-p", "benchmarks.peer_dropins"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, "test_peer.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    outcomes = [line["outcome"] for line in lines if "test" in line]
    if dropins == "1":
        assert result.returncode == 0, result.stdout + result.stderr
        assert outcomes == ["passed"]
        assert lines[0]["heartbeat"] == str(ROOT / "heartbeat" / "__init__.py")
        used = lines[-1]["used"]
        assert used["HeartbeatIOLoopKernelManager made"] >= 1, used
        assert used["HeartbeatKernelManager made"] >= 1, used
    else:
        assert result.returncode == 1 and outcomes == ["failed"]  # stock: the names are theirs


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_crash_benchmark_smoke() -> None:
    result = run("benchmarks.crash", "--kills", "1", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line}
    ours, stock = rows["HeartbeatKernelManager"], rows["AsyncIOLoopKernelManager"]
    assert len(ours) == 5 and len(stock) == 6, result.stdout  # four times each


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_crash_benchmark_against_jupyter_server_smoke(tmp_path: Path) -> None:
    out = tmp_path / "crash.json"
    result = run("benchmarks.crash", "--server", "--crashes", "1", "--json", str(out), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    causes = ["SIGKILL", "SIGSEGV", "exit 3"]
    # Every cause, on both servers in turn, was restarted: its "restarting" status came after
    # the kernel's death, and the new kernel answered after it.
    trials = [(t["server"], t["cause"]) for t in data["trials"]]
    assert sorted(trials) == sorted((s, c) for s in ("stock", "heartbeat") for c in causes)
    assert all(0 < t["restarting"] <= t["answers"] for t in data["trials"]), data["trials"]
    # Each server ran the manager it was meant to: only ours writes a line for each death (and
    # one more for a restarted kernel that could not bind a port, taken meanwhile by another).
    assert data["death_lines"]["stock"] == 0 and data["death_lines"]["heartbeat"] >= 3
    assert set(data["port_clashes"]) == {"stock", "heartbeat"}
    # Of kernels in use, whose restarts keep their ports (not of kernels failing as they start).
    assert data["ports_kept"]["stock"] >= 3 and data["ports_kept"]["heartbeat"] >= 3
    for server in ("stock", "heartbeat"):
        for cause in [*causes, "all"]:
            for measure in ("restarting", "answers"):
                assert set(data["summary"][server][cause][measure]) == {"median", "p90", "max"}
    # The table: two rows (to "restarting", to the answer) a cause and for all, each ending in
    # the median, p90 and max of both servers (float() raises on anything but a number).
    rows = [line for line in result.stdout.splitlines() if line.startswith((*causes, "all "))]
    assert len(rows) == 8 and all(len(row.split()) >= 8 for row in rows), result.stdout
    assert all([float(x) for x in row.split()[-6:]] for row in rows)
