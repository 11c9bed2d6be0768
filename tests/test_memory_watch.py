"""heartbeat.jupyter._memory_watch on real processes: a kernel's processes (our child and its
session, a wrapper's later fork too) made the OOM killer's preferred victims, and nothing else;
the memory.oom.group warning."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager

from heartbeat._memory import Interrupt, Warn
from heartbeat.jupyter import _kernel_memory
from heartbeat.jupyter._cgroup_reading import readings
from heartbeat.jupyter._kernel_memory import (
    Reader,
    kernel_pids,
    mark_for_oom,
    warn_if_oom_group,
)
from heartbeat.jupyter._memory_watch import MemoryGuard
from heartbeat.jupyter._proc import MemoryCgroup
from tests.test_deaths import joiner
from tests.test_memory_server import memory_cgroup
from tests.test_provisioner import beating, kernelspec  # noqa: F401


def adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def until(predicate: object, what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, what
        time.sleep(0.02)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_kernel_and_its_session_are_marked_and_nothing_else(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # A wrapper (a shell) that forks one process now and its real kernel later: in its own
    # session, as jupyter_client starts kernels.
    wrapper = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sleep 0.5; exec sleep 61"], start_new_session=True
    )
    processes.append(wrapper)
    # Ours too, but no kernel's: started in this process's session.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    processes.append(bystander)

    def forked() -> list[int]:
        return [p for p in children(wrapper.pid) if cmdline(p) == b"sleep\x0060\x00"]

    until(forked, "the wrapper forked nothing")
    [early] = forked()
    found = kernel_pids(wrapper)
    assert {wrapper.pid, early} <= set(found) <= {wrapper.pid, *children(wrapper.pid)}
    assert bystander.pid not in found
    assert mark_for_oom(wrapper, 1000) >= 2
    assert adj(wrapper.pid) == adj(early) == 1000
    assert adj(bystander.pid) == 0  # not in the kernel's session: left alone
    assert mark_for_oom(wrapper, 1000) == 0  # already: nothing written
    assert mark_for_oom(wrapper, 500) == 0  # never lowered
    assert adj(wrapper.pid) == 1000
    # Its real kernel, exec'd after the mark, keeps it (and so would any later fork).
    until(lambda: Path(f"/proc/{wrapper.pid}/cmdline").read_bytes().startswith(b"sleep"), "exec")
    assert adj(wrapper.pid) == 1000


def test_an_exited_kernel_is_never_marked(processes: list[subprocess.Popen[bytes]]) -> None:
    child = subprocess.Popen(["true"], start_new_session=True)
    child.wait()  # reaped: its pid may be anyone's by now
    assert kernel_pids(child) == []
    assert mark_for_oom(child, 1000) == 0


def test_zero_marks_nothing(processes: list[subprocess.Popen[bytes]]) -> None:
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    processes.append(child)
    assert mark_for_oom(child, 0) == 0
    assert adj(child.pid) == 0


@pytest.mark.parametrize(("text", "warned"), [("1\n", True), ("0\n", False)])
def test_memory_oom_group_is_warned_of_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    text: str,
    warned: bool,
) -> None:
    monkeypatch.setattr(_kernel_memory, "_oom_group_checked", False)
    (tmp_path / "memory.oom.group").write_text(text)
    group = MemoryCgroup(2, tmp_path)
    log = logging.getLogger("test-oom-group")
    with caplog.at_level(logging.WARNING):
        assert warn_if_oom_group(log, group) is warned
        assert warn_if_oom_group(log, group) is False  # once a process
    lines = [r.getMessage() for r in caplog.records if r.name == "test-oom-group"]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert "memory.oom.group=1" in lines[0] and "singleProcessOOMKill" in lines[0]
    # cgroup v1 has no such file: nothing to warn of.
    monkeypatch.setattr(_kernel_memory, "_oom_group_checked", False)
    assert warn_if_oom_group(log, MemoryCgroup(1, tmp_path)) is False


def test_the_provisioners_kernel_is_the_oom_killers_choice(kernelspec: dict[str, str]) -> None:  # noqa: F811
    # A headless run's kernel (the kernel spec's provisioner under a stock manager) is marked as
    # the managers' kernels are (tests/test_memory_server.py).
    async def scenario() -> int:
        km = AsyncKernelManager(kernel_name="python3-heartbeat")
        provisioner = await beating(km, judged=False)
        try:
            process = provisioner.process
            assert process is not None
            return adj(process.pid)
        finally:
            await km.shutdown_kernel(now=True)

    assert asyncio.run(scenario()) == 1000


V2_STAT = "anon 300000000\nfile 100000000\ninactive_file 60000000\n"
V1_STAT = "rss 300000000\ncache 100000000\ntotal_inactive_file 60000000\n"


def test_the_binding_limit_is_read_v2_fixture(tmp_path: Path) -> None:
    # cgroup v2 (fixture files: this machine's memory controller is v1's): a pod's limit above
    # the container's own "max"; the kernel in a child of the container.
    pod, container = tmp_path / "pod", tmp_path / "pod" / "c1"
    for where, limit in ((pod, "1073741824\n"), (container, "max\n")):
        where.mkdir(parents=True, exist_ok=True)
        (where / "memory.max").write_text(limit)
        (where / "memory.current").write_text("400000000\n")
        (where / "memory.stat").write_text(V2_STAT)
        (where / "memory.peak").write_text("500000000\n")
        (where / "cgroup.procs").write_text("")
    (container / "cgroup.procs").write_text("12\n13\n")
    reader = Reader.of(MemoryCgroup(2, container), root=tmp_path)
    assert reader == Reader(2, pod)  # the limit that binds
    assert reader.limit() == 1 << 30
    assert reader.usage() == 340_000_000  # less inactive file cache
    assert reader.usage(exact_from=500_000_000) == 400_000_000  # far below: the cache unread
    assert reader.processes() == 2  # the container's, below the pod
    assert reader.peak() == 500_000_000


def test_the_binding_limit_is_read_v1_fixture(tmp_path: Path) -> None:
    top = tmp_path / "memory"
    group = top / "jupyter" / "kernel"
    for where, limit in ((top, "9223372036854771712\n"), (top / "jupyter", "536870912\n")):
        where.mkdir(parents=True, exist_ok=True)
        (where / "memory.limit_in_bytes").write_text(limit)
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    reader = Reader.of(MemoryCgroup(1, group), root=tmp_path)
    assert reader == Reader(1, top / "jupyter")
    (reader.path / "memory.usage_in_bytes").write_text("400000000\n")
    (reader.path / "memory.stat").write_text(V1_STAT)
    assert reader.usage() == 340_000_000
    # Nowhere a limit: the kernel's own cgroup, read for nothing but its usage.
    assert Reader.of(MemoryCgroup(1, top), root=tmp_path) == Reader(1, top)


# -- kernels that share a memory cgroup: one reading, the interrupt for the largest only --------

# A stand-in kernel: holds as many more bytes as each line it reads says, touched.
HOLDER = (
    "import sys\nheld = []\n"
    "for line in sys.stdin:\n    held.append(b'x' * int(line))\n    print('held', flush=True)\n"
)


def test_kernels_sharing_a_cgroup_share_one_reading_and_only_the_largest_is_interrupted(
    processes: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def holder(group: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=joiner(group),
        )
        processes.append(proc)
        return proc

    def hold(proc: subprocess.Popen[bytes], size: int) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{size}\n".encode())
        proc.stdin.flush()
        assert proc.stdout.readline() == b"held\n"

    reads: list[float] = []
    usage = Reader.usage

    def counted(self: Reader, exact_from: float = 0.0) -> int | None:
        reads.append(time.monotonic())
        return usage(self, exact_from)

    monkeypatch.setattr(Reader, "usage", counted)

    async def scenario(group: Path) -> None:
        a, b = holder(group), holder(group)
        guards = {"a": MemoryGuard(), "b": MemoryGuard()}
        told: dict[str, list[Warn | Interrupt]] = {"a": [], "b": []}
        interrupted: list[str] = []
        for key, proc in (("a", a), ("b", b)):
            guards[key].add_listener(told[key].append)
            guards[key].start(
                proc,
                oom_score_adj=0,
                warning=0.3,
                interrupt=0.4,
                log=logging.getLogger("test-shared-cgroup"),
                interrupt_kernel=lambda key=key: interrupted.append(key),  # type: ignore[misc]
            )
        [reading] = readings()  # one for both
        assert reading.members == [guards["a"], guards["b"]]
        assert reading.reader.path == group
        # b holds a little, a grows past both fractions of the shared limit.
        hold(b, 30 << 20)
        hold(a, 120 << 20)
        end = time.monotonic() + 30
        while not (told["a"] and told["b"] and interrupted):
            assert time.monotonic() < end, (told, interrupted)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # two readings past the interrupt: b is not interrupted later
        assert interrupted == ["a"], interrupted
        assert [type(e) for e in told["a"]] == [Warn, Interrupt] and told["b"] == [told["b"][0]]
        for event in (told["a"][0], told["b"][0]):
            assert isinstance(event, Warn) and event.sharers == 1, event
            assert event.own is not None and event.own < event.usage
            assert "shared with 1 other kernel, uses " in event.words()
        assert told["a"][0].own > 120 << 20 > told["b"][0].own > 30 << 20  # type: ignore[operator]
        assert re.search(r"; this kernel uses [\d.]+ MiB of it, the most", told["a"][1].words())
        # a exits (its memory freed): it leaves, b alone is read; a's stop changes nothing more.
        a.kill()
        a.wait()
        while reading.members != [guards["b"]]:
            assert time.monotonic() < end, reading.members
            await asyncio.sleep(0.02)
        guards["a"].stop()
        assert reading.members == [guards["b"]] and not reading.closed
        before = len(reads)
        while len(reads) == before:
            assert time.monotonic() < end, "b is not read"
            await asyncio.sleep(0.02)
        # b stops being watched: the last, it closes the reading; nothing is read any more.
        guards["b"].stop()
        assert reading.closed and readings() == []
        stopped = len(reads)
        guards["b"].new_cell()
        hold(b, 60 << 20)
        await asyncio.sleep(1.0)  # four readings' worth (peak_every)
        assert len(reads) == stopped, "read after the last stop"
        assert [len(told["a"]), len(told["b"])] == [2, 1] and interrupted == ["a"]

    with memory_cgroup(256 << 20) as group:
        try:
            asyncio.run(scenario(group))
        finally:
            for proc in processes:
                proc.kill()
                proc.wait()
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        pipe.close()


def test_kernels_joining_a_reading_leave_it_one_timer(
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # Each joins with a reading at once: the timer set by the one before is replaced, not left
    # to read the cgroup again (with 1,000 kernels, 1,000 readings of 1,000 every 5 s).
    async def scenario() -> int:
        guards = []
        for _ in range(5):
            proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
            processes.append(proc)
            guard = MemoryGuard()
            guard.start(proc, oom_score_adj=0, warning=0.9, interrupt=None, log=logging.getLogger())
            guards.append(guard)
        try:
            [reading] = readings()
            assert len(reading.members) == 5
            loop = asyncio.get_running_loop()
            pending = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
            # tornado's call_later: asyncio's, its callback given as a partial.
            return sum(getattr(h._args[0], "func", None) == reading._tick for h in pending)
        finally:
            for guard in guards:
                guard.stop()

    assert asyncio.run(scenario()) == 1
