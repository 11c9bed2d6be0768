"""Operators' metrics: what this process's kernel monitors counted, on jupyter_server's
``/metrics``.

jupyter_server serves prometheus_client's default registry at ``/metrics``. The first monitor
that a kernel manager or provisioner makes with ``metrics`` on (the default) registers there,
once per process, a collector of the process's :class:`~heartbeat.Tally`, which every such
monitor adds to. The collector reads the tally at each scrape, so a beat costs only the tally's
own counting. No series names a kernel: 10,000 kernels would be 10,000 series of each, and every
restarted kernel would leave its old ones behind.

- ``heartbeat_kernel_deaths_total{cause}``, counter: deaths by cause (``heartbeat._cause.Kind``);
- ``heartbeat_rtt_seconds``, histogram: heartbeats' round trips, from ping sent to reply read;
- ``heartbeat_stalls_forgiven_total``, counter: the monitors' own stalled loop, not blamed;
- ``heartbeat_kernels_watched``, gauge: kernels whose heart is watched;
- ``heartbeat_kernels_late``, gauge: of those, the ones whose heart is late;
- ``heartbeat_oom_peak_bytes``, histogram: the peak memory of kernels at their out-of-memory
  death, where it was read (``Cause.memory_peak``).

prometheus_client is not required (jupyter_server brings it): without it nothing is
registered, and nothing fails.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from heartbeat._cause import Death
from heartbeat._tally import Tally

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

_tally = Tally()
_registered = False


def process_tally() -> Tally:
    """The tally of this process's kernels; registers its collector in prometheus_client's
    default registry the first time (when prometheus_client can be imported)."""
    global _registered
    if not _registered:
        _registered = True  # tried once: a failure is logged once, not at every kernel
        _register(_tally)
    return _tally


def count_death(death: Death) -> None:
    """Count a kernel's death under its cause's kind (and an out-of-memory one's peak, when
    known); call it once a death."""
    tally = process_tally()
    tally.died(death.cause.kind)
    if death.cause.kind == "oom" and death.cause.memory_peak is not None:
        tally.oom_peak(death.cause.memory_peak)


class TallyCollector:
    """A prometheus_client collector of a :class:`~heartbeat.Tally`: each scrape reads it.

    ``registry.register(TallyCollector(tally))`` shows the tally in any
    ``prometheus_client.CollectorRegistry``; the process's own tally is registered in the
    default one by :func:`process_tally`.
    """

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        """The metric families, as the tally stands now."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        tally = self.tally
        deaths = CounterMetricFamily(
            "heartbeat_kernel_deaths",
            "Kernel deaths (of the heart or of the process), by cause.",
            labels=["cause"],
        )
        for kind, count in tally.deaths.items():
            deaths.add_metric([kind], count)
        yield deaths
        yield HistogramMetricFamily(
            "heartbeat_rtt_seconds",
            "Round-trip time of heartbeats: from a ping's sending to its reply's reading.",
            buckets=[(_le(bound), count) for bound, count in tally.rtt_buckets()],
            sum_value=tally.rtt_sum,
        )
        yield CounterMetricFamily(
            "heartbeat_stalls_forgiven",
            "Times a monitor's own event loop (or process) stalled: the silence was not "
            "blamed on the heart.",
            value=tally.stalls,
        )
        yield GaugeMetricFamily(
            "heartbeat_kernels_watched",
            "Kernels whose heart is watched (starting, beating or late).",
            value=tally.watched,
        )
        yield HistogramMetricFamily(
            "heartbeat_oom_peak_bytes",
            "Peak memory of kernels killed by the out-of-memory killer, where it was read.",
            buckets=[(_le(bound), count) for bound, count in tally.oom_peak_buckets()],
            sum_value=tally.oom_peak_sum,
        )
        yield GaugeMetricFamily(
            "heartbeat_kernels_late",
            "Watched kernels whose heart is late: a ping unanswered for half of time_to_dead.",
            value=tally.late,
        )

    def describe(self) -> Iterator[Metric]:
        """The same families: a registry checks their names against its other collectors'."""
        return self.collect()


def _le(bound: float) -> str:
    # As prometheus_client's own histograms write their bounds ("0.005", "1.0", "+Inf").
    return "+Inf" if bound == math.inf else repr(bound)


def _register(tally: Tally) -> None:
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        return  # nowhere to show metrics: the tally still counts
    try:
        REGISTRY.register(TallyCollector(tally))
    except ValueError as exc:  # names taken by another collector: theirs stay, no kernel fails
        logging.getLogger("heartbeat").warning("heartbeat metrics not registered: %s", exc)
