"""What every monitor of a process saw, counted for metrics (sans-IO, as ``heartbeat._judge``).

A :class:`Tally` holds plain numbers: kernel deaths by cause, a histogram of round-trip times on
fixed buckets, the monitor's own stalls forgiven, and how many monitors are watching and how
many of them find their heart late. Monitors given the same tally (``HeartMonitor(...,
tally=t)``) add to it as their Judge's events come; whoever exposes metrics reads it when asked
(``heartbeat.jupyter.metrics``, for Prometheus). Nothing here knows of Prometheus, a clock or a
lock: a process watching 10,000 hearts adds a beat to it 10,000 times a second, on one loop.
"""

from __future__ import annotations

import itertools
import typing
from bisect import bisect_left
from collections.abc import Sequence

from heartbeat._cause import Kind
from heartbeat._judge import State

#: Upper bounds (seconds) of the round-trip histogram's buckets. A heart on this machine answers
#: in well under a millisecond, one across a network in milliseconds, and one that answers at all
#: within the default ``time_to_dead`` of 3 s: the buckets cover all three.
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: Upper bounds (bytes) of the histogram of kernels' peak memory at an out-of-memory death: from
#: a small container's limit to a large machine's.
OOM_PEAK_BUCKETS = tuple(
    float(m << 20) for m in (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
)

#: Every cause a death is counted under (``heartbeat._cause.Kind``), each from zero.
KINDS: tuple[Kind, ...] = typing.get_args(Kind)

_WATCHING = frozenset((State.STARTING, State.BEATING, State.LATE))


class Tally:
    """Counts, for every monitor given it, what their Judges said; read whenever asked.

    Plain numbers, no locks: monitors add to it on their loop's thread. A reader on another
    thread (an exporter's own) may see one beat in the histogram's buckets before its sum.

    Parameters
    ----------
    buckets:
        Increasing upper bounds (seconds) of the round-trip histogram; a last bucket, with no
        bound, takes the rest. Default :data:`RTT_BUCKETS`.
    """

    # __slots__: touched on every beat of every monitor.
    __slots__ = (
        "_bounds",
        "_counts",
        "_oom_counts",
        "deaths",
        "late",
        "oom_peak_sum",
        "rtt_sum",
        "stalls",
        "watched",
    )

    def __init__(self, buckets: Sequence[float] = RTT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"buckets must be increasing upper bounds, got {buckets!r}")
        self._bounds = bounds
        # Beats a bucket (not cumulative: one increment a beat); the last one has no bound.
        self._counts = [0] * (len(bounds) + 1)
        #: Seconds of every round trip observed, added up.
        self.rtt_sum = 0.0
        #: Deaths by cause (``Kind``), every kind present from zero.
        self.deaths: dict[str, int] = dict.fromkeys(KINDS, 0)
        #: How often a monitor's own stalled loop was forgiven.
        self.stalls = 0
        #: Monitors watching now (starting, beating or late).
        self.watched = 0
        #: Of those, the ones whose heart is late.
        self.late = 0
        # Out-of-memory deaths whose peak was read, by OOM_PEAK_BUCKETS (the last: beyond).
        self._oom_counts = [0] * (len(OOM_PEAK_BUCKETS) + 1)
        #: Bytes of those deaths' peaks, added up.
        self.oom_peak_sum = 0.0

    def observe_rtt(self, rtt: float) -> None:
        """One beat's round trip (seconds)."""
        # bisect_left: a time equal to a bound is in that bound's bucket (Prometheus' "le").
        self._counts[bisect_left(self._bounds, rtt)] += 1
        self.rtt_sum += rtt

    def stalled(self) -> None:
        """A monitor forgave its own stalled loop (the Judge's ``Stall``)."""
        self.stalls += 1

    def moved(self, old: State, new: State) -> None:
        """A monitor that was counted as ``old`` is now ``new``.

        ``old`` is what this tally last counted it as, which the monitor remembers: so the
        gauges stay exact even where an event of its Judge went undispatched.
        """
        self.watched += (new in _WATCHING) - (old in _WATCHING)
        self.late += (new is State.LATE) - (old is State.LATE)

    def died(self, kind: str) -> None:
        """A kernel died of a cause of this kind (``Cause.kind``)."""
        self.deaths[kind] = self.deaths.get(kind, 0) + 1

    def oom_peak(self, peak: int) -> None:
        """An out-of-memory death whose kernel was seen to use ``peak`` bytes at most."""
        self._oom_counts[bisect_left(OOM_PEAK_BUCKETS, peak)] += 1
        self.oom_peak_sum += peak

    def oom_peak_buckets(self) -> list[tuple[float, int]]:
        """The peak histogram as Prometheus has it (see :meth:`rtt_buckets`)."""
        return _cumulative(OOM_PEAK_BUCKETS, self._oom_counts)

    @property
    def rtt_count(self) -> int:
        """Round trips observed."""
        return sum(self._counts)

    def rtt_buckets(self) -> list[tuple[float, int]]:
        """The histogram as Prometheus has it: ``(upper bound, beats at or below it)``,
        cumulative, ending with ``(inf, rtt_count)``."""
        return _cumulative(self._bounds, self._counts)


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[float, int]]:
    buckets = []
    total = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        buckets.append((bound, total))
    return buckets
