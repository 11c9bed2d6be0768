"""A memory cgroup of a test's own, and a way into it, for the tests of out-of-memory kills
(``tests/test_deaths.py``, ``tests/test_death_causes.py``, ``tests/test_memory_server.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heartbeat.jupyter import _proc

# How long what joined a test's cgroup is given to leave it (its kernel reaped) after the test.
EMPTIED = 30.0


@contextlib.contextmanager
def memory_cgroup(limit: int, *, kill_after: float | None = None) -> Iterator[Path]:
    """A cgroup v1 memory cgroup limited to ``limit`` bytes, under this process's own; skips,
    saying why, where none can be made. Removed after, once what joined it has left (within
    EMPTIED seconds, else the test fails). With ``kill_after``: what is still in it that many
    seconds after (only what the test started joined it: a server, say, that outlives a
    failed test) is SIGKILLed first, and is then given EMPTIED seconds more."""
    mine = _proc.memory_cgroup_of(os.getpid())
    if mine is None or mine.version != 1:
        pytest.skip("no cgroup v1 memory controller for this process (this test writes v1 only)")
    group = mine.path / f"heartbeat-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup under {mine.path}: {exc}")
    try:
        try:
            (group / "memory.limit_in_bytes").write_text(str(limit))
        except OSError as exc:
            pytest.skip(f"cannot set a memory limit in {group}: {exc}")
        yield group
    finally:
        _remove(group, kill_after)


def _remove(group: Path, kill_after: float | None) -> None:
    start = time.monotonic()
    end = start + EMPTIED + (kill_after or 0.0)
    killed = False
    while True:
        left = [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
        if not left:
            with contextlib.suppress(OSError):  # a task not yet gone: tried again
                group.rmdir()
                return
        elif kill_after is not None and not killed and time.monotonic() > start + kill_after:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed = True
        assert time.monotonic() < end, f"{group} still holds {left}"
        time.sleep(0.05)


def joiner(group: Path) -> Callable[[], None]:
    """A ``preexec_fn`` by which a new process joins ``group`` before it runs anything."""
    procs = group / "cgroup.procs"

    def join() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return join
