"""heartbeat._memory_share: kernels that share one memory cgroup, read once for all: each warned
with how much it uses, the interrupt only for the largest; on a fake clock, step by step."""

from __future__ import annotations

import pytest

from heartbeat._memory import Interrupt, MemorySchedule, Warn
from heartbeat._memory_share import SharedSchedule, largest

MIB = 1 << 20
GIB = 1 << 30
LIMIT = 2 * GIB


def test_the_largest_is_the_oom_killers_choice() -> None:
    assert largest({"a": 300 * MIB, "b": 1 * GIB, "c": 10 * MIB}) == "b"
    assert largest({"a": None, "b": 5}) == "b"  # unknown: not a candidate
    assert largest({"a": 7, "b": 7}) == "a"  # a tie: the first given
    assert largest({"a": None}) is None
    assert largest({}) is None
    with pytest.raises(ValueError, match=r"a kernel's size must be an int >= 0 or None, not -1"):
        largest({"a": -1})
    with pytest.raises(ValueError, match="not True"):
        largest({"a": True})


def test_one_kernel_is_told_as_its_own_schedule_tells() -> None:
    shared: SharedSchedule[str] = SharedSchedule()
    shared.join("a", MemorySchedule(warning=0.9, interrupt=0.95))
    alone = MemorySchedule(warning=0.9, interrupt=0.95)
    for now, usage in ((0.0, GIB), (1.0, int(1.85 * GIB)), (2.0, int(1.95 * GIB))):
        events, at = shared.sample(now, usage, LIMIT, {"a": GIB})
        assert (events["a"], at) == alone.sample(now, usage, LIMIT)
    # Its words as ever: nothing of sharing.
    assert (
        Warn(int(1.85 * GIB), LIMIT)
        .words()
        .startswith("this kernel's memory cgroup uses 1.8 GiB of its 2.0 GiB limit; at the limit")
    )


def test_each_sharer_is_warned_with_how_much_it_uses() -> None:
    shared: SharedSchedule[str] = SharedSchedule()
    shared.join("a", MemorySchedule(warning=0.9))
    shared.join("b", MemorySchedule(warning=0.9))
    events, _ = shared.sample(0.0, GIB, LIMIT, {})  # far below: no size read, nothing told
    assert events == {"a": [], "b": []}
    usage = int(1.85 * GIB)
    events, _ = shared.sample(1.0, usage, LIMIT, {"a": int(1.2 * GIB), "b": 300 * MIB})
    assert events == {
        "a": [Warn(usage, LIMIT, own=int(1.2 * GIB), sharers=1)],
        "b": [Warn(usage, LIMIT, own=300 * MIB, sharers=1)],
    }
    assert events["a"][0].words() == (
        "this kernel's memory cgroup, shared with 1 other kernel, uses 1.8 GiB of its 2.0 GiB "
        "limit; this kernel uses 1.2 GiB of it; at the limit the largest kernel is killed by "
        "the out-of-memory killer"
    )
    # A size not read: the sharing said, not how much.
    assert (
        Warn(usage, LIMIT, own=None, sharers=2)
        .words()
        .startswith(
            "this kernel's memory cgroup, shared with 2 other kernels, uses 1.8 GiB of its 2.0 GiB "
            "limit; at the limit"
        )
    )
    # Once an episode each; a new cell of b's warns b again, not a.
    assert shared.sample(2.0, usage, LIMIT, {"a": GIB, "b": GIB}) == ({"a": [], "b": []}, 2.25)
    shared_b = MemorySchedule(warning=0.9)
    shared.leave("b")
    shared.join("b", shared_b)
    shared_b.sample(2.5, usage, LIMIT)  # warned already, as b was
    shared_b.rearm_now()
    events, _ = shared.sample(3.0, usage, LIMIT, {"a": GIB, "b": GIB})
    assert events == {"a": [], "b": [Warn(usage, LIMIT, own=GIB, sharers=1)]}


