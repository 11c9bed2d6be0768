"""What a death's cause rests on: /proc/<pid>/stat's fields, pid lists and kernel log records
parsed from fixture text; the readers of /proc, the memory cgroup and the kernel log, on a fake
cgroup tree and on real processes of this test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heartbeat._cause import Memory
from heartbeat._evidence import LogRecord, kmsg_record, pids, process_stat
from heartbeat.jupyter import _kmsg, _proc
from heartbeat.jupyter._death import Witness
from tests.test_cause import STAT_RUNNING, V1_LIMIT, V1_OOM, V2_EVENTS, V2_MAX

# -- /proc/<pid>/stat's other fields, pid lists, the kernel log --------------------------------

# state, ppid, pgrp, session, tty, tpgid, flags (9th), 21 more, signal (31st: pending), blocked
STAT_FIELDS = "4242 (python) {state} 4200 4242 4200 0 -1 {flags} " + "0 " * 21 + "{pending} 0"
KMSG_OOM = (
    "3,416,1354893005,-;Memory cgroup out of memory: Killed process 15689 (python3) "
    "total-vm:221392kB, anon-rss:65248kB, file-rss:6640kB, shmem-rss:0kB, UID:0 pgtables:204kB "
    "oom_score_adj:0\n"
)
KMSG_GLOBAL = "3,12,99,-;Out of memory: Killed process 77 (a b) total-vm:1kB\n SUBSYSTEM=x\n"
KMSG_OTHER = "4,339,1354888610,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL)\n"
KMSG_FROM_USER = "12,500,1,-;Memory cgroup out of memory: Killed process 1 (init)\n"


@pytest.mark.parametrize(
    ("state", "flags", "pending", "dying"),
    [
        ("S", 4194560, 0, False),
        ("R", 4194560 | 0x4, 0, True),  # PF_EXITING
        ("D", 4194560, 1 << 8, True),  # SIGKILL pending
        ("S", 4194560, 1 << 14, False),  # SIGALRM pending: nothing
        ("Z", 4227084, 0, True),
    ],
)
def test_a_dying_process_is_exiting_a_zombie_or_has_sigkill_pending(
    state: str, flags: int, pending: int, dying: bool
) -> None:
    stat = process_stat(STAT_FIELDS.format(state=state, flags=flags, pending=pending))
    assert stat.state == state and stat.flags == flags and stat.dying is dying


def test_bad_stat_pid_lists_and_records_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="/proc/<pid>/stat"):
        process_stat(STAT_RUNNING)  # too short to hold the pending signals
    with pytest.raises(ValueError, match="not a list of pids"):
        pids("12\nx\n")
    with pytest.raises(ValueError, match="/dev/kmsg"):
        kmsg_record("no prefix here")
    with pytest.raises(TypeError):
        pids(b"12")  # type: ignore[arg-type]


def test_pid_lists_are_read_whatever_the_separator() -> None:
    assert pids("12\n13\n") == {12, 13} and pids("12 13 ") == {12, 13} and pids("") == set()


@pytest.mark.parametrize(
    ("text", "seq", "victim"),
    [
        (KMSG_OOM, 416, 15689),
        (KMSG_GLOBAL, 12, 77),
        (KMSG_OTHER, 339, None),
        (KMSG_FROM_USER, 500, None),  # written from user space (facility 1): never a victim
    ],
)
def test_the_kernel_log_names_the_oom_killers_victims(
    text: str, seq: int, victim: int | None
) -> None:
    assert kmsg_record(text) == LogRecord(seq, victim)


def test_an_unreadable_kernel_log_says_nothing(tmp_path: Path) -> None:
    log = _kmsg.OomLog(str(tmp_path / "no-kmsg"))
    assert log.mark() is None and log.since(None) is None and log.since(0) is None


# -- the readers, on a fake cgroup tree and on this process ------------------------------------


def test_memory_cgroup_files_are_read_for_v1_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "memory" / "jobs"
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text(V1_OOM)
    (v1 / "memory.limit_in_bytes").write_text(V1_LIMIT)
    assert _proc.MemoryCgroup(1, v1).read() == Memory(2, 64 << 20)
    v2 = tmp_path / "k"
    v2.mkdir()
    (v2 / "memory.events").write_text(V2_EVENTS)
    (v2 / "memory.max").write_text(V2_MAX)
    assert _proc.MemoryCgroup(2, v2).read() == Memory(1, 2 << 30)
    # Where it has its own count (Linux 5.2+), that one: not the kills of the cgroups below.
    (v2 / "memory.events.local").write_text(V2_EVENTS.replace("oom_kill 1", "oom_kill 0"))
    assert _proc.MemoryCgroup(2, v2).read() == Memory(0, 2 << 30)
    assert _proc.MemoryCgroup(2, v2).read(limit=False) == Memory(0, None)
    assert _proc.MemoryCgroup(2, tmp_path / "gone").read() is None


def test_this_process_is_read_where_proc_exists() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc here")
    assert _proc.read_state(os.getpid()) == "R"  # it is reading it


def test_this_processs_children_and_its_cgroups_processes_are_read() -> None:
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("no /proc/<pid>/task/<tid>/children here")
    # A shell that runs a python that does not exit: two levels under this process.
    shell = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(60)'; echo done"]
    )
    try:
        end = time.monotonic() + 30
        while len(below := _proc.descendants(os.getpid())) < 2:
            assert time.monotonic() < end, below
            time.sleep(0.01)
        assert shell.pid in below
        [python] = _proc.descendants(shell.pid)
        stat = _proc.read_stat(python)
        assert stat is not None and not stat.dying
        group = _proc.memory_cgroup_of(python)
        if group is not None:
            procs = group.procs()
            assert procs is None or python in procs
    finally:
        shell.kill()
        shell.wait()


def test_a_reading_taken_while_the_process_dies_is_not_kept() -> None:
    # A count read after the kill it is to be compared with would hide that kill: a reading
    # with the process exiting (here, a zombie not yet reaped) is thrown away, the one before
    # kept, and the process is read no more.
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc here")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        witness = Witness(child)
        first = witness.where
        assert witness.sample() and witness.where is not first  # alive: a new reading kept
        kept = witness.where
        os.kill(child.pid, signal.SIGKILL)  # our own child, not reaped: its pid is ours
        end = time.monotonic() + 30
        while _proc.read_state(child.pid) != "Z":
            assert time.monotonic() < end, "not a zombie"
            time.sleep(0.01)
        assert not witness.sample() and witness.where is kept
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("reaped", [False, True])
def test_a_count_risen_as_a_process_under_the_kernel_dies_is_not_taken_in(
    reaped: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Behind a wrapper, the kernel is a process under the manager's child: a reading of the
    # cgroup's count after the OOM killer counted its kill, but before the wrapper exits, would
    # hide that kill. The reading from before is kept, for one more reading, when one of its
    # processes is dying or gone. Here a fake v1 cgroup (its files written by the test) and a
    # real process under the child, killed: a zombie its parent has not reaped, or reaped.
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("no /proc/<pid>/task/<tid>/children here")
    group = _proc.MemoryCgroup(1, tmp_path)
    (tmp_path / "memory.oom_control").write_text(V1_OOM.replace("oom_kill 2", "oom_kill 0"))
    (tmp_path / "memory.limit_in_bytes").write_text(V1_LIMIT)
    (tmp_path / "cgroup.procs").write_text("")
    monkeypatch.setattr(Witness, "_cgroup_of", lambda self, pid: group)
    # Not reaped: its Popen kept (one dropped polls once, and would reap a zombie).
    run = "subprocess.run" if reaped else "p = subprocess.Popen"
    code = f"import subprocess, time; {run}(['sleep', '60']); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        end = time.monotonic() + 30
        # Once it runs sleep: killed between its fork and its exec, Popen would reap it.
        while not (below := _proc.descendants(child.pid)) or not runs_sleep(below):
            assert time.monotonic() < end, "no sleep under the child"
            time.sleep(0.01)
        [sleeper] = below
        witness = Witness(child)
        assert witness.where[child.pid].memory == Memory(0, None)
        os.kill(sleeper, signal.SIGKILL)  # the test's own grandchild
        while _proc.read_state(sleeper) != (None if reaped else "Z"):
            assert time.monotonic() < end, "not dead"
            time.sleep(0.01)
        (tmp_path / "memory.oom_control").write_text(V1_OOM)  # 2 kills counted
        assert witness.sample()
        assert witness.where[child.pid].memory == Memory(0, None)  # the reading from before
        assert sleeper in witness.descendants
        if reaped:
            # One more reading, and it is taken in: the kill was not the kernel's death.
            assert witness.sample()
            assert witness.where[child.pid].memory == Memory(2, None)
    finally:
        child.kill()
        child.wait()


def runs_sleep(pids: frozenset[int]) -> bool:
    try:
        return all(Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0") for pid in pids)
    except OSError:
        return False
