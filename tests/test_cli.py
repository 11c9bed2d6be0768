"""The console script, run for real in subprocesses against real hearts."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heartbeat import Heart, __version__
from tests.conftest import Kernel, free_port, gone, read_json_line

EXE = shutil.which("heartbeat") or "heartbeat"


def heartbeat(*args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


@contextlib.contextmanager
def spawned(*args: str, **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    """The console script running with a piped stdout; killed and reaped on the way out."""
    proc = subprocess.Popen([EXE, *args], stdout=subprocess.PIPE, text=True, **kwargs)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
def heart() -> Iterator[Heart]:
    with Heart() as h:
        yield h


def write_connection_file(path: Path, port: int, **extra: Any) -> Path:
    info = {"transport": "tcp", "ip": "127.0.0.1", "hb_port": port, "shell_port": 1, **extra}
    path.write_text(json.dumps(info))
    return path


# -- general ------------------------------------------------------------------------------------


def test_version() -> None:
    result = heartbeat("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"heartbeat {__version__}"


@pytest.mark.parametrize("command", ["demo", "probe", "watch", "kernelspec"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = heartbeat(command, "--help")
    assert result.returncode == 0
    assert "example" in result.stdout and f"heartbeat {command}" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["demo", "--time-to-dead", "-1"],
        ["demo", "--time-to-dead", "nan"],
        ["demo", "--first-beat", "soon"],
        ["watch", "tcp://127.0.0.1:5", "--time-to-dead", "0"],
        ["probe", "tcp://127.0.0.1:5", "--timeout", "inf"],
        ["kernelspec", "--time-to-dead", "0"],
        ["kernelspec", "--time-to-dead", "1", "--interval", "0.6"],  # above time_to_dead / 2
        ["kernelspec", "--user", "--prefix", "/tmp/x"],
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    result = heartbeat(*args, env={**os.environ, "JUPYTER_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


# -- demo ---------------------------------------------------------------------------------------


def test_demo_tells_the_whole_story_and_leaves_no_process() -> None:
    result = heartbeat("demo", "--time-to-dead", "0.5", "--first-beat", "2", timeout=120)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    pid = int(re.search(r"stand-in kernel \(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
    assert gone(pid)
    for phrase in [
        "first beat",
        "beats while the GIL was held",
        "no false alarm",
        "its own stall",
        "DEAD: no reply",
        "detected",
        "dead when one goes unanswered for 0.5 s, late once one has waited 0.25 s",
        "-> dead: a ping went unanswered for time_to_dead (0.5 s)",
        "promised between 0.5 and 0.75 s (time_to_dead + interval) after the last beat",
    ]:
        assert phrase in out, phrase
    assert "\x1b[K" not in out  # not a terminal: plain lines only
    during = int(re.search(r"(\d+) beats while the GIL was held", out).group(1))  # type: ignore[union-attr]
    assert during >= 5
    latency = float(re.search(r"detected ([\d.]+) s after the last beat", out).group(1))  # type: ignore[union-attr]
    assert 0.5 - 0.01 <= latency <= 0.75 + 1.0


def test_demo_ctrl_c_cleans_up() -> None:
    pid = None
    seen = []
    # As from a terminal, even when this test runs in a background job that ignores ^C.
    with spawned(
        "demo",
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if m := re.search(r"stand-in kernel \(pid (\d+)\)", line):
                pid = int(m.group(1))
            if "1. the kernel idles" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(30) == 130, "".join(seen) + rest
    assert pid is not None and gone(pid)


# -- probe --------------------------------------------------------------------------------------


def test_probe_a_url(heart: Heart) -> None:
    result = heartbeat("probe", heart.url)
    assert result.returncode == 0
    assert re.fullmatch(rf"{re.escape(heart.url)}: answered in [\d.]+ ms\n", result.stdout)


def test_probe_json(heart: Heart) -> None:
    result = heartbeat("probe", heart.url, "--json")
    record = json.loads(result.stdout)
    assert result.returncode == 0
    assert record["alive"] is True and record["url"] == heart.url
    assert 0 < record["rtt"] < 2.0


def test_probe_no_answer_exits_1_by_the_timeout() -> None:
    start = time.monotonic()
    result = heartbeat("probe", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["alive"] is False
    assert time.monotonic() - start < 0.5 + 5.0  # interpreter start-up included


def test_probe_a_frozen_kernel_exits_1(kernel: Kernel) -> None:
    assert heartbeat("probe", kernel.url).returncode == 0
    kernel.freeze()
    assert heartbeat("probe", kernel.url, "--timeout", "0.5").returncode == 1


def test_probe_a_connection_file_and_a_kernel_id_prefix(heart: Heart, tmp_path: Path) -> None:
    assert heart.port is not None
    path = write_connection_file(tmp_path / "kernel-8f3e1c2a-0000.json", heart.port)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    assert heartbeat("probe", str(path)).returncode == 0
    assert heartbeat("probe", "8f3e", env=env).returncode == 0
    assert heartbeat("probe", "8f3e1c2a-0000", env=env).returncode == 0


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("missing", "cannot read connection file"),
        ("not-json", "is not JSON"),
        ("no-hb-port", "has no hb_port"),
        ("ambiguous", "is ambiguous"),
        ("unknown-id", "no connection file for kernel"),
        ("bad-url", "expected a number from 1 to 65535"),
        ("bad-scheme", "not a zmq endpoint"),
    ],
)
def test_probe_bad_input_is_one_line_and_exit_2(tmp_path: Path, setup: str, words: str) -> None:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    target = {
        "missing": str(tmp_path / "nope.json"),
        "not-json": str(tmp_path / "kernel-x.json"),
        "no-hb-port": str(tmp_path / "kernel-y.json"),
        "ambiguous": "ab",
        "unknown-id": "ffff",
        "bad-url": "tcp://127.0.0.1:70000",
        "bad-scheme": "http://127.0.0.1:5555",
    }[setup]
    (tmp_path / "kernel-x.json").write_text("{not json")
    (tmp_path / "kernel-y.json").write_text(json.dumps({"ip": "127.0.0.1", "shell_port": 5}))
    write_connection_file(tmp_path / "kernel-ab1.json", 5555)
    write_connection_file(tmp_path / "kernel-ab2.json", 5556)
    result = heartbeat("probe", target, env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("heartbeat probe: error:") and words in line


@pytest.mark.parametrize("command", ["probe", "watch"])
@pytest.mark.parametrize(
    "key",
    ["not-a-key", "a" * 39 + " ", "b" * 32, 12345],
    ids=["short", "not-z85", "32-characters", "a-number"],
)
def test_a_bad_curve_key_in_a_connection_file_is_one_line_and_exit_2(
    tmp_path: Path, command: str, key: object
) -> None:
    # A config error, not a dead kernel: a liveness probe must not restart a healthy pod.
    path = write_connection_file(tmp_path / "kernel.json", 5555, curve_publickey=key)
    result = heartbeat(command, str(path))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"heartbeat {command}: error: connection file"), line
    assert f"curve_publickey {key!r}" in line, line
    assert "expected a 40-character Z85 CURVE key" in line, line


# -- watch --------------------------------------------------------------------------------------


def test_watch_json_reports_states_beats_and_death_then_exits_1(kernel: Kernel) -> None:
    argv = ["watch", kernel.url, "--time-to-dead", "0.5", "--first-beat", "0.5", "--json"]
    with spawned(*argv) as proc:
        records = [read_json_line(proc, 10)]
        while not any(r["event"] == "beat" for r in records):
            records.append(read_json_line(proc, 10))
        kernel.kill()
        while records[-1]["event"] != "dead":
            records.append(read_json_line(proc, 10))
        assert proc.wait(10) == 1
    assert records[0]["event"] == "watch" and records[0]["url"] == kernel.url
    states = [(r["old"], r["new"]) for r in records if r["event"] == "state"]
    assert states[0] == ("idle", "starting") and ("starting", "beating") in states
    assert states[-1][1] == "dead"
    assert all("time" in r for r in records)
    assert 0.5 - 0.01 <= records[-1]["silent_for"] <= 0.75 + 1.0


def test_watch_ctrl_c_exits_0(heart: Heart) -> None:
    with spawned("watch", heart.url, "--json") as proc:
        while read_json_line(proc, 10)["event"] != "beat":
            pass
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_watch_on_a_terminal_keeps_a_live_status_line(heart: Heart) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [EXE, "watch", heart.url, "--time-to-dead", "0.4", "--first-beat", "0"],
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    try:
        end = time.monotonic() + 10
        status = re.compile(rb"beating\s+\| last rtt [\d.]+ ms \| median [\d.]+ ms p99")
        while not status.search(output) and time.monotonic() < end:
            output += os.read(leader, 4096)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(leader)
    text = output.decode()
    assert "\r\x1b[K" in text  # the status line is redrawn in place
    assert "starting -> beating: pings are answered" in text
    # The rule in words, with the numbers in force.
    assert "a ping every 0.2 s; dead when one goes unanswered for 0.4 s" in text
    assert re.search(r"beating\s+\| last rtt [\d.]+ ms \| median [\d.]+ ms p99", text)


def test_watch_bad_target_exits_2(tmp_path: Path) -> None:
    result = heartbeat("watch", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "cannot read connection file" in result.stderr


def test_module_entry_point(heart: Heart) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "heartbeat.cli", "probe", heart.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0


def test_probe_and_watch_a_real_ipykernel_by_its_connection_file_and_kernel_id(
    tmp_path: Path,
) -> None:
    from jupyter_client import KernelManager

    kid = "5f0c2b7e-real-ipykernel"
    km = KernelManager(kernel_name="python3", connection_file=str(tmp_path / f"kernel-{kid}.json"))
    km.start_kernel()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    try:
        deadline = time.monotonic() + 60
        while heartbeat("probe", km.connection_file, "--timeout", "1").returncode != 0:
            assert time.monotonic() < deadline, "the kernel's heart never answered"
        assert heartbeat("probe", "5f0c", "--json", env=env).returncode == 0
        with spawned("watch", "5f0c2b", "--json", "--first-beat", "1", env=env) as proc:
            records = [read_json_line(proc, 30)]
            while records[-1]["event"] != "beat":
                records.append(read_json_line(proc, 30))
            assert records[0]["url"] == km._make_url("hb")
    finally:
        km.shutdown_kernel(now=True)
