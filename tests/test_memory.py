"""heartbeat._memory: when a kernel's memory cgroup is read, when it is warned or interrupted,
and its memory in words; on a fake clock and fixture text."""

from __future__ import annotations

import re

import pytest
from traitlets import TraitError

from heartbeat import _memory
from heartbeat._cause import Cause, Death
from heartbeat._memory import Interrupt, MemorySchedule, Warn
from heartbeat.jupyter.events import event_data
from heartbeat.jupyter.kernel import HeartbeatSettings

MIB = 1 << 20
GIB = 1 << 30

STATUS = (
    "Name:\tpython\nState:\tR (running)\nVmPeak:\t  812344 kB\nVmHWM:\t  204800 kB\n"
    "VmRSS:\t  102400 kB\nThreads:\t4\n"
)
STAT = "4242 (ipy kernel) (x)) S 4200 4242 4242 0 -1 4194560 30000 0 0 0 120 30 0 0 20 0 4 0"
V1_STAT = "cache 104857600\nrss 52428800\ntotal_cache 104857600\ntotal_inactive_file 73400320\n"
V2_STAT = "anon 52428800\nfile 104857600\ninactive_file 73400320\nactive_file 31457280\n"


def test_proc_text_is_read() -> None:
    assert _memory.status_bytes(STATUS, "VmHWM") == 200 * MIB
    assert _memory.status_bytes(STATUS, "VmRSS") == 100 * MIB
    assert _memory.status_bytes("Name:\tkthreadd\nState:\tS\n", "VmHWM") is None  # no mm
    assert _memory.stat_session(STAT) == 4242  # a command name with ") (" in it
    with pytest.raises(ValueError, match="not a size in kB for VmHWM"):
        _memory.status_bytes("VmHWM:\t12 pages\n", "VmHWM")
    with pytest.raises(ValueError, match="not the text of /proc/<pid>/stat"):
        _memory.stat_session("4242 python S 1")
    with pytest.raises(TypeError, match="status text must be a str, not bytes"):
        _memory.status_bytes(b"VmHWM: 1 kB", "VmHWM")  # type: ignore[arg-type]


def test_cgroup_text_is_read_v1_and_v2() -> None:
    assert _memory.usage(1, "157286400\n") == 150 * MIB
    assert _memory.usage(2, "157286400\n") == 150 * MIB
    assert _memory.limit(1, "9223372036854771712\n") is None  # v1's "no limit"
    assert _memory.limit(1, "536870912\n") == 512 * MIB
    assert _memory.limit(2, "max\n") is None
    assert _memory.limit(2, "2147483648\n") == 2 * GIB
    # Inactive file cache is reclaimed before any kill: not counted.
    assert _memory.working_set(1, 150 * MIB, V1_STAT) == 80 * MIB
    assert _memory.working_set(2, 150 * MIB, V2_STAT) == 80 * MIB
    assert _memory.working_set(2, 10 * MIB, V2_STAT) == 0
    assert _memory.oom_group("1\n") and not _memory.oom_group("0\n")
    with pytest.raises(ValueError, match=re.escape("not a limit in memory.limit_in_bytes")):
        _memory.limit(1, "max\n")  # v2's word only
    with pytest.raises(ValueError, match=re.escape("not a usage in memory.current")):
        _memory.usage(2, "lots\n")
    with pytest.raises(ValueError, match=re.escape("no 'inactive_file' in memory.stat")):
        _memory.working_set(2, 1, V1_STAT)
    with pytest.raises(ValueError, match="cgroup version must be 1 or 2, not 3"):
        _memory.usage(3, "1")
    with pytest.raises(ValueError, match=re.escape("not the text of memory.oom.group")):
        _memory.oom_group("yes")


def test_the_oom_group_warning_names_the_fixes() -> None:
    text = _memory.oom_group_warning("/sys/fs/cgroup/kubepods/pod1/c1")
    assert "memory.oom.group=1" in text and "/sys/fs/cgroup/kubepods/pod1/c1" in text
    assert "singleProcessOOMKill" in text and "child cgroups" in text


def test_how_much_was_used_in_words() -> None:
    assert _memory.used(int(1.9 * GIB), 2 * GIB, 3) == (
        "this kernel used at least 1.9 GiB at its peak; its cgroup's limit is 2.0 GiB, shared "
        "with 3 other processes"
    )
    assert _memory.used(300 * MIB, 512 * MIB, 1).endswith("shared with 1 other process")
    assert _memory.used(300 * MIB, 512 * MIB, 0).endswith("limit is 512.0 MiB, its own")
    assert _memory.used(300 * MIB, None, None) == "this kernel used at least 300.0 MiB at its peak"
    assert _memory.used(None, None, None) == ""
    assert _memory.used(256 * MIB, 256 * MIB, 0, exact=True) == (
        "this kernel used 256.0 MiB at its peak; its cgroup's limit is 256.0 MiB, its own"
    )


