"""Why a kernel that is not the manager's own child died: a real ipykernel started apart by the
test (``python -m ipykernel_launcher -f`` a connection file the test wrote), watched by a real
HeartbeatKernelManager given that file alone, as jupyter_server's external kernels are. At its
heart's death, what the heart's port says is its cause: refused (the test killed it), silent
(the test stopped it) or unreachable (nftables drops its packets, in a network namespace made
for the test)."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.connect import write_connection_file
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from traitlets.config import Config

from benchmarks import lossy_net
from heartbeat._cause import Death
from heartbeat.connection import hb_url
from heartbeat.jupyter import HeartbeatKernelManager
from heartbeat.jupyter._proc import PROBE_TIMEOUT
from heartbeat.probe import ping
from tests.conftest import free_port, wait_for
from tests.test_jupyter_server import CONFIG_LINE, NO_EXTENSION, Server

TTD = 1.0
FIRST_BEAT = 1.0
SLACK = 1.5  # a loaded 2-core machine's scheduling, on top of what the monitor may take
NEXT = "not restarting it (it was not started by this manager)"


def _end_with_its_parent() -> None:
    # In the kernel's process before it runs: killed when the process that started it ends,
    # however that ends (a namespace run's timeout kills it), never left behind an orphan.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextmanager
def kernel_apart(where: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ipykernel that no manager started: its connection file written in ``where`` (its
    only file there), its process the test's own child, ended by the test when done."""
    name, _ = write_connection_file(
        str(where / "kernel-apart.json"), ip="127.0.0.1", kernel_name="python3"
    )
    with open(where.parent / f"{where.name}-kernel.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ipykernel_launcher", "-f", name],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_end_with_its_parent,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # our own child, stopped by a test, maybe
            proc.kill()
        proc.wait(30)


