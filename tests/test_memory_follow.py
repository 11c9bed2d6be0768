"""A real ipykernel started outside any limited memory cgroup, then moved into one of its own
after its heart answered (as a spawner's or provisioner's hook does once a kernel runs,
``systemd-run --scope``, an operator's ``echo $pid > cgroup.procs``): its memory watch follows
it there, so the cell that grows is interrupted against the new cgroup's limit, before the
out-of-memory killer would kill it, and the kernel lives on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from heartbeat._memory import Interrupt, Warn
from heartbeat.jupyter import HeartbeatKernelManager
from heartbeat.jupyter._cgroup_reading import readings
from heartbeat.jupyter._kernel_memory import kernel_pids
from heartbeat.jupyter._memory_watch import MemoryGuard
from tests import cgroups
from tests.cgroups import joiner
from tests.conftest import scaled
from tests.test_deaths import until
from tests.test_memory_server import GROW, memory_cgroup

LIMIT = 256 << 20


def followed(km: HeartbeatKernelManager, group: Path) -> bool:
    """Whether ``km``'s memory watch reads its kernel in ``group`` now."""
    return any(r.reader.path == group and km.memory in r.members for r in readings())


def test_a_kernel_moved_into_a_limited_cgroup_after_its_start_is_interrupted_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(group: Path) -> dict[str, Any]:
        km = HeartbeatKernelManager(
            kernel_name="python3", memory_warning=0.6, memory_interrupt=0.75
        )
        told: list[Warn | Interrupt] = []
        km.memory.add_listener(told.append)
        await km.start_kernel()  # in this process's cgroup, not the test's limited one
        client = km.client()
        try:
            client.start_channels()
            await client.wait_for_ready(timeout=scaled(60))
            first = await client.execute("kept = 42", reply=True, timeout=scaled(60))
            process = km.provisioner.process  # type: ignore[union-attr]
            assert all(r.reader.path != group for r in readings())
            # Moved, with every process of its session, once it runs.
            for pid in kernel_pids(process):
                (group / "cgroup.procs").write_text(str(pid))
            assert process.pid in cgroups.procs(group)
            # Its watch looks where it is at its cgroup's next reading (an idle one's: within
            # 5 s). Not asserted here: what a user sees is, below (without the follow, the cell
            # grows unwatched into the new limit and the kernel is OOM-killed).
            with contextlib.suppress(AssertionError):
                await until(lambda: followed(km, group), 10, "not followed")
            seen = followed(km, group)
            grown = await client.execute(GROW, reply=True, timeout=scaled(30))
            after = await client.execute("kept", reply=True, timeout=scaled(30))
            return {
                "first": first["content"],
                "seen": seen,
                "grown": grown["content"],
                "after": after["content"],
                "alive": await km.is_alive(),
                "told": list(told),
                "limit": km.memory.limit,
                "kid": km.kernel_id,
            }
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)
            assert readings() == []  # it left the new cgroup's reading, which closed

    start = time.monotonic()
    with memory_cgroup(LIMIT) as group, caplog.at_level(logging.INFO):
        found = asyncio.run(scenario(group))
        oom = cgroups.oom_kills(group)
    assert oom == 0, oom
    assert found["first"]["status"] == "ok"
    assert found["grown"]["status"] == "error", found["grown"]
    assert found["grown"]["ename"] == "KeyboardInterrupt", found["grown"]
    assert found["after"]["status"] == "ok" and found["alive"]  # it lived on, `kept` with it
    assert found["seen"], "its memory watch did not follow it into its new cgroup"
    # Warned, then interrupted, against the new cgroup's limit; its limit (for its death's
    # words) the new cgroup's too.
    kinds = [type(event) for event in found["told"]]
    assert kinds == [Warn, Interrupt], found["told"]
    assert all(event.limit == LIMIT for event in found["told"]), found["told"]
    assert found["limit"] == LIMIT
    said = [r.getMessage() for r in caplog.records]
    kid = found["kid"]
    assert any(m.startswith(f"Kernel {kid}: moved into memory cgroup {group}") for m in said)
    assert any(
        m.startswith(f"Kernel {kid}: interrupted: ") and "of its 256.0 MiB limit" in m for m in said
    ), said
    assert not any(" died: " in m for m in said), said
    assert time.monotonic() - start < scaled(60)


def test_a_watch_follows_its_kernel_to_its_binding_cgroup_only_when_that_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A process (not a kernel: what is read is where it is) in a limited cgroup A, moved into a
    # child of A with no limit of its own (A's still binds: the same reading, its state kept),
    # then into another limited cgroup B (followed: A's reading, its last member gone, closed).
    async def scenario(a: Path, b: Path, proc: subprocess.Popen[bytes]) -> None:
        guard = MemoryGuard()
        log = logging.getLogger("test-memory-follow")
        guard.start(proc, oom_score_adj=0, warning=0.9, interrupt=None, log=log)
        try:
            [first] = readings()
            assert first.reader.path == a and first.members == [guard]
            child = a / "child"
            if cgroups.version_of(a) == 2:
                (a / "cgroup.subtree_control").write_text("+memory")
            child.mkdir()
            (child / "cgroup.procs").write_text(str(proc.pid))
            # Seen at its next look (its 1 s mark, or its cgroup's next reading).
            await until(
                lambda: guard._where is not None and "child" in guard._where, 10, "not seen"
            )
            assert readings() == [first] and first.members == [guard] and not first.closed
            (b / "cgroup.procs").write_text(str(proc.pid))
            await until(lambda: any(r.reader.path == b for r in readings()), 10, "not followed")
            [second] = readings()
            assert second.members == [guard] and first.closed
            assert guard.limit == 128 << 20  # its death's words: the new cgroup's limit
        finally:
            guard.stop()
        assert readings() == [] and second.closed  # its last kernel left

    caplog.set_level(logging.INFO)
    with memory_cgroup(256 << 20) as a, memory_cgroup(128 << 20) as b:
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True, preexec_fn=joiner(a))
        try:
            asyncio.run(scenario(a, b, proc))
        finally:
            proc.kill()
            proc.wait()
            with contextlib.suppress(FileNotFoundError):
                (a / "child").rmdir()
    said = [r.getMessage() for r in caplog.records if r.name == "test-memory-follow"]
    assert said == [f"moved into memory cgroup {b}: its memory is read there"], said