def test_an_oom_cause_says_how_much_when_known() -> None:
    plain = Cause("oom", signal=9, memory_limit=512 * MIB)
    assert plain.describe() == (
        "was killed by SIGKILL (9): its memory cgroup recorded an out-of-memory kill "
        "(limit 512.0 MiB)"
    )
    known = Cause("oom", signal=9, memory_limit=512 * MIB, memory_peak=450 * MIB, memory_others=2)
    assert known.describe() == (
        "was killed by SIGKILL (9): its memory cgroup recorded an out-of-memory kill: this "
        "kernel used at least 450.0 MiB at its peak; its cgroup's limit is 512.0 MiB, shared "
        "with 2 other processes"
    )
    # Its peak not read lately (a stale reading is no peak): the limit and who shares it.
    unread = Cause("oom", signal=9, memory_limit=512 * MIB, memory_others=1)
    assert unread.describe() == (
        "was killed by SIGKILL (9): its memory cgroup recorded an out-of-memory kill: its "
        "cgroup's limit is 512.0 MiB, shared with 1 other process"
    )


def test_the_death_event_carries_the_peak() -> None:
    cause = Cause("oom", signal=9, memory_limit=GIB, memory_peak=900 * MIB, memory_others=3)
    data = event_data(Death("k", cause, time=0.0, restarting=True))
    assert data["memory_peak"] == 900 * MIB and data["memory_others"] == 3
    assert data["memory_limit"] == GIB
    assert "this kernel used at least 900.0 MiB at its peak" in data["msg"]


def run(
    schedule: MemorySchedule, usage_at: object, limit: int, until: float
) -> tuple[list[tuple[float, int, Warn | Interrupt]], list[float]]:
    """Drive ``schedule`` on a fake clock from 0 to ``until``: its events (time, usage, event)
    and the times it read."""
    now, events, reads = 0.0, [], []
    while now <= until:
        usage = usage_at(now)  # type: ignore[operator]
        reads.append(now)
        said, at = schedule.sample(now, usage, limit)
        assert at > now
        events += [(now, usage, event) for event in said]
        now = at
    return events, reads


@pytest.mark.parametrize("rate", [10 * MIB, 30 * MIB, 60 * MIB, 150 * MIB])
@pytest.mark.parametrize("limit", [512 * MIB, 2 * GIB, 8 * GIB])
def test_a_cell_growing_by_tens_of_mib_a_second_is_warned_before_its_limit(
    rate: int, limit: int
) -> None:
    # Idle at 100 MiB for a minute, then a cell grows by `rate` until the limit (the kill).
    def usage(t: float) -> int:
        return min(100 * MIB + int(max(t - 60, 0) * rate), limit)

    events, _ = run(MemorySchedule(warning=0.9), usage, limit, until=60 + limit / rate)
    [(when, used, event)] = events
    assert isinstance(event, Warn) and event.limit == limit
    assert 0.9 * limit <= used < limit, (when, used / MIB)


def test_an_idle_kernel_is_read_every_five_seconds() -> None:
    _, reads = run(MemorySchedule(), lambda t: 100 * MIB, 2 * GIB, until=600)
    assert len(reads) == 121  # 12 a minute
    # Near its limit, idle (past its warning): read for its peak only, at most 4 times a second.
    events, reads = run(MemorySchedule(), lambda t: 2 * GIB - MIB, 2 * GIB, until=10)
    assert len(events) == 1 and len(reads) == 41
    # No limit: nothing to warn of; read for the peak only, as an idle kernel.
    schedule = MemorySchedule()
    assert schedule.sample(0.0, 10 * GIB, None) == ([], 5.0)


