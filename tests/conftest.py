"""Shared fixtures: real kernel processes, and a check that every test cleans up after itself."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

SLOW = os.environ.get("HEARTBEAT_SLOW") == "1"
# CI installs every kernel the suite runs (IRkernel from Debian, xeus-python from PyPI): there a
# missing one fails its tests instead of skipping them.
REQUIRE_KERNELS = os.environ.get("HEARTBEAT_REQUIRE_KERNELS") == "1"
# How many times slower than this machine the tests' machine is: the waits for a kernel or a
# server to come up are this many times longer (tests.vm's VM, under software emulation, sets
# it; the product's own settings, time_to_dead and the rest, are never scaled).
TIME_SCALE = float(os.environ.get("HEARTBEAT_TEST_TIME_SCALE") or 1)


def scaled(seconds: float) -> float:
    """``seconds`` of waiting for something to start, on the tests' machine (``TIME_SCALE``)."""
    return seconds * TIME_SCALE


def kernel_spec_or_skip(name: str) -> str:
    """The resource directory of the installed kernel spec ``name`` (``ir``, ``xpython``);
    where it is missing the test is skipped, or fails under ``HEARTBEAT_REQUIRE_KERNELS=1``."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return str(KernelSpecManager().get_kernel_spec(name).resource_dir)
    except NoSuchKernel:
        why = f"kernel spec {name!r} is not installed (.ci/run installs it)"
        if REQUIRE_KERNELS:
            pytest.fail(why)
        pytest.skip(why)


def read_json_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Read one JSON line from ``proc``'s stdout, failing (not hanging) after ``timeout``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no output from pid {proc.pid} within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"pid {proc.pid} closed its output (exit {proc.poll()})")
    return dict(json.loads(line))


@dataclass
class Kernel:
    """A stand-in kernel process running a real Heart."""

    proc: subprocess.Popen[str]
    url: str = ""
    pid: int = 0
    frozen: bool = field(default=False)

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 30.0) -> dict[str, Any]:
        return read_json_line(self.proc, timeout)

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.frozen:
            self.thaw()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def spawn_kernel(*args: str, wait: bool = True) -> Kernel:
    proc = subprocess.Popen(
        [sys.executable, "-m", "heartbeat._standin", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    kernel = Kernel(proc)
    if wait:
        hello = kernel.read()
        kernel.url, kernel.pid = hello["url"], hello["pid"]
    return kernel


@pytest.fixture
def kernel_factory() -> Iterator[Callable[..., Kernel]]:
    kernels: list[Kernel] = []

    def make(*args: str, wait: bool = True) -> Kernel:
        kernel = spawn_kernel(*args, wait=wait)
        kernels.append(kernel)
        return kernel

    yield make
    for kernel in kernels:
        kernel.close()


@pytest.fixture
def kernel(kernel_factory: Callable[..., Kernel]) -> Kernel:
    return kernel_factory()


def wait_for(condition: Callable[[], object], timeout: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def gone(pid: int) -> bool:
    """True once no process (running, stopped or zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def process_state(pid: int) -> str | None:
    """A process's state letter (R, S, T, Z...) from /proc, None once no process has the pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return int(stat.read().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


_STRANGER = """
import json, os, sys
if os.fork():
    os._exit(0)  # the parent leaves at once: the process below is no child of the test's
print(json.dumps({"pid": os.getpid()}), flush=True)
sys.stdin.buffer.read()  # until the test closes the pipe
"""


@contextmanager
def stranger() -> Iterator[int]:
    """The pid of a live local process that is not a child of this one, for the block.

    It ends by itself when the block ends (its stdin closes), so nothing here ever signals a
    process that is not its own child; a process that is gone or a zombie afterwards is one
    that nobody is waiting for (the container's init may not reap).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _STRANGER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    pid = 0
    try:
        pid = int(read_json_line(proc, 30)["pid"])
        proc.wait(30)  # the intermediate parent has exited
        assert parent_of(pid) not in (None, os.getpid(), proc.pid), parent_of(pid)
        yield pid
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()
        proc.wait(30)
        assert not pid or wait_for(lambda: process_state(pid) in (None, "Z", "X"), 30)


def run_python(
    code: str, timeout: float = 60, args: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (its own process state) with ``args`` as its
    ``sys.argv[1:]``, output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *(args or [])],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """After every test, no thread it started is still running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not extra, f"threads left running: {extra}"


def pytest_report_header(config: pytest.Config) -> str:
    """Which cgroup version the memory tests make their cgroups in, here (they run unchanged on
    either): a run says which it ran."""
    from tests import cgroups

    version, where = cgroups.available()
    if version is None:
        return f"memory cgroups: none can be made here ({where}): the memory tests skip"
    other = " (cgroup v2: python -m tests.vm runs them in a VM)" if version == 1 else ""
    return f"memory cgroups: the memory tests make theirs in {where}{other}"
