"""Several kernels in one memory cgroup, decided from plain data (sans-IO, as
``heartbeat._memory``).

Where kernels share a cgroup (a JupyterHub pod or a container: the server and all its kernels
under one limit), its usage is every kernel's. It is read once for all of them
(``heartbeat.jupyter._cgroup_reading``), and each reading given here with how much each kernel
uses (its processes' resident memory and swap, as the out-of-memory killer counts them):
:class:`SharedSchedule` gives each kernel its own warning (with how much it uses of the
total), and the interrupt to one kernel only, the one the out-of-memory killer would choose
among them (:func:`largest`): interrupting every kernel would stop cells that do not grow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Generic, TypeVar

from heartbeat._memory import Interrupt, MemorySchedule, Warn

K = TypeVar("K")  # hashable: a dict key


def largest(sizes: Mapping[K, int | None]) -> K | None:
    """The kernel the out-of-memory killer would choose among ``sizes`` (each kernel's resident
    memory and swap in bytes, None where unknown): the largest, all of them having the same
    ``oom_score_adj``; on a tie the first given. None when no size is known."""
    best: K | None = None
    most = -1
    for key, size in sizes.items():
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"a kernel's size must be an int >= 0 or None, not {size!r}")
        if size > most:
            best, most = key, size
    return best


class SharedSchedule(Generic[K]):
    """The readings of one memory cgroup, for the kernels whose limit it is (times in, events
    out). Each kernel keeps its own :class:`heartbeat._memory.MemorySchedule` (its settings,
    its warning once an episode or a cell) and is given every reading; the next reading is
    the soonest any of them asks for.

    With one kernel, its schedule's events as they are. With several, each event says how
    much its kernel uses of the total and how many others share it; an interrupt goes only to
    the largest kernel (:func:`largest`): the others' are spared
    (:meth:`heartbeat._memory.MemorySchedule.spare`), due again should one become the largest.
    """

    def __init__(self) -> None:
        self._members: dict[K, MemorySchedule] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def join(self, key: K, schedule: MemorySchedule) -> None:
        """Give ``key``'s kernel, with its ``schedule``, the readings from the next on."""
        if not isinstance(schedule, MemorySchedule):
            raise TypeError(f"schedule must be a MemorySchedule, not {type(schedule).__name__}")
        if key in self._members:
            raise ValueError(f"{key!r} already shares this cgroup's readings")
        self._members[key] = schedule

    def leave(self, key: K) -> bool:
        """No more readings for ``key`` (one not here is ignored); whether none is left."""
        self._members.pop(key, None)
        return not self._members

    def sample(
        self, now: float, usage: int, limit: int | None, sizes: Mapping[K, int | None]
    ) -> tuple[dict[K, list[Warn | Interrupt]], float]:
        """One reading at ``now`` for every kernel here: the events of each, and when to read
        next. ``sizes``: each kernel's resident memory and swap, where read (a kernel left
        out: unknown)."""
        if not self._members:
            raise ValueError("no kernel shares this cgroup's readings: nothing to sample")
        results = {key: s.sample(now, usage, limit) for key, s in self._members.items()}
        at = min(next_at for _, next_at in results.values())
        sharers = len(results) - 1
        if not sharers:
            return {key: events for key, (events, _) in results.items()}, at
        victim = largest({key: sizes.get(key) for key in results})
        told: dict[K, list[Warn | Interrupt]] = {}
        for key, (events, _) in results.items():
            told[key] = []
            for event in events:
                if isinstance(event, Interrupt) and key != victim:
                    # Not the one the OOM killer would take: its cell is left to run.
                    self._members[key].spare()
                    continue
                told[key].append(dataclasses.replace(event, own=sizes.get(key), sharers=sharers))
        return told, at