def test_one_warning_an_episode_or_a_cell() -> None:
    schedule = MemorySchedule(warning=0.9, interrupt=0.95)
    limit = 1000 * MIB
    assert schedule.sample(0, 500 * MIB, limit)[0] == []
    assert schedule.sample(1, 910 * MIB, limit)[0] == [Warn(910 * MIB, limit)]
    assert schedule.sample(2, 920 * MIB, limit)[0] == []  # once
    assert schedule.sample(3, 960 * MIB, limit)[0] == [Interrupt(960 * MIB, limit)]
    assert schedule.sample(4, 990 * MIB, limit)[0] == []
    schedule.rearm_now()  # a new cell: warned again; interrupted only if it grows halfway on
    assert schedule.sample(5, 960 * MIB, limit)[0] == [Warn(960 * MIB, limit)]
    assert schedule.sample(6, 994 * MIB, limit)[0] == []
    assert schedule.sample(7, 996 * MIB, limit)[0] == [Interrupt(996 * MIB, limit)]
    # Freed (below 0.9 of each threshold): armed again, at its own level.
    assert schedule.sample(8, 700 * MIB, limit)[0] == []
    assert schedule.sample(9, 905 * MIB, limit)[0] == [Warn(905 * MIB, limit)]
    assert schedule.sample(10, 950 * MIB, limit)[0] == [Interrupt(950 * MIB, limit)]
    assert "uses 905.0 MiB of its 1000.0 MiB limit" in Warn(905 * MIB, limit).words()
    assert Interrupt(960 * MIB, limit).words().startswith("interrupted: ")


def test_no_warning_when_none_is_asked() -> None:
    schedule = MemorySchedule(warning=None)
    assert schedule.sample(0, 999 * MIB, 1000 * MIB)[0] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warning": 1.5}, "warning must be a fraction in (0, 1] or None, not 1.5"),
        ({"interrupt": 0}, "interrupt must be a fraction in (0, 1] or None, not 0"),
        ({"warning": True}, "warning must be a fraction in (0, 1] or None, not True"),
        ({"slowest": -1}, "slowest must be a number > 0, not -1"),
        ({"fastest": 10, "slowest": 1}, "fastest (10) must not exceed slowest (1)"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MemorySchedule(**kwargs)  # type: ignore[arg-type]


def test_bad_readings_are_refused() -> None:
    schedule = MemorySchedule()
    with pytest.raises(ValueError, match="usage must be an int >= 0, not -1"):
        schedule.sample(0, -1, MIB)
    with pytest.raises(ValueError, match="limit must be an int > 0 or None, not 0"):
        schedule.sample(0, 1, 0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("kernel_oom_score_adj", 2000, "kernel_oom_score_adj must be from 0 to 1000, not 2000"),
        ("kernel_oom_score_adj", -1, "kernel_oom_score_adj must be from 0 to 1000, not -1"),
        ("memory_warning", 1.5, "memory_warning must be a fraction in (0, 1] or None, not 1.5"),
        ("memory_interrupt", 0.0, "memory_interrupt must be a fraction in (0, 1] or None, not 0.0"),
    ],
)
def test_bad_memory_settings_are_refused(name: str, value: object, message: str) -> None:
    settings = HeartbeatSettings()
    with pytest.raises(TraitError, match=re.escape(message)):
        setattr(settings, name, value)


def test_the_memory_settings_defaults() -> None:
    settings = HeartbeatSettings()
    assert settings.kernel_oom_score_adj == 1000
    assert settings.memory_warning == 0.9 and settings.memory_interrupt is None
    settings.memory_warning = None  # off
    settings.kernel_oom_score_adj = 0  # left as they are


# -- a kernel moved into another cgroup after its start -------------------------------------------

V1_CGROUP = "9:name=systemd:/\n4:memory:/spawner/{}\n3:cpuset:/\n0::/\n"
V2_CGROUP = "0::/spawner/{}\n"


@pytest.mark.parametrize("text", [V1_CGROUP, V2_CGROUP])
def test_a_kernel_moved_into_another_memory_cgroup_has_moved(text: str) -> None:
    assert _memory.moved(text.format("a"), text.format("kernel-1"))
    assert not _memory.moved(text.format("a"), text.format("a"))


def test_a_move_in_another_controllers_hierarchy_alone_is_none() -> None:
    before = V1_CGROUP.format("a")
    assert not _memory.moved(before, before.replace("3:cpuset:/", "3:cpuset:/pinned"))


def test_an_unreadable_or_torn_cgroup_file_is_no_move() -> None:
    before = V2_CGROUP.format("a")
    assert not _memory.moved(before, None)  # it exited: nothing to follow
    assert not _memory.moved(before, "0::")  # torn: looked at again later
    # Nowhere to read before (no cgroup file then): a memory cgroup now is one to follow.
    assert _memory.moved(None, before)
    assert not _memory.moved(None, "1:cpu:/\n")


def test_where_a_kernel_is_is_looked_at_at_most_every_WHERE_EVERY_seconds() -> None:
    assert _memory.where_due(10.0, None)
    assert not _memory.where_due(10.0 + _memory.WHERE_EVERY / 2, 10.0)
    assert _memory.where_due(10.0 + _memory.WHERE_EVERY, 10.0)
