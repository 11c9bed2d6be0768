"""A slow or lossy network between monitor and heart, through a real TCP fault proxy.

At ``time_to_dead`` 1 s and the defaults otherwise (a ping every 0.5 s), for a lone
HeartMonitor and for a HeartbeatPool member alike: latency that jumps up and back, round trips
near ``time_to_dead``, connection resets that each lose a ping are no death; a black hole still
is, between ``time_to_dead`` and ``time_to_dead + interval`` after the last reply (plus the
loop's scheduling delay). The exact rules are property-tested in test_judge.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from heartbeat import Heart, HeartbeatPool
from tests.faultproxy import FaultProxy
from tests.test_monitor import Watch
from tests.test_pool import pooled

TTD = 1.0
KINDS = ["lone", "pool"]


def through_proxy(
    body: Callable[[FaultProxy, Watch], Awaitable[None]], kind: str = "lone", **options: Any
) -> Watch:
    """Run ``body`` with a heart behind a FaultProxy, watched through it by a lone monitor or a
    pool member (time_to_dead 1 s, first_beat 0.5 s, the defaults otherwise, or ``options``)."""

    async def scenario() -> Watch:
        pool = HeartbeatPool()
        with Heart() as heart:
            assert heart.port is not None
            proxy = FaultProxy(heart.port)
            await proxy.start()
            settings = {"time_to_dead": TTD, "first_beat": 0.5, **options}
            if kind == "lone":
                watch = Watch(proxy.url, **settings)
            else:
                watch = pooled(pool, proxy.url, **settings)
            try:
                watch.start()
                assert await watch.until(lambda: len(watch.beats()) >= 3, timeout=10)
                await body(proxy, watch)
            finally:
                watch.monitor.stop()
                pool.close()
                await proxy.close()
        return watch

    return asyncio.run(scenario())


def timeline(watch: Watch) -> str:
    """What the monitor saw, one event a line, in ms from its first event (for a failure)."""
    start = watch.events[0][0] if watch.events else 0.0
    return "\n".join(f"{(t - start) * 1000:8.1f} ms  {event}" for t, event in watch.events)


def last_ping_answered(watch: Watch) -> bool:
    pings = watch.pings()
    return bool(pings) and pings[-1][1].token in {beat.token for _, beat in watch.beats()}


def round_trips(watch: Watch, since: float = 0.0) -> list[float]:
    return [b.rtt for _, b in watch.beats(since) if b.rtt is not None]


@pytest.mark.parametrize("kind", KINDS)
def test_latency_that_jumps_to_300_ms_each_way_and_back_is_no_death(kind: str) -> None:
    async def body(proxy: FaultProxy, watch: Watch) -> None:
        proxy.latency = 0.3
        await asyncio.sleep(4.0)
        proxy.latency = 0.0
        await asyncio.sleep(2.0)

    watch = through_proxy(body, kind)
    assert watch.died == []
    slow = [rtt for rtt in round_trips(watch) if rtt > 0.58]
    assert len(slow) >= 5  # the latency was real: 0.6 s round trips, longer than the interval
    assert min(round_trips(watch)[-2:]) < 0.1  # and it went away again


@pytest.mark.parametrize("kind", KINDS)
def test_round_trips_of_0_9_time_to_dead_are_no_death(kind: str) -> None:
    async def body(proxy: FaultProxy, watch: Watch) -> None:
        proxy.latency = 0.45
        await asyncio.sleep(4.0)

    watch = through_proxy(body, kind)
    assert watch.died == []
    assert len([rtt for rtt in round_trips(watch) if rtt > 0.88]) >= 4


@pytest.mark.parametrize("kind", KINDS)
def test_three_connection_resets_that_each_lose_a_ping_are_no_death(kind: str) -> None:
    lost = 0

    async def body(proxy: FaultProxy, watch: Watch) -> None:
        nonlocal lost
        for _ in range(3):
            # Catch the next ping in the proxy and reset the connection under it: the ping is
            # lost with the connection, as one is when a middlebox resets it mid-flight. Hold
            # only once the last ping is answered, or the reset loses that one too (two lost in
            # a row are death by the rule).
            assert await watch.until(lambda: last_ping_answered(watch), timeout=2)
            began = time.monotonic()
            proxy.holding = True
            assert await watch.until(lambda t=began: bool(watch.pings(t)), timeout=2)
            await asyncio.sleep(0.05)
            proxy.reset()
            proxy.holding = False
            lost += 1
            await asyncio.sleep(began + 1.5 - time.monotonic())
        assert proxy.connections >= 4  # zmq connected again after each reset

    watch = through_proxy(body, kind)
    assert lost == 3
    assert watch.died == [], timeline(watch)


@pytest.mark.parametrize("kind", KINDS)
def test_a_black_hole_is_death_between_time_to_dead_and_time_to_dead_plus_interval(
    kind: str,
) -> None:
    async def body(proxy: FaultProxy, watch: Watch) -> None:
        proxy.holding = True
        assert await watch.until(lambda: bool(watch.died), timeout=10)

    watch = through_proxy(body, kind)
    last = watch.beats()[-1][0]
    assert TTD - 0.01 <= watch.died[0] - last <= 1.6
