"""Where a kernel that stops answering is shown besides the log: jupyter_server's event bus (one
event when it stops answering, one when it answers again) and ``/metrics``:

- ``heartbeat_kernels_unresponsive``, gauge: kernels not answering now;
- ``heartbeat_unresponsive_episodes_total{kind}``, counter: episodes by kind (``hung``,
  ``native``, ``silent``).

No series names a kernel (as ``heartbeat.jupyter.metrics``). The collector is registered in
prometheus_client's default registry once, when a first episode is counted (nothing fails
without prometheus_client).
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heartbeat._responsive import Answering, Kind
from heartbeat.jupyter._responsive import Report

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

#: The ``$id`` of the event's schema.
SCHEMA_ID = "https://kernel-heartbeat.readthedocs.io/events/kernel_unresponsive/v1"
SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "kernel_unresponsive" / "v1.yaml"


class Episodes:
    """Kernels unresponsive now, and episodes by kind, in this process."""

    def __init__(self) -> None:
        self.now = 0
        self.by_kind: dict[str, int] = dict.fromkeys(typing.get_args(Kind), 0)

    def began(self, kind: str) -> None:
        """A kernel stopped answering."""
        self.now += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def ended(self) -> None:
        """A kernel that was not answering answers again, or is no longer watched."""
        self.now = max(0, self.now - 1)


_episodes = Episodes()
_registered = False


def episodes() -> Episodes:
    """This process's count, its collector registered on first use."""
    global _registered
    if not _registered:
        _registered = True
        _register()
    return _episodes


class EpisodesCollector:
    """A prometheus_client collector of :class:`Episodes`."""

    def __init__(self, counted: Episodes) -> None:
        self.counted = counted

    def collect(self) -> Iterator[Metric]:
        """The two families, as they stand now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "heartbeat_kernels_unresponsive",
            "Kernels whose heart beats but that do not answer on their control channel now.",
            value=self.counted.now,
        )
        counter = CounterMetricFamily(
            "heartbeat_unresponsive_episodes",
            "Times a kernel stopped answering on its control channel, by what it was doing.",
            labels=["kind"],
        )
        for kind, count in self.counted.by_kind.items():
            counter.add_metric([kind], count)
        yield counter

    def describe(self) -> Iterator[Metric]:
        """The same families."""
        return self.collect()


def _register() -> None:
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        return
    try:
        REGISTRY.register(EpisodesCollector(_episodes))
    except ValueError as exc:
        logging.getLogger("heartbeat").warning("heartbeat metrics not registered: %s", exc)


def _emit(owner: object, data: dict[str, Any]) -> None:
    event_logger = getattr(owner, "event_logger", None)
    if event_logger is None or not hasattr(event_logger, "emit"):
        return
    if SCHEMA_ID not in event_logger.schemas:
        event_logger.register_event_schema(SCHEMA_PATH)
    event_logger.emit(schema_id=SCHEMA_ID, data=data)


def report_data(report: Report) -> dict[str, Any]:
    """The event's data for a kernel that stopped answering."""
    event = report.event
    return {
        "kernel_id": report.kernel_id,
        "state": "unresponsive",
        "kind": event.kind,
        "silent_for": event.silent_for,
        "cpu_share": event.cpu_share,
        "main_state": event.main_state,
        "main_frames": report.main_frames(),
        "stacks": report.stacks(),
        "why_no_stack": report.why_no_stack,
    }


def show_report(owner: object, report: Report, *, metrics: bool) -> None:
    """Count it (``metrics``) and emit it on ``owner``'s event bus, if it has one."""
    if metrics:
        episodes().began(report.event.kind)
    _emit(owner, report_data(report))


def show_answer(owner: object, kernel_id: str | None, event: Answering, *, metrics: bool) -> None:
    """The same for a kernel answering again."""
    if metrics:
        episodes().ended()
    _emit(owner, {"kernel_id": kernel_id, "state": "answering", "silent_for": event.silent_for})


def show_unwatched(*, metrics: bool) -> None:
    """A kernel not answering is no longer watched (stopped, dead, restarted): not counted as
    unresponsive now any more."""
    if metrics:
        episodes().ended()
