"""heartbeat._address_space: a kernel's address space against its RLIMIT_AS, from fixture text of
/proc/<pid>/limits and /proc/<pid>/status; its words; its readings on MemorySchedule's fake
clock."""

from __future__ import annotations

import re

import pytest

from heartbeat import _address_space, _memory
from heartbeat._memory import MemorySchedule
from heartbeat.jupyter.websocket import memory_notice

MIB = 1 << 20
GIB = 1 << 30

# As the kernel writes it, trailing spaces and all.
LIMITS = (
    "Limit                     Soft Limit           Hard Limit           Units     \n"
    "Max cpu time              unlimited            unlimited            seconds   \n"
    "Max stack size            8388608              unlimited            bytes     \n"
    "Max address space         {soft:<20} {hard:<20} bytes     \n"
    "Max file locks            unlimited            unlimited            locks     \n"
)

STATUS = "Name:\tpython\nVmPeak:\t  958576 kB\nVmSize:\t  837696 kB\nVmRSS:\t   67888 kB\n"


def test_the_soft_limit_and_the_size_are_read() -> None:
    text = LIMITS.format(soft=2 * GIB, hard="unlimited")
    assert _address_space.soft_limit(text) == 2 * GIB
    assert _address_space.soft_limit(LIMITS.format(soft="unlimited", hard="unlimited")) is None
    # The soft limit binds (allocations fail at it), whatever the hard one.
    assert _address_space.soft_limit(LIMITS.format(soft=GIB, hard=2 * GIB)) == GIB
    assert _address_space.size(STATUS) == 837696 * 1024
    assert _address_space.size("Name:\tpython\nState:\tZ (zombie)\n") is None
    with pytest.raises(ValueError, match="not a limit for Max address space"):
        _address_space.soft_limit(LIMITS.format(soft="lots", hard="unlimited"))
    with pytest.raises(ValueError, match="no 'Max address space' in /proc/<pid>/limits"):
        _address_space.soft_limit("Limit Soft Limit Hard Limit Units\n")
    with pytest.raises(TypeError, match="limits text must be a str, not bytes"):
        _address_space.soft_limit(b"Max address space")  # type: ignore[arg-type]


def test_the_binding_process_is_the_one_nearest_its_own_limit() -> None:
    # RLIMIT_AS is per process: a worker with a lower limit may be nearer it than the kernel.
    assert _address_space.binding([(900 * MIB, 2 * GIB), (400 * MIB, 512 * MIB)]) == (
        400 * MIB,
        512 * MIB,
    )
    assert _address_space.binding([(900 * MIB, None), (100 * MIB, GIB)]) == (100 * MIB, GIB)
    assert _address_space.binding([(None, GIB), (900 * MIB, None)]) is None
    assert _address_space.binding([]) is None
    with pytest.raises(ValueError, match="an address space's size must be an int >= 0, not -1"):
        _address_space.binding([(-1, GIB)])


def test_the_words_say_what_the_limit_is_and_what_happens_at_it() -> None:
    warn = _address_space.Warn(int(1.8 * GIB), 2 * GIB)
    assert warn.words() == (
        "this kernel's address space is 1.8 GiB of its 2.0 GiB limit (RLIMIT_AS, 'ulimit -v'); "
        "at the limit its allocations fail (MemoryError; native code may abort)"
    )
    interrupt = _address_space.Interrupt(int(1.6 * GIB), 2 * GIB)
    assert interrupt.words().startswith(
        "interrupted: this kernel's address space is 1.6 GiB of its 2.0 GiB limit (RLIMIT_AS, "
        "'ulimit -v') (memory_interrupt); interrupted before its allocations fail"
    )
    # Still a warning and an interrupt for whoever is told (the guard, the cell's notice).
    assert isinstance(warn, _memory.Warn) and isinstance(interrupt, _memory.Interrupt)
    assert memory_notice(warn).startswith("KernelMemory: This kernel's address space is 1.8 GiB")


def test_its_readings_warn_once_a_cell_and_interrupt_in_its_words() -> None:
    # An idle ipykernel's ~820 MiB of address space under 'ulimit -v' of 1.5 GiB, a cell growing.
    schedule = MemorySchedule(warning=0.9, interrupt=0.95)
    limit = 1536 * MIB
    told = []
    now, size = 0.0, 820 * MIB
    while size < limit:
        events, at = schedule.sample(now, size, limit)
        told += _address_space.events(events)
        assert at > now
        now, size = at, size + int((at - now) * 200 * MIB) + MIB
    assert [type(e) for e in told] == [_address_space.Warn, _address_space.Interrupt]
    assert re.match(
        r"this kernel's address space is 1\.\d GiB of its 1\.5 GiB limit", told[0].words()
    )
    assert told[0].usage >= 0.9 * limit and told[1].usage >= 0.95 * limit
    events, _ = schedule.sample(now + 1, limit - MIB, limit)
    assert events == []  # once an episode
    schedule.rearm_now()  # a new cell
    events, _ = schedule.sample(now + 2, limit - MIB, limit)
    assert _address_space.events(events) == [_address_space.Warn(limit - MIB, limit)]
