"""Operators' metrics: the collector read back through prometheus_client's own exposition, its
registration in the default registry (once; never a failure), the ``metrics`` setting, and a
real ``jupyter server``'s ``/metrics`` before and after a kernel kills itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from heartbeat import Tally
from heartbeat.jupyter import HeartbeatKernelManager
from heartbeat.jupyter.kernel import HeartbeatSettings
from heartbeat.jupyter.metrics import TallyCollector, process_tally
from tests.conftest import free_port, run_python
from tests.test_jupyter_server import Server, execute_request, server  # noqa: F401

OURS = {
    "heartbeat_kernel_deaths": "counter",
    "heartbeat_rtt_seconds": "histogram",
    "heartbeat_stalls_forgiven": "counter",
    "heartbeat_kernels_watched": "gauge",
    "heartbeat_kernels_late": "gauge",
    "heartbeat_oom_peak_bytes": "histogram",
}


def scrape(text: str) -> dict[str, Any]:
    """Our families in an exposition: {family: type}, {(sample, labels): value}, label names."""
    types, values, labels = {}, {}, set()
    for family in text_string_to_metric_families(text):
        if family.name not in OURS:
            continue
        types[family.name] = family.type
        for sample in family.samples:
            values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
            labels |= set(sample.labels)
    return {"types": types, "values": values, "labels": labels}


def test_the_collector_shows_the_tally_through_prometheus_clients_own_exposition() -> None:
    tally = Tally(buckets=(0.001, 0.01))
    for rtt in (0.0004, 0.002, 0.003, 0.5):
        tally.observe_rtt(rtt)
    tally.died("signal")
    tally.died("oom")
    tally.died("signal")
    tally.stalled()
    tally.watched, tally.late = 7, 2
    tally.oom_peak(200 << 20)
    tally.oom_peak(3 << 30)
    registry = CollectorRegistry()
    registry.register(TallyCollector(tally))
    got = scrape(generate_latest(registry).decode())
    assert got["types"] == OURS
    values = got["values"]
    assert values["heartbeat_kernel_deaths_total", (("cause", "signal"),)] == 2
    assert values["heartbeat_kernel_deaths_total", (("cause", "oom"),)] == 1
    assert values["heartbeat_kernel_deaths_total", (("cause", "exited"),)] == 0  # from zero
    buckets = {k[1][0][1]: v for k, v in values.items() if k[0] == "heartbeat_rtt_seconds_bucket"}
    assert buckets == {"0.001": 1, "0.01": 3, "+Inf": 4}  # cumulative, as Prometheus reads them
    assert values["heartbeat_rtt_seconds_count", ()] == 4
    assert values["heartbeat_rtt_seconds_sum", ()] == pytest.approx(0.5054)
    assert values["heartbeat_stalls_forgiven_total", ()] == 1
    assert values["heartbeat_kernels_watched", ()] == 7
    assert values["heartbeat_kernels_late", ()] == 2
    peaks = {k[1][0][1]: v for k, v in values.items() if k[0] == "heartbeat_oom_peak_bytes_bucket"}
    assert peaks["134217728.0"] == 0 and peaks["268435456.0"] == 1
    assert peaks["2147483648.0"] == 1 and peaks["4294967296.0"] == 2 and peaks["+Inf"] == 2
    assert values["heartbeat_oom_peak_bytes_sum", ()] == (200 << 20) + (3 << 30)
    assert got["labels"] == {"cause", "le"}  # no kernel in any series
    # Read at each scrape, not copied at registration.
    tally.watched = 8
    assert "heartbeat_kernels_watched 8.0" in generate_latest(registry).decode()


def test_a_registry_refuses_a_second_collector_of_the_same_names() -> None:
    # describe() names the families, which is how a registry finds the clash.
    registry = CollectorRegistry()
    registry.register(TallyCollector(Tally()))
    with pytest.raises(ValueError, match="heartbeat_kernels_watched"):
        registry.register(TallyCollector(Tally()))


# In a fresh interpreter each: prometheus_client's default registry is the process's own.
REGISTERED_ONCE = """
from prometheus_client import REGISTRY, generate_latest
from heartbeat.jupyter.metrics import TallyCollector, count_death, process_tally
from heartbeat._cause import Cause, Death
tally = process_tally()
assert process_tally() is tally
count_death(Death(kernel_id="k", cause=Cause("signal", signal=9), time=0.0, pid=1,
                  restarting=True))
ours = [c for c in REGISTRY._collector_to_names if isinstance(c, TallyCollector)]
text = generate_latest(REGISTRY).decode()
assert len(ours) == 1 and ours[0].tally is tally, ours
assert 'heartbeat_kernel_deaths_total{cause="signal"} 1.0' in text, text
"""

NAMES_TAKEN = """
import logging
from prometheus_client import Gauge
from heartbeat.jupyter.metrics import process_tally
logging.basicConfig()
Gauge("heartbeat_kernels_watched", "someone else's")
process_tally().stalled()
print("still counting:", process_tally().stalls)
"""

WITHOUT_PROMETHEUS = """
import asyncio, logging, sys
sys.modules["prometheus_client"] = None  # any import of it fails, as when it is not installed
from heartbeat.jupyter.kernel import HeartbeatSettings
from heartbeat.jupyter.metrics import count_death, process_tally
from heartbeat._cause import Cause, Death

