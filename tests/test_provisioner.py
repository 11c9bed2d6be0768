"""The kernel spec's provisioner (``HeartbeatProvisioner``) under a real kernel manager and a
real ipykernel: a death, heart or process, in one line with its cause; what is asked for is no
death; nothing left open; and under ``HeartbeatKernelManager``, one watch and one line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager

from heartbeat.jupyter import HeartbeatKernelManager, HeartbeatProvisioner
from heartbeat.jupyter.metrics import process_tally
from tests.test_deaths import SEEN_WITHIN, death_lines, until
from tests.test_headless import TTD, install_kernelspec

# Long enough for a kernel's start on a loaded machine: a heart judged before its kernel has
# bound it would end the test with a death of the wrong kind.
FIRST_BEAT = 3.0
THEN = "its kernel manager will find it dead"


@pytest.fixture
def kernelspec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``heartbeat kernelspec`` run with time_to_dead 1 s and first_beat ``FIRST_BEAT``."""
    return install_kernelspec(tmp_path, monkeypatch, first_beat=FIRST_BEAT)


def provisioner_of(km: Any) -> HeartbeatProvisioner:
    provisioner = km.provisioner
    assert isinstance(provisioner, HeartbeatProvisioner)
    return provisioner


async def beating(
    km: AsyncKernelManager, *, started: bool = False, judged: bool = True
) -> HeartbeatProvisioner:
    """Start the kernel (unless ``started``); return its provisioner once the heart it watches
    has answered and, if ``judged``, its first_beat grace is over: from then on a silent heart
    is dead within time_to_dead + interval."""
    if not started:
        await km.start_kernel()
    begun = time.monotonic()  # just after the monitor's start
    provisioner = provisioner_of(km)
    monitor = provisioner._monitor
    assert monitor is not None and provisioner._death_watch.exit_watch is not None
    await until(lambda: monitor.stats.count > 0, 60, "the heart never answered", 0.05)
    if judged:
        await until(lambda: time.monotonic() > begun + FIRST_BEAT, 60, "", 0.05)
    return provisioner


def pidfds() -> int:
    """This process's open pidfds (an exit watch holds one)."""
    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]")


def readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None  # closed meanwhile (the listing's own descriptor)


def open_fds() -> int:
    """This process's open file descriptors."""
    return len(os.listdir("/proc/self/fd"))


