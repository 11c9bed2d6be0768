"""The heartbeat port as a network service: CURVE with the real peers, loopback by default,
message-size limits and floods."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from ipykernel.heartbeat import Heartbeat
from jupyter_client.channels import HBChannel as JupyterHBChannel

from heartbeat import Heart, HeartbeatPool, State
from heartbeat.jupyter import HBChannel
from heartbeat.probe import ping
from tests.conftest import Kernel, wait_for
from tests.test_monitor import Watch
from tests.test_pool import pooled

KEYS = zmq.curve_keypair()  # (public, secret) of the kernel's heart


KINDS = ["lone", "pool"]


def watch_for(url: str, seconds: float, kind: str = "lone", **kwargs: Any) -> Watch:
    """Watch ``url`` for ``seconds`` with a lone monitor, or as the member of a pool."""

    async def scenario() -> Watch:
        pool = HeartbeatPool()
        options = {"time_to_dead": 0.5, "first_beat": 0.5, **kwargs}
        watch = Watch(url, **options) if kind == "lone" else pooled(pool, url, **options)
        watch.start()
        await asyncio.sleep(seconds)
        watch.monitor.stop()
        assert pool.sockets == 0  # a pool holds nothing once its members have left
        return watch

    return asyncio.run(scenario())


@pytest.fixture
def curve_heart() -> Iterator[Heart]:
    with Heart(curve_secretkey=KEYS[1]) as heart:
        yield heart


@pytest.fixture
def curve_ipykernel_heartbeat() -> Iterator[str]:
    ctx: zmq.Context[Any] = zmq.Context()
    hb = Heartbeat(ctx, ("tcp", "127.0.0.1", 0), curve_publickey=KEYS[0], curve_secretkey=KEYS[1])
    hb.start()
    yield f"tcp://127.0.0.1:{hb.port}"
    ctx.term()
    hb.join(10)


# -- the four pairings --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_curve_our_heart_and_our_monitor(curve_heart: Heart, kind: str) -> None:
    watch = watch_for(curve_heart.url, 2.0, kind, curve_serverkey=KEYS[0])
    assert watch.died == [] and len(watch.beats()) >= 3


@pytest.mark.parametrize("kind", KINDS)
def test_curve_ipykernels_heartbeat_and_our_monitor(
    curve_ipykernel_heartbeat: str, kind: str
) -> None:
    watch = watch_for(curve_ipykernel_heartbeat, 2.0, kind, curve_serverkey=KEYS[0])
    assert watch.died == [] and len(watch.beats()) >= 3


def test_curve_our_heart_and_jupyter_clients_hbchannel(curve_heart: Heart) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    hb = JupyterHBChannel(ctx, address=curve_heart.url, curve_serverkey=KEYS[0])
    hb.time_to_dead = 0.3
    failures: list[float] = []
    hb.call_handlers = failures.append  # type: ignore[method-assign]
    hb.start()
    try:
        assert wait_for(hb.is_beating, 5)
        time.sleep(1.2)
        assert failures == [] and hb.is_beating()
    finally:
        hb.stop()
        ctx.term()


def test_curve_ipykernels_heartbeat_and_our_hbchannel(curve_ipykernel_heartbeat: str) -> None:
    hb = HBChannel(None, None, curve_ipykernel_heartbeat, curve_serverkey=KEYS[0])
    hb.time_to_dead, hb.first_beat = 0.5, 0.5
    hb.start()
    try:
        assert wait_for(hb.is_beating, 5)
    finally:
        hb.stop()


# -- without the key ----------------------------------------------------------------------------


def test_a_client_without_the_key_gets_no_answer_and_the_heart_stays_quiet(
    curve_heart: Heart, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="heartbeat"):
        assert ping(curve_heart.url, timeout=0.5) is None  # plain client
        assert ping(curve_heart.url, timeout=0.5, curve_serverkey=zmq.curve_keypair()[0]) is None
        assert ping(curve_heart.url, timeout=2.0, curve_serverkey=KEYS[0]) is not None
    assert [r for r in caplog.records if r.pathname.endswith("heart.py")] == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_monitor_with_the_wrong_key_reports_death_after_the_grace(
    curve_heart: Heart, kind: str
) -> None:
    watch = watch_for(curve_heart.url, 2.0, kind, curve_serverkey=zmq.curve_keypair()[0])
    assert len(watch.died) == 1 and watch.beats() == []


def test_one_pool_watches_curve_hearts_with_different_keys_and_plain_hearts_together() -> None:
    other = zmq.curve_keypair()

    async def scenario() -> dict[str, Watch]:
        pool = HeartbeatPool()
        with (
            Heart(curve_secretkey=KEYS[1]) as first,
            Heart(curve_secretkey=other[1]) as second,
            Heart() as plain,
            Heart(curve_secretkey=KEYS[1]) as third,
        ):
            options = {"time_to_dead": 0.5, "first_beat": 0.5}
            watches = {
                "first": pooled(pool, first.url, curve_serverkey=KEYS[0], **options),
                "second": pooled(pool, second.url, curve_serverkey=other[0], **options),
                "plain": pooled(pool, plain.url, **options),
                # Another heart's key: the handshake fails, and no ping is ever answered.
                "wrong": pooled(pool, third.url, curve_serverkey=other[0], **options),
            }
            for watch in watches.values():
                watch.start()
            assert pool.sockets == 2  # one plain, one CURVE for three members
            await asyncio.sleep(2.0)
            for watch in watches.values():
                watch.monitor.stop()
            assert pool.sockets == 0 and len(pool) == 0
        return watches

    watches = asyncio.run(scenario())
    for name in ("first", "second", "plain"):
        assert watches[name].died == [] and len(watches[name].beats()) >= 3, name
    assert len(watches["wrong"].died) == 1 and watches["wrong"].beats() == []


@pytest.mark.parametrize("key", ["short", b"x" * 39, 42])
def test_a_malformed_key_is_refused_with_its_name(key: object) -> None:
    error = TypeError if isinstance(key, int) else ValueError
    with pytest.raises(error, match="curve_secretkey"):
        Heart(curve_secretkey=key)  # type: ignore[arg-type]


def test_raw_32_byte_keys_are_accepted() -> None:
    public, secret = zmq.curve_keypair()
    from zmq.utils import z85

    with Heart(curve_secretkey=z85.decode(secret)) as heart:
        assert ping(heart.url, curve_serverkey=z85.decode(public)) is not None


# -- where it listens ---------------------------------------------------------------------------


def test_loopback_by_default_and_a_warning_for_an_open_port_without_curve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="heartbeat"):
        with Heart() as heart:
            assert heart.url.startswith("tcp://127.0.0.1:")
        assert caplog.records == []
        with Heart("tcp://0.0.0.0:0"):
            pass
        [record] = caplog.records
        assert "without CURVE" in record.getMessage()
        assert "other machines can reach it" in record.getMessage()
        caplog.clear()
        with Heart("tcp://0.0.0.0:0", curve_secretkey=KEYS[1]):
            pass
        assert caplog.records == []


# -- size limits and floods ---------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_huge_pings_disconnect_the_sender_and_cost_the_kernel_no_memory(kernel: Kernel) -> None:
    async def scenario() -> tuple[Watch, int, int]:
        watch = Watch(kernel.url, time_to_dead=0.5, first_beat=0.0)
        watch.start()
        assert await watch.until(lambda: len(watch.beats()) >= 2, timeout=5)
        before = rss_kib(kernel.pid)
        ctx = zmq.Context.instance()
        blob = b"x" * (64 << 20)
        for _ in range(4):
            with ctx.socket(zmq.DEALER) as flood:
                flood.linger = 0
                flood.connect(kernel.url)
                flood.send_multipart([b"", blob])
                await asyncio.sleep(0.3)
                assert flood.poll(200) == 0  # no answer: it was cut off
        await asyncio.sleep(1.0)
        after = rss_kib(kernel.pid)
        watch.monitor.stop()
        return watch, before, after

    watch, before, after = asyncio.run(scenario())
    assert watch.died == []
    assert after - before < 32 * 1024  # 256 MiB were thrown at it


def test_a_flood_of_connections_does_not_starve_a_legitimate_monitor(kernel: Kernel) -> None:
    async def scenario() -> Watch:
        ctx = zmq.Context.instance()
        floods = [ctx.socket(zmq.DEALER) for _ in range(300)]
        try:
            for sock in floods:
                sock.linger = 0
                sock.sndhwm = 100
                sock.connect(kernel.url)
            watch = Watch(kernel.url, time_to_dead=0.5, first_beat=1.0)
            watch.start()
            end = time.monotonic() + 4.0
            while time.monotonic() < end:
                for sock in floods:
                    with contextlib.suppress(zmq.Again):
                        sock.send_multipart([b"", b"ping" * 100], zmq.NOBLOCK)
                    while sock.poll(0):
                        sock.recv_multipart()
                await asyncio.sleep(0.001)
            watch.monitor.stop()
            return watch
        finally:
            for sock in floods:
                sock.close()

    watch = asyncio.run(scenario())
    assert watch.died == [] and len(watch.beats()) >= 6
    assert watch.monitor.state is State.STOPPED