def test_only_the_largest_is_interrupted_and_another_once_it_is_the_largest() -> None:
    shared: SharedSchedule[str] = SharedSchedule()
    for key in "abc":
        shared.join(key, MemorySchedule(warning=None, interrupt=0.8))
    usage = int(1.7 * GIB)
    # a grows; b and c (a long computation each) do not.
    sizes = {"a": GIB, "b": 400 * MIB, "c": 200 * MIB}
    events, _ = shared.sample(0.0, usage, LIMIT, sizes)
    assert events == {"a": [Interrupt(usage, LIMIT, own=GIB, sharers=2)], "b": [], "c": []}
    assert events["a"][0].words() == (
        "interrupted: this kernel's memory cgroup, shared with 2 other kernels, uses 1.7 GiB of "
        "its 2.0 GiB limit (memory_interrupt); this kernel uses 1.0 GiB of it, the most of them; "
        "interrupted before the out-of-memory killer would kill the kernel"
    )
    # Still above, a still the largest (its cell's variables kept): nobody again.
    events, _ = shared.sample(0.25, usage, LIMIT, sizes)
    assert events == {"a": [], "b": [], "c": []}
    # b grows past a: b is the OOM killer's choice now, and is interrupted; a not again.
    sizes = {"a": GIB, "b": int(1.1 * GIB), "c": 200 * MIB}
    events, _ = shared.sample(0.5, usage, LIMIT, sizes)
    assert events == {
        "a": [],
        "b": [Interrupt(usage, LIMIT, own=int(1.1 * GIB), sharers=2)],
        "c": [],
    }
    # Back below (memory freed), then up again: re-armed for all, the largest alone again.
    shared.sample(1.0, GIB, LIMIT, sizes)
    sizes = {"a": 100 * MIB, "b": 100 * MIB, "c": int(1.5 * GIB)}
    events, _ = shared.sample(2.0, usage, LIMIT, sizes)
    assert [key for key, told in events.items() if told] == ["c"]


def test_nobody_is_interrupted_where_the_largest_did_not_opt_in_or_no_size_is_known() -> None:
    shared: SharedSchedule[str] = SharedSchedule()
    shared.join("a", MemorySchedule(warning=None, interrupt=None))  # never interrupted
    shared.join("b", MemorySchedule(warning=None, interrupt=0.8))
    usage = int(1.7 * GIB)
    events, _ = shared.sample(0.0, usage, LIMIT, {"a": GIB, "b": 100 * MIB})
    assert events == {"a": [], "b": []}  # b is not the one the OOM killer would take
    events, _ = shared.sample(0.25, usage, LIMIT, {})  # sizes unread: nobody chosen
    assert events == {"a": [], "b": []}
    events, _ = shared.sample(0.5, usage, LIMIT, {"a": 50 * MIB, "b": 100 * MIB})
    assert events == {"a": [], "b": [Interrupt(usage, LIMIT, own=100 * MIB, sharers=1)]}


def test_the_next_reading_is_the_soonest_asked_for() -> None:
    shared: SharedSchedule[str] = SharedSchedule()
    shared.join("idle", MemorySchedule(warning=None))  # read every 5 s
    _, at = shared.sample(0.0, 100 * MIB, LIMIT, {})
    assert at == 5.0
    eager = MemorySchedule(warning=0.9, slowest=1.0)
    shared.join("eager", eager)
    _, at = shared.sample(5.0, 100 * MIB, LIMIT, {})
    assert at == 6.0


def test_joining_and_leaving() -> None:
    shared: SharedSchedule[str] = SharedSchedule()
    schedule = MemorySchedule()
    shared.join("a", schedule)
    shared.join("b", MemorySchedule())
    assert len(shared) == 2 and "a" in shared
    with pytest.raises(ValueError, match="'a' already shares this cgroup's readings"):
        shared.join("a", schedule)
    with pytest.raises(TypeError, match="schedule must be a MemorySchedule, not float"):
        shared.join("c", 0.9)  # type: ignore[arg-type]
    assert shared.leave("a") is False
    assert shared.leave("a") is False  # gone already: ignored
    assert shared.leave("b") is True  # the last one
    with pytest.raises(ValueError, match="no kernel shares this cgroup's readings"):
        shared.sample(0.0, 0, LIMIT, {})
