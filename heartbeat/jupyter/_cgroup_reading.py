"""One memory cgroup read on one loop for every kernel whose limit it is.

Kernels that share a cgroup (a JupyterHub pod, a container: the server and all its kernels
under one limit) share one reading of it: each kernel's guard
(``heartbeat.jupyter._memory_watch.MemoryGuard``) joins the :class:`CgroupReading` of its
kernel's binding cgroup on its loop at its start, and leaves it at its stop; the last to leave
closes it (its timer removed). What each reading causes, which kernel is warned or interrupted,
is decided in :class:`heartbeat._memory_share.SharedSchedule`; this reads the cgroup's files
once, asks each member for its kernel's size, sets the loop's timer and tells the members.

Everything here runs on the loop of its members (as their timers do).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Protocol

from tornado.ioloop import IOLoop

from heartbeat._memory import Interrupt, MemorySchedule, Warn
from heartbeat._memory_share import SharedSchedule
from heartbeat.jupyter._kernel_memory import Reader


class Member(Protocol):
    """What a reading asks of a kernel that shares it (a ``MemoryGuard``)."""

    #: The fraction of the limit from which its kernel's size is read (below it, no event).
    full_from: float

    def measured(
        self, usage: int, limit: int | None, near: float | None
    ) -> tuple[bool, int | None]:
        """Whether its kernel still lives, and, from ``near`` bytes of usage on, its size
        (resident memory and swap; None when not read)."""
        ...

    def tell(self, event: Warn | Interrupt) -> None:
        """Tell its owner of ``event``."""
        ...


class CgroupReading:
    """The readings of one memory cgroup (``reader``) on one loop (see the module)."""

    def __init__(self, loop: IOLoop, reader: Reader) -> None:
        self.reader = reader
        self._loop = loop
        self._shared: SharedSchedule[Member] = SharedSchedule()
        self._members: list[Member] = []
        self._next: object = None  # the next reading's timer
        self._ticking = False
        self.closed = False

    @property
    def members(self) -> list[Member]:
        """The kernels it is read for, in the order they joined."""
        return list(self._members)

    def _join(self, member: Member, schedule: MemorySchedule) -> None:
        self._shared.join(member, schedule)
        self._members.append(member)
        if self._ticking:
            self._at(0.0)  # read for it once the reading under way is done
        else:
            self._tick()  # its first reading now, as its own was

    def leave(self, member: Member) -> None:
        """Read no more for ``member`` (one not here is ignored); the last one closes it."""
        if member in self._members:
            self._members.remove(member)
        if self._shared.leave(member) and not self.closed:
            self._close()

    def _close(self) -> None:
        self.closed = True
        if self._next is not None:
            self._loop.remove_timeout(self._next)
            self._next = None
        with _registry:
            found = _readings.get(self._loop)
            if found is not None and found.get(self.reader) is self:
                del found[self.reader]
                if not found:
                    del _readings[self._loop]

    def _at(self, delay: float) -> None:
        if self._next is not None:
            self._loop.remove_timeout(self._next)
        self._next = self._loop.call_later(max(delay, 0.0), self._tick)

    def _tick(self) -> None:
        if self._next is not None:
            # Read before its timer (a new member's first reading): that timer is replaced, not
            # left to read again (a reading for each kernel that joined, every few seconds).
            self._loop.remove_timeout(self._next)
            self._next = None
        if self.closed:
            return
        self._ticking = True
        try:
            at = self._read()
        finally:
            self._ticking = False
        if at is not None and not self.closed and self._next is None:
            self._at(at - time.monotonic())

    def _read(self) -> float | None:
        # One reading: the cgroup's files once, each member's kernel's size near the limit,
        # the events decided for all, each told to its member. When to read next (None: never).
        now = time.monotonic()
        limit = self.reader.limit()
        members = list(self._members)
        # Far below every threshold (and the limit), an idle cgroup costs two small reads: its
        # cache and its kernels' sizes are read only nearer (the lowest member's full_from).
        near = None if limit is None else min(m.full_from for m in members) * limit
        usage = self.reader.usage(exact_from=near if near is not None else float("inf"))
        if usage is None:
            return None  # its cgroup is gone: nothing more to read
        sizes: dict[Member, int | None] = {}
        for member in members:
            alive, size = member.measured(usage, limit, near)
            if alive:
                sizes[member] = size
            else:
                self.leave(member)  # its kernel exited: nothing more to read for it
        if self.closed:
            return None
        events, at = self._shared.sample(now, usage, limit, sizes)
        for member, told in events.items():
            for event in told:
                if member in self._shared:  # not stopped by whoever was told before
                    member.tell(event)
        return at


# The readings of each loop, by the cgroup they read; changed under _registry (each loop's own
# on its thread, but loops run on several: a provisioner's under a blocking manager).
_registry = threading.Lock()
_readings: weakref.WeakKeyDictionary[IOLoop, dict[Reader, CgroupReading]] = (
    weakref.WeakKeyDictionary()
)


def join_reading(reader: Reader, member: Member, schedule: MemorySchedule) -> CgroupReading:
    """The reading of ``reader``'s cgroup on the current loop, made if none, joined by
    ``member`` with its ``schedule`` (and read at once); leave it with
    :meth:`CgroupReading.leave`."""
    loop = IOLoop.current()
    with _registry:
        found = _readings.setdefault(loop, {})
        reading = found.get(reader)
        if reading is None:
            reading = found[reader] = CgroupReading(loop, reader)
    reading._join(member, schedule)
    return reading


def readings(loop: IOLoop | None = None) -> list[CgroupReading]:
    """The open readings of ``loop`` (the current one by default)."""
    with _registry:
        return list(_readings.get(loop if loop is not None else IOLoop.current(), {}).values())
