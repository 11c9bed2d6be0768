"""Faults around a live heart: a misbehaving network, a terminated context, exhausted file
descriptors, a forking manager. Each gives no false death, or a clear error, never a hang.

Latency jumps, lost pings and black holes, for lone and pooled monitors: test_network.py."""

from __future__ import annotations

import asyncio
import logging
import os
import textwrap
import threading
import time
from typing import Any

import pytest
import zmq

from heartbeat import Heart, HeartMonitor, State
from tests.conftest import run_python
from tests.faultproxy import FaultProxy
from tests.test_monitor import SLACK, Watch
from tests.test_network import TTD, through_proxy


def test_round_trips_longer_than_the_interval_still_count_as_life() -> None:
    # 0.7 s round trips with a ping every 0.25 s: every reply lands after the next ping.
    async def body(proxy: FaultProxy, watch: Watch) -> None:
        proxy.latency = 0.35
        await asyncio.sleep(4.0)

    watch = through_proxy(body, interval=0.25)
    assert watch.died == []
    slow = [b for _, b in watch.beats() if b.rtt is not None and b.rtt > 0.65]
    assert len(slow) >= 8 and all(b.stale for b in slow)


def test_a_steady_latency_near_time_to_dead_is_no_death() -> None:
    async def scenario() -> Watch:
        with Heart() as heart:
            assert heart.port is not None
            proxy = FaultProxy(heart.port)
            await proxy.start()
            proxy.latency = 0.4  # a 0.8 s round trip from the first ping on
            # The zmq handshake itself takes a few of those round trips: first_beat covers it.
            watch = Watch(proxy.url, time_to_dead=TTD, first_beat=5.0)
            try:
                watch.start()
                await asyncio.sleep(8.0)  # past first_beat + time_to_dead
            finally:
                watch.monitor.stop()
                await proxy.close()
        return watch

    watch = asyncio.run(scenario())
    assert watch.died == [] and len(watch.beats()) >= 6


def test_a_partition_that_heals_in_time_is_no_death() -> None:
    async def body(proxy: FaultProxy, watch: Watch) -> None:
        for _ in range(3):
            # Held for 0.4 s: with a ping every 0.5 s the heart is never silent for 1 s.
            proxy.holding = True
            await asyncio.sleep(0.4)
            proxy.holding = False
            await asyncio.sleep(1.0)

    watch = through_proxy(body)
    assert watch.died == []
    assert watch.monitor.state is State.STOPPED


def test_a_context_terminated_under_a_monitor_stops_it_loudly_and_unblocks_term(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx: zmq.Context[Any] = zmq.Context()

    async def scenario() -> tuple[Watch, float]:
        with Heart() as heart:
            watch = Watch(heart.url, time_to_dead=TTD, first_beat=0.0, context=ctx)
            watch.start()
            assert await watch.until(lambda: len(watch.beats()) >= 2, timeout=10)
            done = threading.Event()
            terminator = threading.Thread(target=lambda: (ctx.term(), done.set()))
            started = time.monotonic()
            terminator.start()
            # term() waits for our socket; the monitor must notice and close it.
            assert await watch.until(done.is_set, timeout=10), "context.term() hung"
            took = time.monotonic() - started
            terminator.join()
            await asyncio.sleep(2 * TTD)
        return watch, took

    with caplog.at_level(logging.ERROR, logger="heartbeat"):
        watch, took = asyncio.run(scenario())
    assert took <= watch.monitor.interval + SLACK
    assert watch.monitor.state is State.STOPPED and not watch.monitor.running
    assert watch.died == []  # the heart's fate is unknown: not reported as a death
    assert any("socket failed" in r.getMessage() for r in caplog.records)


FD_LIMIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, resource, sys
    import zmq
    from heartbeat import Heart, HeartMonitor
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    async def main():
        monitors = []
        try:
            for i in range(1000):
                # inproc: no reconnecting tcp sockets come and go to blur the count.
                m = HeartMonitor(f"inproc://nowhere-{i}", first_beat=60)
                m.start()
                monitors.append(m)
        except OSError as exc:
            print(f"monitor {len(monitors)}: {exc}")
        try:
            Heart().start()
        except OSError as exc:
            print(f"heart: {exc}")
        for m in monitors:
            m.stop()

    asyncio.run(main())
    """
)


def test_the_file_descriptor_limit_is_a_clear_error_that_names_it() -> None:
    result = run_python(FD_LIMIT_SCRIPT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("monitor ") and "too many open files" in lines[0]
    assert "may open 64 file descriptors" in lines[0] and "ulimit -n" in lines[0]
    assert lines[1].startswith("heart: ") and "may open 64 file descriptors" in lines[1]
    assert "Traceback" not in result.stderr


FORK_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from heartbeat import Heart, HeartMonitor

    def child() -> int:
        # The child builds its own heart and monitor; the parent's are not touched.
        async def watch() -> int:
            with Heart() as heart:
                m = HeartMonitor(heart.url, time_to_dead=0.4, first_beat=0)
                m.start()
                await asyncio.sleep(1.0)
                m.stop()
                return 0 if m.stats.count >= 3 else 1
        return asyncio.run(watch())
    """
)


def test_a_manager_that_forks_keeps_beating_and_the_child_can_watch_its_own() -> None:
    namespace: dict[str, Any] = {}
    exec(FORK_CHILD, namespace)

    async def scenario() -> tuple[Watch, int]:
        with Heart() as heart:
            watch = Watch(heart.url, time_to_dead=0.4, first_beat=0.0)
            watch.start()
            assert await watch.until(lambda: len(watch.beats()) >= 2, timeout=10)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports through its exit code
                code = 1
                try:
                    code = namespace["child"]()
                finally:
                    os._exit(code)
            loop = asyncio.get_running_loop()
            _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
            await asyncio.sleep(0.5)
            watch.monitor.stop()
        return watch, os.waitstatus_to_exitcode(status)

    watch, code = asyncio.run(scenario())
    assert code == 0
    assert watch.died == [] and len(watch.beats()) >= 5


def test_a_stopped_monitor_never_calls_back_even_if_its_heart_dies() -> None:
    async def scenario() -> Watch:
        with Heart() as heart:
            watch = Watch(heart.url, time_to_dead=0.2, first_beat=0.0)
            watch.start()
            assert await watch.until(lambda: bool(watch.beats()), timeout=5)
            watch.monitor.stop()
        await asyncio.sleep(1.0)
        return watch

    watch = asyncio.run(scenario())
    assert watch.died == [] and watch.monitor.state is State.STOPPED


def test_monitor_reports_a_restarted_heart_only_by_its_own_replies() -> None:
    # A heart restarted on the same port inside time_to_dead is simply still alive.
    async def scenario() -> HeartMonitor:
        heart = Heart()
        heart.start()
        url = heart.url
        monitor = HeartMonitor(url, time_to_dead=TTD, first_beat=0.0)
        died: list[float] = []
        monitor.start(lambda: died.append(time.monotonic()))
        await asyncio.sleep(0.6)
        heart.stop()
        heart = Heart(url)
        heart.start()
        await asyncio.sleep(2.0)
        count = monitor.stats.count
        monitor.stop()
        heart.stop()
        assert died == [] and count >= 4
        return monitor

    asyncio.run(scenario())
