"""A kernel's address space against its ``RLIMIT_AS``, decided from plain data (sans-IO, as
``heartbeat._memory``).

A kernel started under an address-space limit (``ulimit -v`` in a wrapper script, ``prlimit``,
a batch system's limit) is not killed at it: its allocations fail (Python raises
``MemoryError``; native code may abort). The limit is per process, so a kernel's is that of its
process nearest its own soft limit (:func:`binding`), its address space that process's
``VmSize``. The caller (``heartbeat.jupyter._memory_watch``) reads ``/proc/<pid>/limits`` and
``/proc/<pid>/status`` and gives the text here; each reading goes to its own
:class:`heartbeat._memory.MemorySchedule` (as a cgroup's), whose events :func:`events` turns
into this limit's (:class:`Warn`, :class:`Interrupt`: the cgroup's, with this limit's words).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from heartbeat import _memory

_KEY = "Max address space"


def soft_limit(text: str) -> int | None:
    """The soft ``Max address space`` of ``/proc/<pid>/limits`` in bytes; None: unlimited."""
    if not isinstance(text, str):
        raise TypeError(f"limits text must be a str, not {type(text).__name__}")
    for line in text.splitlines():
        if line.startswith(_KEY):
            fields = line[len(_KEY) :].split()
            if len(fields) >= 2 and fields[0] == "unlimited":
                return None
            if len(fields) < 2 or not fields[0].isdigit():
                raise ValueError(f"not a limit for {_KEY} in /proc/<pid>/limits: {line!r}")
            return int(fields[0])
    raise ValueError(f"no {_KEY!r} in /proc/<pid>/limits: {text[:80]!r}")


def size(status: str) -> int | None:
    """A process's address space (``VmSize`` of ``/proc/<pid>/status``) in bytes; None when it
    has none (a zombie)."""
    return _memory.status_bytes(status, "VmSize")


def binding(processes: Iterable[tuple[int | None, int | None]]) -> tuple[int, int] | None:
    """Of a kernel's processes (each its address space and soft limit, None where unknown or
    unlimited), the one nearest its limit: its ``(size, limit)``; None when none has both."""
    best: tuple[int, int] | None = None
    for used, limit in processes:
        for what, value in (("size", used), ("limit", limit)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise ValueError(f"an address space's {what} must be an int >= 0, not {value!r}")
        if used is None or not limit:
            continue
        if best is None or used * best[1] > best[0] * limit:  # used/limit > best's, exactly
            best = (used, limit)
    return best


def _words(usage: int, limit: int) -> str:
    return (
        f"this kernel's address space is {_memory._size(usage)} of its "
        f"{_memory._size(limit)} limit (RLIMIT_AS, 'ulimit -v')"
    )


@dataclass(frozen=True)
class Warn(_memory.Warn):
    """The address space passed the warning fraction of its ``RLIMIT_AS``."""

    def words(self) -> str:
        """The notice: "this kernel's address space is 1.8 GiB of its 2.0 GiB limit
        (RLIMIT_AS, 'ulimit -v'); at the limit its allocations fail (MemoryError)"."""
        return (
            f"{_words(self.usage, self.limit)}; at the limit its allocations fail (MemoryError; "
            "native code may abort)"
        )


@dataclass(frozen=True)
class Interrupt(_memory.Interrupt):
    """The address space passed the interrupt fraction of its ``RLIMIT_AS``."""

    def words(self) -> str:
        """The notice: why the cell was interrupted."""
        return (
            f"interrupted: {_words(self.usage, self.limit)} (memory_interrupt); interrupted "
            "before its allocations fail at the limit (MemoryError)"
        )


def events(
    found: Iterable[_memory.Warn | _memory.Interrupt],
) -> list[_memory.Warn | _memory.Interrupt]:
    """A :class:`heartbeat._memory.MemorySchedule`'s events, of an address space's readings,
    as this limit's (:class:`Warn`, :class:`Interrupt`: still the cgroup's kinds, for whoever
    is told of them)."""
    out: list[_memory.Warn | _memory.Interrupt] = []
    for event in found:
        kind = Interrupt if isinstance(event, _memory.Interrupt) else Warn
        out.append(kind(event.usage, event.limit))
    return out