async def main():
    monitor = HeartbeatSettings().watch(
        sys.argv[1], curve_serverkey=None, context=None, log=logging.getLogger("t")
    )
    monitor.start()
    watched = process_tally().watched
    monitor.stop()
    return watched

assert asyncio.run(main()) == 1
count_death(Death(kernel_id="k", cause=Cause("exited", exit_code=3), time=0.0, pid=1,
                  restarting=True))
assert process_tally().deaths["exited"] == 1
"""


def test_the_process_tally_is_registered_once_in_the_default_registry() -> None:
    result = run_python(REGISTERED_ONCE)
    assert result.returncode == 0, result.stderr
    assert not result.stderr  # a second registration would be refused, with a warning


def test_names_another_collector_took_leave_a_warning_and_the_tally_counting() -> None:
    result = run_python(NAMES_TAKEN)
    assert result.returncode == 0, result.stderr
    assert "heartbeat metrics not registered" in result.stderr, result.stderr
    assert "still counting: 1" in result.stdout


def test_without_prometheus_client_nothing_is_registered_and_nothing_fails() -> None:
    result = run_python(WITHOUT_PROMETHEUS, args=[f"tcp://127.0.0.1:{free_port()}"])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("metrics", [True, False])
def test_the_metrics_setting_counts_a_kernels_monitor_in_the_process_tally(metrics: bool) -> None:
    tally = process_tally()

    async def watched_while_running() -> int:
        settings = HeartbeatSettings(metrics=metrics)
        monitor = settings.watch(
            f"tcp://127.0.0.1:{free_port()}",
            curve_serverkey=None,
            context=None,
            log=logging.getLogger("test_metrics"),
        )
        before = tally.watched
        monitor.start()
        during = tally.watched - before
        monitor.stop()
        assert tally.watched == before
        return during

    assert asyncio.run(watched_while_running()) == (1 if metrics else 0)


@pytest.mark.parametrize("metrics", [True, False])
def test_a_kernel_managers_death_is_counted_by_its_cause_with_metrics_on(metrics: bool) -> None:
    deaths = process_tally().deaths
    before = deaths["unknown"]
    km = HeartbeatKernelManager(metrics=metrics)
    km.note_death()  # no kernel, so no process to read a cause from: "unknown"
    assert km.last_death is not None and km.last_death.cause.kind == "unknown"
    assert deaths["unknown"] - before == (1 if metrics else 0)


# -- a real jupyter server ----------------------------------------------------------------------


def metrics_of(srv: Server) -> str:
    request = urllib.request.Request(
        f"{srv.base}/metrics", headers={"Authorization": f"token {srv.token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def until_scraped(srv: Server, condition: Any, what: str, timeout: float = 10) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        text = metrics_of(srv)
        got = scrape(text)
        if condition(got["values"]):
            return {**got, "text": text}
        assert time.monotonic() < end, f"{what}:\n{text}"
        time.sleep(0.1)


async def run_cell(srv: Server, kid: str, code: str | None) -> None:
    """Connect to the kernel's websocket (it opens once the kernel answers); with ``code``, run
    it and wait until the kernel is restarting."""
    request = HTTPRequest(
        srv.base.replace("http", "ws") + f"/api/kernels/{kid}/channels",
        headers={"Authorization": f"token {srv.token}"},
        connect_timeout=30,
    )
    conn = await websocket_connect(request)
    try:
        if code is None:
            return
        await conn.write_message(execute_request(code))
        while True:
            raw = await asyncio.wait_for(conn.read_message(), timeout=30)
            assert raw is not None, "websocket closed"
            msg = json.loads(raw)
            if msg.get("content", {}).get("execution_state") == "restarting":
                return
    finally:
        conn.close()
        with contextlib.suppress(asyncio.TimeoutError):
            while await asyncio.wait_for(conn.read_message(), timeout=10) is not None:
                pass


def test_a_real_servers_metrics_count_its_kernel_and_its_death_by_signal(server: Server) -> None:  # noqa: F811
    kid = server.api("POST", "/api/kernels")["id"]
    asyncio.run(run_cell(server, kid, None))
    watched = ("heartbeat_kernels_watched", ())
    signal = ("heartbeat_kernel_deaths_total", (("cause", "signal"),))
    got = until_scraped(
        server, lambda v: v.get(("heartbeat_rtt_seconds_count", ()), 0) > 0, "no beat timed"
    )
    assert got["values"][watched] == 1 and got["values"][signal] == 0
    assert got["types"] == OURS

    asyncio.run(run_cell(server, kid, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    got = until_scraped(server, lambda v: v[signal] == 1, "the death not counted")
    asyncio.run(run_cell(server, kid, None))  # the restarted kernel answers
    got = until_scraped(server, lambda v: v[watched] == 1, "the new kernel not watched")
    assert sum(v for k, v in got["values"].items() if k[0] == "heartbeat_kernel_deaths_total") == 1
    assert got["labels"] == {"cause", "le"}
    assert kid not in got["text"]  # no series names the kernel, ours or the server's
    # A DELETE just after the restart may meet jupyter_client's restart still marked undone.
    server.delete_kernel(kid)
    got = until_scraped(server, lambda v: v[watched] == 0, "a shut-down kernel still watched")
