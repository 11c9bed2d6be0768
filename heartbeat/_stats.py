"""Round-trip statistics over a recent window of beats."""

from __future__ import annotations

from array import array
from dataclasses import dataclass


@dataclass(frozen=True)
class RttStats:
    """Round-trip times in seconds over the last 256 beats; None before any beat.

    ``count`` counts every beat of the run, ``late`` the beats whose round trip took longer
    than the ping interval (the reply came after the next ping was due).
    """

    count: int
    late: int
    min: float | None
    median: float | None
    p99: float | None
    max: float | None


class RttWindow:
    """Keeps the last ``size`` round-trip times and summarises them.

    A ring of C doubles: 8 bytes a beat, so a process watching 10,000 kernels spends 20 MB on
    their statistics, not hundreds.
    """

    __slots__ = ("_count", "_late", "_next", "_rtts", "_size")

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._rtts = array("d")
        self._next = 0
        self._count = 0
        self._late = 0

    def clear(self) -> None:
        """Forget everything (a new run)."""
        self._rtts = array("d")
        self._next = 0
        self._count = 0
        self._late = 0

    def add(self, rtt: float | None, *, late: bool) -> None:
        """Record one beat; ``rtt`` None counts the beat without a time."""
        self._count += 1
        self._late += late
        if rtt is None:
            return
        if len(self._rtts) < self._size:
            self._rtts.append(rtt)
        else:
            self._rtts[self._next] = rtt
            self._next = (self._next + 1) % self._size

    def summary(self) -> RttStats:
        """The statistics now."""
        ordered = sorted(self._rtts)
        if not ordered:
            return RttStats(self._count, self._late, None, None, None, None)
        n = len(ordered)
        return RttStats(
            count=self._count,
            late=self._late,
            min=ordered[0],
            median=ordered[n // 2],
            p99=ordered[min(n - 1, (99 * n) // 100)],
            max=ordered[-1],
        )
