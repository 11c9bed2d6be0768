"""Round-trip statistics over a recent window of beats."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RttStats:
    """Round-trip times in seconds over the last ``window`` beats; None before any beat.

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
    """Keeps the last ``size`` round-trip times and summarises them."""

    def __init__(self, size: int = 1000) -> None:
        self._rtts: deque[float] = deque(maxlen=size)
        self._count = 0
        self._late = 0

    def clear(self) -> None:
        """Forget everything (a new run)."""
        self._rtts.clear()
        self._count = 0
        self._late = 0

    def add(self, rtt: float | None, *, late: bool) -> None:
        """Record one beat; ``rtt`` None counts the beat without a time."""
        self._count += 1
        self._late += late
        if rtt is not None:
            self._rtts.append(rtt)

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