def test_a_process_death_is_one_line_at_once_and_its_heart_says_nothing_more(
    kernelspec: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    signals_before = process_tally().deaths["signal"]

    async def scenario() -> tuple[HeartbeatProvisioner, str, int, float]:
        km = AsyncKernelManager(kernel_name="python3-heartbeat")
        provisioner = await beating(km)
        try:
            process = provisioner.process
            assert process is not None and process.poll() is None  # our child, not reaped
            pid = process.pid
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            seen = await until(lambda: provisioner.last_death is not None, 30, "not seen")
            # Its heart, were it still watched, would report the death again by now: its
            # last reply came before the kill, its death is due time_to_dead + interval later.
            await asyncio.sleep(TTD + 1.0)
            return provisioner, str(km.kernel_id), pid, seen - killed
        finally:
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        provisioner, kernel_id, pid, seen = asyncio.run(scenario())
    assert seen <= SEEN_WITHIN, seen
    death = provisioner.last_death
    assert death is not None and death.signal == signal.SIGKILL and death.pid == pid
    assert death.kernel_id == kernel_id and death.silence is None and not death.restarting
    [line] = death_lines(caplog)
    assert line.levelno == logging.WARNING and line.__dict__["heartbeat_death"] is death
    assert line.getMessage() == (
        f"Kernel {kernel_id}: process {pid} died: it was killed by SIGKILL (9); {THEN}"
    )
    # Counted once, by cause, for /metrics (the process's tally).
    assert process_tally().deaths["signal"] == signals_before + 1


@pytest.mark.parametrize("level", [logging.INFO, logging.ERROR])
def test_a_heart_death_and_the_exit_of_its_killed_process_are_one_line(
    kernelspec: dict[str, str], caplog: pytest.LogCaptureFixture, level: int
) -> None:
    # At ERROR the heart's WARNING line is not written: the death is recorded all the same.
    async def scenario() -> tuple[HeartbeatProvisioner, int]:
        km = AsyncKernelManager(kernel_name="python3-heartbeat")
        provisioner = await beating(km)
        try:
            process = provisioner.process
            assert process is not None
            os.kill(process.pid, signal.SIGSTOP)
            await until(lambda: process.poll() is not None, 30, "the frozen kernel lives")
            await asyncio.sleep(0.2)  # an exit watch still open fires on the next turns
            return provisioner, process.pid
        finally:
            await km.shutdown_kernel(now=True)

    with caplog.at_level(level):
        provisioner, pid = asyncio.run(scenario())
    death = provisioner.last_death
    assert death is not None and death.cause.kind == "stopped" and death.pid == pid
    assert death.silence is not None and TTD <= death.silence <= TTD + 1.5, death
    if level > logging.WARNING:
        assert death_lines(caplog) == []
        return
    [line] = death_lines(caplog)  # the heart's, not a second one for the killed process
    assert line.__dict__["heartbeat_death"] is death
    text = line.getMessage()
    assert "is dead: no reply for" in text and "its process was stopped" in text, text
    assert text.endswith(f"; killed its process {pid}; {THEN}"), text


def test_what_is_asked_for_is_no_death_and_leaves_nothing_open(
    kernelspec: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[list[int], int, int]:
        warm = AsyncKernelManager(kernel_name="python3-heartbeat")  # the loop's own fds
        await beating(warm, judged=False)
        await warm.shutdown_kernel(now=True)
        before = open_fds()
        km = AsyncKernelManager(kernel_name="python3-heartbeat")
        await beating(km, judged=False)
        held = [pidfds()]  # one exit watch
        await km.restart_kernel(now=True)  # killed, as asked
        await beating(km, started=True, judged=False)
        await km.restart_kernel(now=False)
        await beating(km, started=True, judged=False)
        await km.shutdown_kernel(now=False)
        held.append(pidfds())
        # Cleaned up while its kernel still runs (nbclient cleans up a kernel it found dead):
        # the watch ends there, and the process's exit later is nobody's death.
        km = AsyncKernelManager(kernel_name="python3-heartbeat")
        process = (await beating(km, judged=False)).process
        assert process is not None
        await km.cleanup_resources()
        held.append(pidfds())
        process.kill()  # our own child, unwatched now
        await until(lambda: process.poll() is not None, 30, "not killed")
        await asyncio.sleep(0.2)  # an exit watch still open would fire on the next turns
        # zmq closes a socket in its own thread, a moment after close(): bounded, not hoped.
        await until(lambda: open_fds() <= before, 10, f"fds: {open_fds()}, not {before}")
        return held, before, open_fds()

    with caplog.at_level(logging.INFO):
        held, before, after = asyncio.run(scenario())
    assert death_lines(caplog) == []
    assert held == [1, 0, 0] and after == before, (held, before, after)


def test_a_kernel_frozen_during_a_graceful_shutdown_is_its_managers_to_end(
    kernelspec: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> int | None:
        # Deaf to the request: jupyter_client sends SIGTERM after 2 s, SIGKILL after 4 s;
        # its heart, were it still judged, would be dead 1.5 s after the freeze.
        km = AsyncKernelManager(kernel_name="python3-heartbeat", shutdown_wait_time=4.0)
        provisioner = await beating(km)
        process = provisioner.process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        await km.shutdown_kernel(now=False)  # its heart is silent past its time_to_dead
        return process.returncode

    with caplog.at_level(logging.INFO):
        code = asyncio.run(scenario())
    assert code == -signal.SIGKILL  # ended by its manager, as stock
    assert death_lines(caplog) == []


def test_under_a_heartbeat_kernel_manager_the_manager_alone_watches(
    kernelspec: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[HeartbeatKernelManager, HeartbeatProvisioner, int]:
        km = HeartbeatKernelManager(
            kernel_name="python3-heartbeat",
            time_to_dead=TTD,
            first_beat=FIRST_BEAT,
            autorestart=False,
        )
        await km.start_kernel()
        try:
            provisioner = provisioner_of(km)
            assert provisioner._monitor is None and provisioner._death_watch.exit_watch is None
            await until(lambda: km.heart_has_beaten, 60, "the heart never answered", 0.05)
            process = provisioner.process
            assert process is not None and process.poll() is None  # our child, not reaped
            pid = process.pid
            os.kill(pid, signal.SIGKILL)
            await until(lambda: km.last_death is not None, 30, "death not seen")
            await asyncio.sleep(0.2)  # a second watch's line comes at once, if there is one
            return km, provisioner, pid
        finally:
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        km, provisioner, pid = asyncio.run(scenario())
    assert provisioner.last_death is km.last_death
    [line] = death_lines(caplog)  # the manager's, which knows what happens next
    assert line.getMessage() == (
        f"Kernel {km.kernel_id}: process {pid} died: it was killed by SIGKILL (9); "
        "not restarting it (autorestart is off)"
    )


async def busy_for(client: Any, seconds: float) -> None:
    """Have the kernel run a cell that holds its GIL for ``seconds``, deaf to the interrupt a
    shutdown begins with (its heart still answers, but it reads no shutdown request
    meanwhile); return once the cell is deaf to it."""
    msg_id = client.execute(
        "import ctypes, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "print('deaf', flush=True); "
        f"ctypes.PyDLL(None).usleep({int(seconds * 1e6)})"
    )
    while True:
        msg = await client.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and "deaf" in msg["content"].get(
            "text", ""
        ):
            return


def test_a_manager_running_the_kernelspec_restarts_and_shuts_down_with_no_false_death(
    kernelspec: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # The manager watches the kernel alone (its provisioner leaves the watch to it), and its
    # monitor leaves when a restart or a shutdown begins; a busy kernel then takes a while to
    # exit, and is no death. (When the provisioner watched the same heart through the shared
    # pool, a pool that cut every connection to the url declared it dead and killed it
    # mid-shutdown: tests/test_pool_urls.py keeps that case.)
    async def scenario() -> tuple[list[int | None], int]:
        # A long shutdown_wait_time: jupyter_client itself would terminate a kernel still busy
        # after half of it.
        km = HeartbeatKernelManager(
            kernel_name="python3-heartbeat", time_to_dead=TTD, shutdown_wait_time=30.0
        )
        await km.start_kernel()
        codes: list[int | None] = []
        try:
            for step in ("restart", "shutdown"):
                client = km.client()
                client.start_channels()
                try:
                    await client.wait_for_ready(timeout=60)
                    process = km.provisioner.process  # type: ignore[union-attr]
                    await busy_for(client, 3 * TTD)
                    if step == "restart":
                        await km.restart_kernel(now=False)
                    else:
                        await km.shutdown_kernel(now=False)
                    codes.append(process.poll())  # the old kernel exited as asked
                finally:
                    client.stop_channels()
            return codes, km.deaths
        finally:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        codes, deaths = asyncio.run(scenario())
    dead = [r.getMessage() for r in caplog.records if "dead" in r.getMessage()]
    assert dead == [] and deaths == 0
    assert codes == [0, 0], "a kernel was killed instead of shutting down"
