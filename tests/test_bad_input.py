"""Bad input is refused with a clear error, through the API (ValueError/TypeError naming the
value and what was expected) and the command line (one line, exit 2): never a traceback from
inside zmq, a hang, or a heart that says it runs with nothing bound."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.ioloop import IOLoop

from heartbeat import Heart, HeartbeatPool, HeartMonitor, _validate
from heartbeat._judge import Judge
from heartbeat.connection import read_connection_file
from heartbeat.probe import ping
from tests.conftest import free_port

EXE = shutil.which("heartbeat") or "heartbeat"
LONG_IPC = "ipc:///tmp/" + "a" * 120


def heartbeat(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=60, check=False, **kw
    )


@pytest.mark.parametrize("command", ["probe", "watch"])
@pytest.mark.parametrize("url", ["tcp://-foo:5555", "tcp://_x:5555", LONG_IPC])
def test_a_url_zmq_refuses_is_one_line_and_exit_2(command: str, url: str) -> None:
    # Exit 1 means "no answer" to a liveness probe or a script: a typo must not look like it.
    result = heartbeat(command, url)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"heartbeat {command}: error: url") and repr(url) in line, line


# Hosts from the characters libzmq's own check deals with: every one we accept, zmq accepts.
_HOSTS = st.text(alphabet="ab1-_.[]:*%", min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(host=_HOSTS)
def test_a_url_that_passes_validation_is_one_zmq_connects_to(host: str) -> None:
    url = f"tcp://{host}:1"
    try:
        endpoint = _validate.endpoint(url, bind=False)
    except ValueError:
        return  # refused here, with words: fine either way
    context = zmq.Context()
    try:
        with context.socket(zmq.DEALER) as socket:
            socket.linger = 0
            socket.ipv6 = endpoint.is_ipv6
            socket.connect(f"tcp://{endpoint.host}:1")  # must not raise
    finally:
        context.term()


def test_an_ipc_path_longer_than_a_socket_address_holds_is_refused() -> None:
    with pytest.raises(ValueError, match=r"at most 107"):
        _validate.endpoint(LONG_IPC, bind=False)
    with pytest.raises(ValueError, match=r"at most 107"):
        Heart(LONG_IPC)
    assert _validate.endpoint("ipc:///tmp/" + "a" * 96, bind=True).transport == "ipc"  # 107


def test_a_huge_timeout_is_a_long_wait_not_an_overflow() -> None:
    # zmq's poll takes a C int of milliseconds: 1e308 s once raised OverflowError from there.
    with Heart() as heart:
        assert ping(heart.url, 1e308) is not None
        result = heartbeat("probe", "--timeout", "1e9", heart.url)
    assert result.returncode == 0, result.stderr
    assert "answered" in result.stdout


@pytest.mark.parametrize("size", [2**63, 2**64, -1, 63])
def test_a_max_message_size_zmq_cannot_take_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match=rf"max_message_size must be an int from 64 .*{size}"):
        Heart(max_message_size=size)


def test_the_largest_max_message_size_starts_a_heart_that_answers() -> None:
    with Heart(max_message_size=2**63 - 1) as heart:
        assert heart.running and heart.port
        assert ping(heart.url, 5.0) is not None
    with pytest.raises(TypeError, match="max_message_size"):
        Heart(max_message_size="8192")  # type: ignore[arg-type]


def test_a_time_to_dead_no_loop_can_time_is_refused_naming_the_floor() -> None:
    # Each timer wakes a millisecond or more late; below the floor every wake-up would be
    # forgiven as the monitor's own stall and a dead heart watched for ever.
    for value in (0.001, 0.0001, 0.049):
        with pytest.raises(ValueError, match=r"at least 0\.05 s"):
            HeartMonitor("tcp://127.0.0.1:5555", time_to_dead=value)
    Judge(0.001, 0.0)  # the pure core takes it: a fake clock times anything
    result = heartbeat("watch", "--time-to-dead", "0.001", "tcp://127.0.0.1:5555")
    assert result.returncode == 2 and "at least 0.05 s" in result.stderr


def test_the_floor_is_timeable_a_dead_url_is_judged_dead() -> None:
    async def scenario() -> float:
        died = asyncio.Event()
        monitor = HeartMonitor(f"tcp://127.0.0.1:{free_port()}", time_to_dead=0.05, first_beat=0)
        monitor.start(died.set)
        try:
            await asyncio.wait_for(died.wait(), 20)
        finally:
            monitor.stop()
        assert monitor.verdict is not None
        return monitor.verdict.silent_for

    assert asyncio.run(scenario()) >= 0.05


def test_setting_a_url_the_pools_batch_is_too_coarse_for_is_refused() -> None:
    # time_to_dead 2: beyond this machine 4 paths and an interval of 0.25 s (stall threshold
    # 0.875 s); on it 1 path and 1 s (0.5 s). A batch of 0.4 s fits the first only.
    pool = HeartbeatPool(batch=0.4)
    remote = "tcp://heart.example.invalid:5555"
    monitor = pool.watch(remote, time_to_dead=2.0)
    with pytest.raises(ValueError, match="too coarse"):
        monitor.url = "tcp://127.0.0.1:5555"
    assert monitor.url == remote and monitor.paths == 4 and monitor.interval == 0.25


def test_a_connection_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "kernel-latin1.json"
    path.write_bytes(b'{"hb_port": 5555, "ip": "caf\xe9"}')
    with pytest.raises(ValueError, match=r"kernel-latin1\.json.*not UTF-8"):
        read_connection_file(path)
    result = heartbeat("probe", str(path))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "kernel-latin1.json" in line and "not UTF-8" in line


def test_an_empty_kernel_name_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path)}
    result = heartbeat("kernelspec", "--name", "", env=env)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "kernel name '' is not valid" in line
    assert not (tmp_path / "kernels").exists() or not any((tmp_path / "kernels").iterdir())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def closed_io_loop() -> IOLoop:
    async def current() -> IOLoop:
        return IOLoop.current()

    return asyncio.run(current())  # asyncio.run closes its loop on the way out


@pytest.mark.parametrize("kind", ["lone", "pool"])
def test_starting_on_a_closed_loop_raises_and_leaves_nothing_open(kind: str) -> None:
    io_loop = closed_io_loop()
    pool = HeartbeatPool(io_loop=io_loop) if kind == "pool" else None
    before = open_fds()
    url = f"tcp://127.0.0.1:{free_port()}"
    if pool is not None:
        monitor = pool.watch(url, time_to_dead=1.0, paths=3)
    else:
        monitor = HeartMonitor(url, time_to_dead=1.0, paths=3, io_loop=io_loop)
    with pytest.raises(RuntimeError, match=r"(?i)event loop is closed"):
        monitor.start()
    assert not monitor.running
    assert open_fds() == before  # no socket left behind, lone (one a path) or pooled
    if pool is not None:
        assert pool.sockets == 0 and len(pool) == 0


def test_a_pool_given_a_loop_refuses_a_member_started_on_another() -> None:
    other = asyncio.new_event_loop()
    ready = threading.Event()
    holder: list[IOLoop] = []

    async def serve() -> None:
        holder.append(IOLoop.current())
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)

    stop = threading.Event()
    thread = threading.Thread(target=other.run_until_complete, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(10)
        pool = HeartbeatPool(io_loop=holder[0])

        async def scenario() -> None:
            monitor = pool.watch(f"tcp://127.0.0.1:{free_port()}", time_to_dead=1.0)
            with pytest.raises(RuntimeError, match="another loop"):
                monitor.start()
            assert not monitor.running and len(pool) == 0 and pool.sockets == 0

        asyncio.run(scenario())
    finally:
        stop.set()
        thread.join(10)
        other.close()


def test_an_external_kernel_with_bad_connection_info_is_one_line_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # jupyter_server's external kernels: a connection file the server found, whose ip makes no
    # url a heart can be reached at. One ERROR line naming the kernel and the field; no
    # traceback from the loop's callback; nothing left watching.
    import json
    import logging

    from jupyter_client.multikernelmanager import AsyncMultiKernelManager

    info = {"kernel_name": "python3", "key": "k", "ip": "-foo", "transport": "tcp"}
    info.update({f"{c}_port": 5555 + i for i, c in enumerate(["shell", "iopub", "stdin", "hb"])})
    info["control_port"] = 5560
    (tmp_path / "kernel-bad.json").write_text(json.dumps(info))

    async def scenario() -> tuple[str, Any]:
        multi = AsyncMultiKernelManager(
            kernel_manager_class="heartbeat.jupyter.HeartbeatKernelManager",
            external_connection_dir=str(tmp_path),
            log=logging.getLogger("tests.external"),
        )
        try:
            [kernel_id] = multi.list_kernel_ids()
            await asyncio.sleep(0.3)  # the watch starts on the loop's next turn
            return kernel_id, multi.get_kernel(kernel_id)._heart_monitor
        finally:
            multi.context.destroy(linger=0)

    with caplog.at_level(logging.DEBUG):
        kernel_id, monitor = asyncio.run(scenario())
    assert monitor is None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    [line] = errors
    assert line.exc_info is None
    text = line.getMessage()
    assert text.startswith(f"Kernel {kernel_id} is not watched") and "ip '-foo'" in text, text


@pytest.mark.parametrize("kind", ["lone", "pool"])
def test_a_huge_time_to_dead_watches_and_stops(kind: str) -> None:
    # Its reconnection interval (half the ping interval) would overflow zmq's C int.
    async def scenario() -> None:
        url = f"tcp://127.0.0.1:{free_port()}"
        pool = HeartbeatPool() if kind == "pool" else None
        monitor = HeartMonitor(url, time_to_dead=1e300, pool=pool)
        monitor.start()
        assert monitor.running
        monitor.stop()

    asyncio.run(scenario())
