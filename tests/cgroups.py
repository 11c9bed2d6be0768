"""Memory cgroups that tests make, in whichever version this machine's memory controller is:
cgroup v1 (its own hierarchy, ``/sys/fs/cgroup/memory``) or v2 (the unified hierarchy, where
the memory controller must be enabled in the parent's ``cgroup.subtree_control``).

Tests written against these helpers (the limit, the kill count, joining) run unchanged on either;
:func:`available` says which one this process can make, and why not (shown in pytest's header,
so a run says which it ran). cgroup v2 on a machine whose memory controller is bound to v1 is
run in a VM: ``tests/test_cgroup2_vm.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heartbeat.jupyter import _proc

_ROOT = _proc.CGROUP_ROOT


def _v2_parent() -> tuple[Path | None, str]:
    """Where this process can make a v2 memory cgroup: its own cgroup when that is the root (no
    processes rule does not bind the root) or already delegates memory to its children."""
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        return None, f"no /proc/self/cgroup ({exc})"
    line = next((line for line in text.splitlines() if line.startswith("0::")), None)
    if line is None:
        return None, "no cgroup v2 hierarchy for this process"
    for base in (_ROOT, _ROOT / "unified"):
        mine = base / line[3:].lstrip("/")
        try:
            controllers = (base / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "memory" not in controllers:
            return None, (
                f"the cgroup v2 hierarchy at {base} has no memory controller "
                f"(it has: {' '.join(controllers) or 'none'}); the memory controller is v1's here"
            )
        control = mine / "cgroup.subtree_control"
        try:
            if "memory" not in control.read_text().split():
                if mine != base:
                    return None, f"{mine} does not delegate memory to its children"
                control.write_text("+memory")
        except OSError as exc:
            return None, f"cannot enable memory in {control}: {exc}"
        return mine, ""
    return None, "no cgroup v2 hierarchy mounted"


def available() -> tuple[int | None, str]:
    """The cgroup version (1, 2) in which this process can make memory cgroups, and where; or
    None and why it cannot."""
    mine = _proc.memory_cgroup_of(os.getpid())
    if mine is not None and mine.version == 1:
        return 1, f"cgroup v1, under {mine.path}"
    parent, why = _v2_parent()
    if parent is not None:
        return 2, f"cgroup v2, under {parent}"
    return None, why


def _parent() -> tuple[int, Path]:
    mine = _proc.memory_cgroup_of(os.getpid())
    if mine is not None and mine.version == 1:
        return 1, mine.path
    parent, why = _v2_parent()
    if parent is None:
        pytest.skip(f"cannot make a memory cgroup here: {why}")
    return 2, parent


def version_of(group: Path) -> int:
    """The cgroup version of ``group``, a memory cgroup made by :func:`memory_cgroup`."""
    return 2 if (group / "memory.max").exists() else 1


def set_limit(group: Path, limit: int) -> None:
    """Limit ``group``'s memory to ``limit`` bytes (without swap: these machines have none, and
    where they have, swapping would only slow the test's out-of-memory kill down)."""
    if version_of(group) == 2:
        (group / "memory.max").write_text(str(limit))
        with contextlib.suppress(OSError):
            (group / "memory.swap.max").write_text("0")
    else:
        (group / "memory.limit_in_bytes").write_text(str(limit))


def oom_kills(group: Path) -> int:
    """How many of ``group``'s processes the out-of-memory killer has killed (v1
    ``memory.oom_control``, v2 ``memory.events``: their ``oom_kill``)."""
    name = "memory.events" if version_of(group) == 2 else "memory.oom_control"
    text = (group / name).read_text()
    found = re.search(r"^oom_kill (\d+)$", text, re.M)
    assert found is not None, f"no oom_kill count in {group / name}: {text!r}"
    return int(found.group(1))


def procs(group: Path) -> list[int]:
    """The processes in ``group`` now."""
    return [int(pid) for pid in (group / "cgroup.procs").read_text().split()]


@contextlib.contextmanager
def memory_cgroup(limit: int, *, kill_after: float | None = None) -> Iterator[Path]:
    """A memory cgroup limited to ``limit`` bytes under this process's own (v1) or where v2
    lets it (see :func:`available`); skips, saying why, where none can be made. Removed after,
    even on failure, once what joined it has exited (the test ends what it started): with
    ``kill_after``, what is still in it after that many seconds (only what this test started
    joined it: a server, say) is SIGKILLed first."""
    _, parent = _parent()
    group = parent / f"heartbeat-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup under {parent}: {exc}")
    try:
        try:
            set_limit(group, limit)
        except OSError as exc:
            pytest.skip(f"cannot set a memory limit in {group}: {exc}")
        yield group
    finally:
        _remove(group, kill_after)


def _remove(group: Path, kill_after: float | None) -> None:
    start = time.monotonic()
    killed = False
    while True:
        left = procs(group)
        if not left:
            try:
                group.rmdir()
                return
            except OSError:
                pass  # a process left between the read and the removal: read again
        waited = time.monotonic() - start
        if kill_after is not None and waited > kill_after and not killed:
            for pid in left:  # only what this test started joined it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed = True
        assert waited < (kill_after or 0) + 30, f"{group} still holds {left}"
        time.sleep(0.05)


def joiner(group: Path) -> Callable[[], None]:
    """A ``preexec_fn`` by which a new process joins ``group`` before it runs anything."""
    path = group / "cgroup.procs"

    def join() -> None:
        with open(path, "w") as f:
            f.write(str(os.getpid()))

    return join