class Deaths(logging.Handler):
    """The death lines a logger writes."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "heartbeat_death" in record.__dict__:
            self.records.append(record)


@contextmanager
def death_lines(name: str, level: int = logging.INFO) -> Iterator[Deaths]:
    logger = logging.getLogger(name)
    logger.setLevel(level)
    lines = Deaths()
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, what
        await asyncio.sleep(0.005)


async def first_beat(km: HeartbeatKernelManager, where: Path) -> None:
    """Wait for the kernel's heart to answer its monitor, and for the manager to know it is
    ipykernel (whose heart answers while it is busy: a silence is then its death, without it
    silence alone is none); if it never does, say what the kernel printed."""
    try:
        await until(lambda: km.heart_has_beaten and km.heart_kind == "threaded", 60, "")
    except AssertionError:
        printed = (where.parent / f"{where.name}-kernel.log").read_text()[-3000:]
        said = f"the heart never answered {km._heart_monitor!r}; the kernel printed: {printed}"
        raise AssertionError(said) from None


async def watched(
    how: str, where: Path, log: logging.Logger
) -> tuple[HeartbeatKernelManager, Callable[[], Awaitable[None]]]:
    """A manager watching the kernel whose connection file is in ``where``, as a user has one,
    and how that user is done with it: jupyter_client's multi-kernel manager given it as an
    external kernel (what jupyter_server's ``allow_external_kernels`` does), or a manager
    that only loads the file. Once the kernel answers: a port that refuses a kernel not the
    manager's is its death (told, undone when it answers), and this kernel wrote its file
    before it bound its ports."""
    info = json.loads((where / "kernel-apart.json").read_text())
    assert wait_for(lambda: ping(hb_url(info, "").url, 1.0) is not None, 60), "no heart"
    if how == "external":
        settings = {"time_to_dead": TTD, "first_beat": FIRST_BEAT}
        multi = AsyncMultiKernelManager(
            kernel_manager_class="heartbeat.jupyter.HeartbeatKernelManager",
            external_connection_dir=str(where),
            config=Config({"HeartbeatKernelManager": settings}),
            log=log,
        )
        [kernel_id] = multi.list_kernel_ids()
        external = multi.get_kernel(kernel_id)
        assert isinstance(external, HeartbeatKernelManager) and not external.owns_kernel

        async def forget() -> None:
            await multi.shutdown_kernel(kernel_id, now=True)
            multi.context.destroy(linger=0)

        return external, forget
    km = HeartbeatKernelManager(
        owns_kernel=False, time_to_dead=TTD, first_beat=FIRST_BEAT, log=log, kernel_id="apart"
    )
    km.load_connection_file(str(where / "kernel-apart.json"))

    async def done() -> None:
        await km.shutdown_kernel(now=True)
        await km.cleanup_resources()

    return km, done


async def death_of(
    how: str,
    where: Path,
    harm: Callable[[HeartbeatKernelManager], None],
    level: int = logging.INFO,
) -> Any:
    """Watch the kernel apart until its heart has answered, ``harm`` it, and return what the
    manager made of its death, as plain data; its log at ``level``."""
    with death_lines(f"tests.remote.{how}", level) as lines:
        km, done = await watched(how, where, logging.getLogger(f"tests.remote.{how}"))
        told: list[Death] = []
        km.add_death_callback(told.append)
        try:
            await first_beat(km, where)
            harm(km)
            harmed = time.monotonic()
            await until(lambda: told, 3 * TTD + PROBE_TIMEOUT + SLACK, "no death was told")
            seen = time.monotonic() - harmed
            await asyncio.sleep(0.1)  # anything told twice would be told by now
            death = told[0]
            return {
                "kind": death.cause.kind,
                "likely": death.cause.likely,
                "silence": death.silence,
                "pid": death.pid,
                "restarting": death.restarting,
                "deaths": km.deaths,
                "told": len(told),
                "is_last_death": km.last_death is death,
                "lines": [r.getMessage() for r in lines.records],
                "line_carries_it": [r.__dict__["heartbeat_death"] is death for r in lines.records],
                "alive": await km.is_alive(),
                "kernel_id": km.kernel_id,
                "hb_url": f"tcp://127.0.0.1:{km.hb_port}",
                "seen": seen,
            }
        finally:
            await done()  # not ours: only no longer watched
            assert km._heart_monitor is None


def check(seen: dict[str, Any], kind: str, words: str) -> None:
    print(seen["lines"], f"told {seen['seen']:.2f} s after the harm")
    assert seen["kind"] == kind and seen["likely"], seen
    assert TTD <= seen["silence"] <= TTD + 2 * SLACK, seen
    assert seen["pid"] is None and not seen["restarting"] and not seen["alive"], seen
    assert seen["deaths"] == 1 and seen["told"] == 1 and seen["is_last_death"], seen
    # One line, carrying the very Death that was told and kept.
    assert seen["line_carries_it"] == [True], seen
    head = (
        f"Kernel {seen['kernel_id']}: heart at {seen['hb_url']} is dead: no reply for "
        f"{seen['silence']:.3f} s (time_to_dead 1 s); it "
    )
    assert seen["lines"] == [f"{head}{words.format(s=seen['silence'])}; {NEXT}"], seen


def test_a_kernel_apart_that_was_killed_is_refused(tmp_path: Path) -> None:
    where = tmp_path / "external"
    where.mkdir()
    with kernel_apart(where) as proc:
        seen = asyncio.run(death_of("external", where, lambda km: proc.kill()))
    check(
        seen,
        "remote-refused",
        "was likely gone: its heart was silent for {s:.1f} s and nothing listens at its port "
        "(connection refused)",
    )


def test_a_death_whose_line_is_not_logged_is_still_told_with_its_port_probed(
    tmp_path: Path,
) -> None:
    with kernel_apart(tmp_path) as proc:
        seen = asyncio.run(death_of("quiet", tmp_path, lambda km: proc.kill(), logging.ERROR))
    assert seen["lines"] == [] and seen["kind"] == "remote-refused", seen
    assert seen["told"] == 1 and seen["is_last_death"] and seen["deaths"] == 1, seen


def test_a_kernel_apart_that_was_stopped_is_silent_and_left_alone(tmp_path: Path) -> None:
    def stop(km: HeartbeatKernelManager) -> None:
        os.kill(proc.pid, signal.SIGSTOP)  # the test's own child

    with kernel_apart(tmp_path) as proc:
        seen = asyncio.run(death_of("loaded", tmp_path, stop))
        # Not the manager's child: nothing signalled it (still there, still stopped).
        assert proc.poll() is None and _state(proc.pid) == "T"
    check(
        seen,
        "remote-silent",
        "was likely frozen, or its host stalled: its heart was silent for {s:.1f} s though its "
        "port accepts connections",
    )


def test_a_kernel_apart_shut_down_by_its_manager_is_left_running_and_no_longer_watched(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[bool, bool, int]:
        km, done = await watched("external", tmp_path, logging.getLogger("tests.remote.down"))
        await first_beat(km, tmp_path)
        monitor = km._heart_monitor
        assert monitor is not None and monitor.running
        await done()  # jupyter_client leaves a kernel it does not own running
        return monitor.running, km._heart_monitor is None, km.deaths

    with kernel_apart(tmp_path) as proc:
        running, dropped, deaths = asyncio.run(scenario())
        assert not running and dropped and deaths == 0
        # Its watch ended, the kernel did not: its heart answers, its process runs.
        assert proc.poll() is None
        assert ping(hb_url(json.loads((tmp_path / "kernel-apart.json").read_text()), "").url)


@contextmanager
def server_of_external_kernels(tmp_path: Path, external: Path, *args: str) -> Iterator[Server]:
    """A real ``jupyter server`` with the heartbeat kernel manager and external kernels on,
    their connection files in ``external``; ``args``, more of its command line."""
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, **{f"JUPYTER_{d.upper()}_DIR": str(tmp_path / d) for d in DIRS}}
    argv = [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1"]
    argv += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    argv += [f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False"]
    argv += ["--ServerApp.allow_root=True", f"--ServerApp.root_dir={tmp_path}", CONFIG_LINE]
    argv += [NO_EXTENSION]  # the manager alone
    argv += [f"--HeartbeatKernelManager.time_to_dead={TTD}"]
    argv += [f"--HeartbeatKernelManager.first_beat={FIRST_BEAT}"]
    argv += ["--ServerApp.allow_external_kernels=True"]
    argv += [f"--ServerApp.external_connection_dir={external}", *args]
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", token, tmp_path / "server.log")
    try:
        end = time.monotonic() + 60
        while True:
            try:
                server.api("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, server.log.read_text()
                assert time.monotonic() < end, "jupyter server did not come up"
                time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)  # the server the test started: its own child
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


DIRS = ("runtime", "config", "data")


def test_under_jupyter_server_an_external_kernel_that_was_killed_is_refused_in_its_log(
    tmp_path: Path,
) -> None:
    external = tmp_path / "external"
    external.mkdir()
    with kernel_apart(external) as proc:
        info = json.loads((external / "kernel-apart.json").read_text())
        assert wait_for(lambda: ping(hb_url(info, "").url, 1.0) is not None, 60), "no heart"
        with server_of_external_kernels(tmp_path, external) as server:
            [kernel] = server.api("GET", "/api/kernels")  # it lists, and so watches, the file
            # Killed at once: the monitor the listing started never hears it, and declares it
            # dead after first_beat and time_to_dead.
            proc.kill()
            proc.wait(30)

            def death_line() -> str | None:
                lines = server.log.read_text().splitlines()
                return next((line for line in lines if "is dead" in line), None)

            assert wait_for(death_line, 3 * (FIRST_BEAT + TTD) + PROBE_TIMEOUT + SLACK), (
                server.log.read_text()
            )
            line = death_line()
    print(line)
    assert line is not None and line.startswith("[W "), line
    assert f"Kernel {kernel['id']}: heart at tcp://127.0.0.1:{info['hb_port']} is dead" in line
    assert line.endswith(
        "it was likely gone: its heart was silent for "
        f"{float(re.findall(r'no reply for ([0-9.]+) s', line)[0]):.1f} s and nothing listens at "
        f"its port (connection refused); {NEXT}"
    ), line


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


def test_a_kernel_apart_whose_packets_are_dropped_is_unreachable(tmp_path: Path) -> None:
    reason = lossy_net.namespace_unavailable() or lossy_net.nft_missing()
    if reason:
        pytest.skip(f"no network namespace with nftables here: {reason}")
    out = tmp_path / "seen.json"
    argv = [sys.executable, "-m", "tests.test_remote_deaths", str(tmp_path), str(out)]
    done = lossy_net.run_in_namespace(argv, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(out.read_text())
    assert seen["dropped_packets"] > 0
    check(
        seen,
        "remote-unreachable",
        "could not be reached: its heart was silent for {s:.1f} s and no connection to its "
        "host could be made (host or network unreachable)",
    )
    # Its line waited for the probe's connect to time out, and no longer.
    assert seen["seen"] <= 2 * TTD + PROBE_TIMEOUT + SLACK, seen


def _unreachable_inside(tmp_path: Path, out: Path) -> None:
    """Inside the namespace: the kernel apart, its heart's packets dropped once it beats."""
    where = tmp_path / "inside"
    where.mkdir()

    def cut(km: HeartbeatKernelManager) -> None:
        lossy_net.lose(km.hb_port, 100)

    with kernel_apart(where):
        seen = asyncio.run(death_of("loaded", where, cut))
    seen["dropped_packets"] = lossy_net.dropped()
    out.write_text(json.dumps(seen))


if __name__ == "__main__":
    _unreachable_inside(Path(sys.argv[1]), Path(sys.argv[2]))
