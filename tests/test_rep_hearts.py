"""Hearts that are REP sockets (IRkernel's; the messaging spec's "echoed right back from the
Kernel's REP socket") and hearts that are ROUTERs (ipykernel's, xeus') alike, under every way of
watching one: a lone monitor, the pool (plain and CURVE), the probe, ``HBChannel`` and the kernel
spec's provisioner. ZMTP lets a REP peer talk only to REQ and DEALER, so the pool, whose socket
is a ROUTER, reaches a REP heart by DEALERs of its own (heartbeat/pool.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from heartbeat import HeartbeatPool, HeartMonitor, State
from heartbeat.jupyter import HBChannel
from heartbeat.probe import ping
from tests.conftest import free_port, wait_for
from tests.echo_hearts import echo_heart
from tests.test_monitor import Watch

KINDS = {"REP": zmq.REP, "ROUTER": zmq.ROUTER}
KEYS = zmq.curve_keypair()  # (public, secret) of the CURVE hearts
# Generous for a loaded machine: the first ping's time plus a reconnect is some milliseconds.
BEATING_WITHIN = 1.5


@contextlib.contextmanager
def heart(kind: str, curve: bool = False, url: str = "tcp://127.0.0.1:0") -> Iterator[str]:
    with echo_heart(KINDS[kind], curve_secretkey=KEYS[1] if curve else None, url=url) as bound:
        yield bound


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


@contextlib.contextmanager
def closing(pool: HeartbeatPool | None) -> Iterator[None]:
    """Close ``pool`` however the test ends: a failed one leaves no socket behind."""
    try:
        yield
    finally:
        if pool is not None:
            pool.close()


def watched(url: str, pool: HeartbeatPool | None, curve: bool = False, **kwargs: Any) -> Watch:
    watch = Watch(url, **kwargs)
    watch.monitor = HeartMonitor(
        url,
        pool=pool,
        curve_serverkey=KEYS[0] if curve else None,
        on_event=watch._record,
        **kwargs,
    )
    return watch


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
@pytest.mark.parametrize("transport", ["lone", "pool"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_rep_and_a_router_heart_beat_at_once_and_are_never_dead(
    kind: str, transport: str, curve: bool
) -> None:
    async def scenario() -> tuple[Watch, float]:
        pool = HeartbeatPool() if transport == "pool" else None
        with heart(kind, curve) as url, closing(pool):
            watch = watched(url, pool, curve, time_to_dead=1.0, first_beat=3.0)
            started = time.monotonic()
            watch.start()
            assert await watch.until(lambda: bool(watch.beats() or watch.died), timeout=10)
            first = watch.beats()[0][0] - started if watch.beats() else float("inf")
            await asyncio.sleep(3.0)  # six pings, and three times time_to_dead
            if pool is not None:
                # A REP heart is reached by DEALERs of its own; a ROUTER heart by the pool's
                # one socket, as before.
                assert pool.sockets == 1 and pool.dealers == (1 if kind == "REP" else 0)
            watch.monitor.stop()
            if pool is not None:
                assert pool.sockets == 0 and pool.dealers == 0
        return watch, first

    watch, first = asyncio.run(scenario())
    assert watch.died == [], watch.events
    assert first <= BEATING_WITHIN, first
    # Every ping after the first second is answered (the heart never missed one).
    assert len(watch.beats(since=watch.beats()[0][0])) >= 5, watch.events


def test_a_rep_heart_bound_late_answers_the_ping_the_router_lost_at_once() -> None:
    # time_to_dead 4: pings 2 s apart. The one sent before the heart was bound went to the
    # ROUTER and was lost; it is sent again on the DEALER, so the heart is beating within a
    # reconnect of binding, not at the next ping.
    port = free_port()

    async def scenario() -> tuple[Watch, float, float]:
        pool = HeartbeatPool()
        watch = watched(f"tcp://127.0.0.1:{port}", pool, time_to_dead=4.0, first_beat=10.0)
        watch.start()
        await asyncio.sleep(0.7)
        with closing(pool), heart("REP", url=f"tcp://127.0.0.1:{port}"):
            bound = time.monotonic()
            assert await watch.until(lambda: bool(watch.beats()), timeout=10)
            beating = watch.beats()[0][0] - bound
            pings = len(watch.pings())
            watch.monitor.stop()
        return watch, beating, pings

    watch, beating, pings = asyncio.run(scenario())
    assert beating <= 1.0 and pings == 1, (beating, pings, watch.events)
    assert watch.died == []


def test_in_one_pool_a_router_heart_keeps_the_pools_socket_and_a_rep_heart_gets_dealers() -> None:
    async def scenario() -> None:
        pool = HeartbeatPool()
        with heart("REP") as rep, heart("ROUTER") as router, closing(pool):
            watches = [
                watched(rep, pool, time_to_dead=1.0, first_beat=3.0),
                # A second watcher of the same REP heart, over two paths: it joins a url already
                # known to refuse the ROUTER, and gets its DEALERs at once.
                watched(rep, pool, time_to_dead=1.0, first_beat=3.0, paths=2),
                watched(router, pool, time_to_dead=1.0, first_beat=3.0),
            ]
            watches[0].start()
            assert await watches[0].until(lambda: pool.dealers == 1, timeout=10)
            for watch in watches[1:]:
                watch.start()
            assert await watches[0].until(lambda: all(len(w.beats()) >= 2 for w in watches), 10)
            assert pool.dealers == 2 and pool.sockets == 1
            await asyncio.sleep(2.0)
            assert all(w.died == [] and w.monitor.state is State.BEATING for w in watches)
            watches[0].monitor.stop()
            assert pool.dealers == 1
            before = len(watches[1].beats())
            assert await watches[1].until(lambda: len(watches[1].beats()) >= before + 2, 10)
            pool.close()
            assert pool.sockets == 0 and pool.dealers == 0
            assert all(w.died == [] for w in watches)

    asyncio.run(scenario())


def test_a_rep_heart_restarted_on_its_port_is_beating_again_and_a_router_one_keeps_the_router() -> (
    None
):
    # The replies the old heart owed are lost with it: a DEALER waits for none of them. A ROUTER
    # heart that answered before its restart stays on the pool's socket (libzmq reconnects it).
    ports = {kind: free_port() for kind in KINDS}

    async def scenario() -> dict[str, Watch]:
        pool = HeartbeatPool()
        urls = {kind: f"tcp://127.0.0.1:{port}" for kind, port in ports.items()}
        watches = {k: watched(u, pool, time_to_dead=1.5, first_beat=3.0) for k, u in urls.items()}
        with closing(pool):
            with contextlib.ExitStack() as hearts:
                for kind, url in urls.items():
                    hearts.enter_context(heart(kind, url=url))
                for watch in watches.values():
                    watch.start()
                w = watches["REP"]
                assert await w.until(lambda: all(len(x.beats()) >= 2 for x in watches.values()), 10)
            restarted = time.monotonic()
            with contextlib.ExitStack() as hearts:
                for kind, url in urls.items():
                    hearts.enter_context(heart(kind, url=url))
                assert await w.until(
                    lambda: all(x.beats(since=restarted) for x in watches.values()), timeout=10
                )
                await asyncio.sleep(2.0)
                assert pool.dealers == 1
        return watches

    watches = asyncio.run(scenario())
    assert all(w.died == [] for w in watches.values()), {k: w.events for k, w in watches.items()}


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_the_probe_pings_a_rep_and_a_router_heart(kind: str, curve: bool) -> None:
    with heart(kind, curve) as url:
        key = KEYS[0] if curve else None
        assert all(ping(url, timeout=5.0, curve_serverkey=key) is not None for _ in range(3))


class _Channel(HBChannel):
    time_to_dead = 1.0
    first_beat = 3.0

    def __init__(self, address: str) -> None:
        super().__init__(None, None, address)
        self.deaths: list[float] = []

    def call_handlers(self, since_last_heartbeat: float) -> None:
        self.deaths.append(since_last_heartbeat)


@pytest.mark.parametrize("kind", list(KINDS))
def test_hbchannel_watches_a_rep_and_a_router_heart(kind: str) -> None:
    with heart(kind) as url:
        channel = _Channel(url)
        channel.start()
        try:
            assert wait_for(channel.is_beating, BEATING_WITHIN + 1.0)
            time.sleep(3.0)
            assert channel.is_beating() and channel.deaths == []
        finally:
            channel.stop()


def test_past_zmqs_sockets_a_context_a_rep_hearts_monitor_stops_with_the_limit_named_not_dead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each REP heart costs the pool a socket: with room for the pool's three (its ROUTER, the
    # PAIR its monitor tells, libzmq's own end of that monitor) and one DEALER, the second REP
    # heart's monitor finds none.
    async def scenario(context: zmq.Context[Any]) -> tuple[list[HeartMonitor], list[str]]:
        pool = HeartbeatPool(context=context)
        with heart("REP") as a, heart("REP") as b, closing(pool):
            monitors = [
                HeartMonitor(u, pool=pool, time_to_dead=1.0, first_beat=3.0) for u in (a, b)
            ]
            deaths: list[str] = []
            monitors[0].start(lambda: deaths.append(a))
            assert await until(monitors[0].is_beating)
            monitors[1].start(lambda: deaths.append(b))
            assert await until(lambda: not monitors[1].running)
            await asyncio.sleep(2.0)
            assert monitors[0].is_beating() and pool.dealers == 1
        return monitors, deaths

    context: zmq.Context[Any] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 4)
    try:
        monitors, deaths = asyncio.run(scenario(context))
    finally:
        context.term()
    assert deaths == [] and monitors[1].state is State.STOPPED
    assert "zmq.MAX_SOCKETS" in caplog.text and "not judged dead" in caplog.text, caplog.text


def test_a_rep_heart_whose_refusal_libzmq_never_told_is_reached_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libzmq was seen to drop the pool's connection to a REP heart with no event at all (a few
    # hearts in a thousand watched at once, under load: benchmarks.scale --kinds pool-rep).
    # Here the monitor's first news is lost on purpose: the url, unanswered half an interval on,
    # is connected afresh, and that refusal is told. first_beat 0: no grace to hide in.
    from heartbeat import _sockets

    told = _sockets.disconnections
    lost: list[str] = []

    def first_news_lost(monitor: zmq.Socket[Any]) -> list[str]:
        ended = told(monitor)
        if ended and not lost:
            lost.extend(ended)
            return []
        return ended

    monkeypatch.setattr(_sockets, "disconnections", first_news_lost)

    async def scenario() -> Watch:
        pool = HeartbeatPool()
        with heart("REP") as url, closing(pool):
            watch = watched(url, pool, time_to_dead=1.0, first_beat=0.0)
            watch.start()
            await asyncio.sleep(3.0)
            assert pool.dealers == 1
            watch.monitor.stop()
        return watch

    watch = asyncio.run(scenario())
    assert lost and watch.died == [] and len(watch.beats()) >= 5, (lost, watch.events)
