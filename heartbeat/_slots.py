"""When a pool wakes, and for whom: ping phases shared by groups of members, and members
waiting in slots on a grid of one batch.

Pure bookkeeping, no clock and no loop (the pool supplies both).

Phases: a ping burst costs much less per ping than the same pings one by one (one wake-up of
zmq's I/O thread, one read of many replies), so members with the same interval share a ping
phase, in groups of at most ``size`` so that one burst never holds the loop for long. A new
member joins the oldest group with room, or opens a group whose phase is its own start.

Slots: a member due at ``deadline``
waits in the slot that opens at the first multiple of ``step`` at or after it, so every member
due within the same batch shares one wake-up, and two wake-ups are at least ``step`` apart. A
member re-armed leaves its old slot at once (slots are dicts, which also keep arrival order);
a slot every member has left is dropped rather than woken for.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

from heartbeat._judge import on_grid

M = TypeVar("M", bound=Hashable)


class Slots(Generic[M]):
    """Members grouped by the time their wake-up slot opens."""

    __slots__ = ("_members", "_times")

    def __init__(self) -> None:
        self._members: dict[float, dict[M, None]] = {}
        self._times: list[float] = []  # a heap of the keys of _members

    def __len__(self) -> int:
        """How many members wait."""
        return sum(len(members) for members in self._members.values())

    def add(self, member: M, deadline: float, step: float) -> float:
        """Put ``member`` in the slot for ``deadline``; returns when that slot opens.

        ``step`` is the grid (the batch); 0 gives every distinct deadline its own slot. The
        caller removes the member from any earlier slot first.
        """
        slot = on_grid(deadline, step) if step > 0 else deadline
        members = self._members.get(slot)
        if members is None:
            members = self._members[slot] = {}
            heapq.heappush(self._times, slot)
        members[member] = None
        return slot

    def remove(self, member: M, slot: float) -> bool:
        """Take ``member`` out of ``slot`` (no error if it is not there).

        True if that left the slot empty: nobody waits for it to open any more.
        """
        members = self._members.get(slot)
        if members is None:
            return False
        members.pop(member, None)
        return not members

    def first(self) -> float | None:
        """When the earliest slot with a member in it opens, or None."""
        times, slots = self._times, self._members
        while times and not slots.get(times[0]):
            slots.pop(heapq.heappop(times), None)
        return times[0] if times else None

    def pop_due(self, now: float) -> list[M]:
        """Remove and return the members of the earliest slot open at ``now``, or []."""
        times, slots = self._times, self._members
        while times and times[0] <= now:
            members = slots.pop(heapq.heappop(times), None)
            if members:
                return list(members)
        return []

    def clear(self) -> None:
        """Forget every member."""
        self._members.clear()
        self._times.clear()


class _Group:
    __slots__ = ("count", "phase")

    def __init__(self, phase: float) -> None:
        self.phase = phase
        self.count = 0


class Phases(Generic[M]):
    """Ping phases shared by groups of at most ``size`` members with the same interval."""

    __slots__ = ("_groups", "_of", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._groups: dict[float, list[_Group]] = {}  # by interval, oldest first
        self._of: dict[M, tuple[float, _Group]] = {}

    def join(self, member: M, interval: float, now: float) -> float:
        """The phase ``member`` pings on: an open group's, or ``now`` for a new group."""
        self.leave(member)
        groups = self._groups.setdefault(interval, [])
        group = next((g for g in groups if g.count < self._size), None)
        if group is None:
            group = _Group(now)
            groups.append(group)
        group.count += 1
        self._of[member] = (interval, group)
        return group.phase

    def leave(self, member: M) -> None:
        """``member`` no longer pings: its place is free for the next to join."""
        found = self._of.pop(member, None)
        if found is None:
            return
        interval, group = found
        group.count -= 1
        if not group.count:
            groups = self._groups[interval]
            groups.remove(group)
            if not groups:
                del self._groups[interval]

    def clear(self) -> None:
        """Forget every member and group."""
        self._groups.clear()
        self._of.clear()
