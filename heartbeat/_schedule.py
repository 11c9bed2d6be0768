"""When a pool's one timer wakes, and for whom: pure bookkeeping, no clock and no loop.

The pool supplies the times; this module decides which member is judged at which wake-up.

- :class:`Phases`: a ping burst costs much less per ping than the same pings one by one (one
  wake-up of zmq's I/O thread, one read of many replies), so members with the same interval
  share a ping phase, in groups of at most ``size`` so that one burst never holds the loop for
  long. A new member joins the oldest group with room, or opens a group at its own start.
- :class:`Batches`: a member due at ``deadline`` waits in the batch that opens at the first
  multiple of ``step`` at or after it, so every member due within one batch shares one wake-up,
  and two wake-ups are at least ``step`` apart. A member re-armed leaves its old batch at once
  (batches are dicts, which also keep arrival order); a batch every member has left is dropped
  rather than woken for.
- :class:`PoolSchedule`: both, for one pool: the batch in force, the one time its timer must be
  set for (``next_wake``), and the members to judge at a wake-up, a bounded number at a time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from heartbeat._judge import on_grid

M = TypeVar("M", bound=Hashable)


class Batches(Generic[M]):
    """Members grouped by the time their batch opens."""

    __slots__ = ("_members", "_times")

    def __init__(self) -> None:
        self._members: dict[float, dict[M, None]] = {}
        self._times: list[float] = []  # a heap of the keys of _members

    def __len__(self) -> int:
        """How many members wait."""
        return sum(len(members) for members in self._members.values())

    def add(self, member: M, deadline: float, step: float) -> float:
        """Put ``member`` in the batch for ``deadline``; returns when that batch opens.

        ``step`` is the grid; 0 gives every distinct deadline its own batch. The caller removes
        the member from any earlier batch first.
        """
        opens = on_grid(deadline, step) if step > 0 else deadline
        members = self._members.get(opens)
        if members is None:
            members = self._members[opens] = {}
            heapq.heappush(self._times, opens)
        members[member] = None
        return opens

    def remove(self, member: M, opens: float) -> None:
        """Take ``member`` out of the batch that opens at ``opens`` (no error if not there)."""
        members = self._members.get(opens)
        if members is not None:
            members.pop(member, None)

    def first(self) -> float | None:
        """When the earliest batch with a member in it opens, or None."""
        times, batches = self._times, self._members
        while times and not batches.get(times[0]):
            batches.pop(heapq.heappop(times), None)
        return times[0] if times else None

    def pop_due(self, now: float, most: int | None = None) -> list[M]:
        """Remove and return the members of the earliest batch open at ``now`` (at most
        ``most`` of them, in the order they came; the rest stay due), or []."""
        opens = self.first()
        if opens is None or opens > now:
            return []
        members = self._members[opens]
        if most is None or len(members) <= most:
            del self._members[opens]
            heapq.heappop(self._times)
            return list(members)
        taken = []
        for member in members:
            taken.append(member)
            if len(taken) == most:
                break
        for member in taken:
            del members[member]
        return taken

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


class PoolSchedule(Generic[M]):
    """Which of a pool's members wakes when, on the pool's one timer.

    ``batch``: seconds by which a wake-up may come late so that members due close together
    share it; None for the default, a tenth of the shortest interval among the members (0.1 s
    for ``time_to_dead`` 2 s), which is never more than a fifth of a member's stall threshold.
    """

    __slots__ = ("_batch", "_batches", "_members", "_pending", "_phases", "_step")

    def __init__(self, batch: float | None, phase_size: int) -> None:
        self._batch = batch
        # The batch in force: the one asked for, or a tenth of the shortest member interval.
        self._step = float("inf") if batch is None else batch
        self._batches: Batches[M] = Batches()
        self._phases: Phases[M] = Phases(phase_size)
        # Every member, with when its batch opens (None: in no batch).
        self._members: dict[M, float | None] = {}
        # Handed out by due(), and neither re-armed nor gone since.
        self._pending: set[M] = set()

    @property
    def batch(self) -> float | None:
        """The batch in force, or None while the default is asked for and no member joined."""
        return None if self._step == float("inf") else self._step

    def __len__(self) -> int:
        """How many members there are."""
        return len(self._members)

    def check(self, name: str, time_to_dead: float, interval: float, stall_after: float) -> None:
        """ValueError if an explicit batch would make a member's own timer look stalled."""
        most = stall_after / 2
        if self._batch is not None and self._batch > most:
            raise ValueError(
                f"this pool's batch of {self._batch:g} s is too coarse for {name} "
                f"(time_to_dead {time_to_dead:g} s, interval {interval:g} s): "
                f"at most {most:g} s, half its stall threshold; use a pool with a finer batch"
            )

    def join(self, member: M, interval: float, now: float) -> float:
        """A new member: returns the phase it pings on."""
        if self._batch is None:
            # Never coarser than a fifth of any member's stall threshold (interval / 10 <=
            # (time_to_dead - interval) / 10, as interval <= time_to_dead / 2).
            self._step = min(self._step, interval / 10)
        self._members[member] = None
        return self._phases.join(member, interval, now)

    def leave(self, member: M) -> None:
        """A member that stops; once nobody is left, the default batch is chosen afresh."""
        self._unschedule(member)
        self._members.pop(member, None)
        self._pending.discard(member)
        self._phases.leave(member)
        if not self._members:
            self.clear()

    def clear(self) -> None:
        """Forget every member."""
        self._batches.clear()
        self._phases.clear()
        self._members.clear()
        self._pending.clear()
        if self._batch is None:
            self._step = float("inf")

    def wake_at(self, member: M, deadline: float) -> None:
        """``member`` needs judging at ``deadline`` (replacing the time it asked before)."""
        self._unschedule(member)
        self._pending.discard(member)
        self._members[member] = self._batches.add(member, deadline, self._step)

    @property
    def next_wake(self) -> float | None:
        """When the pool's timer must fire next (the earliest batch with a member), or None."""
        return self._batches.first()

    def due(self, now: float, most: int) -> list[M]:
        """Members to judge now: at most ``most`` of the earliest batch open at ``now``.

        Between two calls the pool reads its socket, so a reply that arrives while a long
        batch is judged is read, not judged missing. A member handed out is ``pending`` until
        it is re-armed or leaves.
        """
        members = self._batches.pop_due(now, most)
        for member in members:
            self._members[member] = None
        self._pending.update(members)
        return members

    def wake(
        self,
        clock: Callable[[], float],
        read: Callable[[], bool],
        judge: Callable[[M, float], object],
        most: int,
    ) -> None:
        """One wake-up of the pool's timer: ``read()`` every reply waiting (False: the pool
        has no socket left, stop), then ``judge(member, now)`` each member due, at most
        ``most`` between two reads (flush before judging holds inside a long batch too).

        If judging a member raises, it and the rest handed out with it wait for the next
        batch (nobody drops off the clock) and the error goes on to the caller.
        """
        if not read():
            return
        now = clock()
        while members := self.due(now, most):
            try:
                for member in members:
                    if self.pending(member):  # not gone or re-armed meanwhile
                        judge(member, now)
            except BaseException:
                for rest in members:
                    if self.pending(rest):
                        self.wake_at(rest, now)
                raise
            if not read():
                return
            now = clock()

    def pending(self, member: M) -> bool:
        """True if ``member`` was handed out by ``due`` and has neither re-armed nor left."""
        return member in self._pending

    def _unschedule(self, member: M) -> None:
        opens = self._members.get(member)
        if opens is not None:
            self._batches.remove(member, opens)
