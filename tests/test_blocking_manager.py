"""The kernel spec's provisioner under jupyter_client's blocking ``KernelManager`` (what
``jupyter console``, qtconsole and ``start_new_kernel`` use), whose calls run its coroutines on a
loop that stops between them: the watch runs on a loop of its own, so a kernel frozen between
calls is found and killed within the bound; a busy one is not; nothing is left behind."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from heartbeat.jupyter import HeartbeatProvisioner, kernel
from tests.conftest import process_state, wait_for
from tests.test_deaths import death_lines
from tests.test_headless import TTD, install_kernelspec
from tests.test_provisioner import THEN, open_fds

FIRST_BEAT = 3.0
# time_to_dead + interval after the last reply, and a loaded machine's scheduling.
BOUND = TTD + TTD / 2 + 2.0


@pytest.fixture
def kernelspec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return install_kernelspec(tmp_path, monkeypatch, first_beat=FIRST_BEAT)


def started(km: KernelManager) -> HeartbeatProvisioner:
    """Start the kernel; return its provisioner once its heart has answered and its grace is
    over. Nothing here calls the manager meanwhile: its loop does not run."""
    km.start_kernel()
    begun = time.monotonic()
    provisioner = km.provisioner
    assert isinstance(provisioner, HeartbeatProvisioner)
    assert wait_for(lambda: (m := provisioner._monitor) is not None and m.stats.count > 0, 60)
    assert wait_for(lambda: time.monotonic() > begun + FIRST_BEAT, 60)
    return provisioner


def test_a_kernel_frozen_between_calls_is_found_dead_and_killed_within_the_bound(
    kernelspec: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    km = KernelManager(kernel_name="python3-heartbeat")
    with caplog.at_level(logging.INFO):
        provisioner = started(km)
        try:
            process = provisioner.process
            assert process is not None
            pid = process.pid
            os.kill(pid, signal.SIGSTOP)
            frozen = time.monotonic()
            # Killed (a zombie until the manager reaps it): read from /proc, not by poll(),
            # which would reap it from here. Without a loop of its own, 12 s were not enough.
            assert wait_for(lambda: process_state(pid) in ("Z", None), 12), process_state(pid)
            found = time.monotonic() - frozen
            # What the manager's next look says, once the process's other threads have exited
            # too (its main thread is a zombie before they have, and cannot be reaped yet).
            assert wait_for(lambda: not km.is_alive(), 10)
        finally:
            km.shutdown_kernel(now=True)
    assert found <= BOUND, found
    death = provisioner.last_death
    assert death is not None and death.cause.kind == "stopped" and death.pid == pid
    [line] = death_lines(caplog)
    text = line.getMessage()
    assert "is dead: no reply for" in text and "its process was stopped" in text, text
    assert text.endswith(f"; killed its process {pid}; {THEN}"), text


def test_a_busy_kernel_is_no_death_between_calls(
    kernelspec: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    km = KernelManager(kernel_name="python3-heartbeat")
    with caplog.at_level(logging.INFO):
        provisioner = started(km)
        client = km.client()
        client.start_channels(hb=False)
        try:
            client.wait_for_ready(timeout=60)
            # Holds its GIL for 3 time_to_deads: its heart (a C thread) still answers.
            reply = client.execute_interactive(
                f"import ctypes; ctypes.PyDLL(None).usleep({int(3 * TTD * 1e6)})",
                timeout=60,
                output_hook=lambda msg: None,
            )
            assert reply["content"]["status"] == "ok"
            monitor = provisioner._monitor
            assert monitor is not None and monitor.running and km.is_alive()
        finally:
            client.stop_channels()
            km.shutdown_kernel(now=True)
    assert provisioner.last_death is None and death_lines(caplog) == []


def test_start_restart_and_shutdown_leave_no_thread_no_fd_and_no_death(
    kernelspec: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    before = set(threading.enumerate())
    pools = len(kernel._pools)
    km = KernelManager(kernel_name="python3-heartbeat")
    watchers: list[threading.Thread] = []

    def watcher() -> threading.Thread:
        [thread] = [t for t in threading.enumerate() if t not in before]
        assert thread.name.startswith("heartbeat: kernel ") and thread.daemon
        watchers.append(thread)
        return thread

    with caplog.at_level(logging.INFO):
        started(km)
        watcher()
        km.restart_kernel(now=False)  # asked for: no death
        assert wait_for(lambda: km.provisioner._monitor is not None, 60)  # type: ignore[union-attr]
        assert not watchers[0].is_alive()
        watcher()
        km.restart_kernel(now=True)
        watcher()
        km.shutdown_kernel(now=False)
        assert set(threading.enumerate()) == before
        fds = open_fds()  # what lasts is made by now (zmq's global context, say)
        # jupyter_client's blocking manager cannot start again after a shutdown (its zmq
        # context is destroyed): another one.
        km = KernelManager(kernel_name="python3-heartbeat")
        started(km)
        watcher()
        km.shutdown_kernel(now=True)
        # zmq closes a socket in its own thread, a moment after close(): bounded, not hoped.
        assert wait_for(lambda: open_fds() <= fds, 10), (open_fds(), fds)
    assert open_fds() == fds  # the thread's loop, pool and sockets: all closed
    assert len(kernel._pools) == pools  # no thread's pool left behind
    assert set(threading.enumerate()) == before  # each joined: not left to the fixture's wait
    assert len(set(watchers)) == 4 and not any(t.is_alive() for t in watchers)
    assert death_lines(caplog) == []
