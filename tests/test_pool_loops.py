"""A pool and the event loops it runs on: one at a time, and none kept once finished."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest
from tornado.ioloop import IOLoop

from heartbeat import Heart, HeartbeatPool, HeartMonitor
from heartbeat.jupyter.kernel import shared_pool


async def beats(monitor: HeartMonitor, count: int = 3) -> bool:
    monitor.start()
    try:
        for _ in range(1000):
            if monitor.stats.count >= count:
                return True
            await asyncio.sleep(0.01)
        return False
    finally:
        monitor.stop()


def test_a_process_that_runs_many_event_loops_keeps_none_of_their_shared_pools() -> None:
    loops: list[weakref.ref[IOLoop]] = []
    with Heart() as heart:

        async def one_run() -> bool:
            loops.append(weakref.ref(IOLoop.current()))
            pool = shared_pool(logging.getLogger("tests"))
            return await beats(pool.watch(heart.url, time_to_dead=0.4, first_beat=0.0))

        assert all(asyncio.run(one_run()) for _ in range(5))
    gc.collect()
    # tornado keeps the newest loop's IOLoop until the next loop is made; none before it may
    # be kept (the registry of shared pools kept all five).
    assert [ref for ref in loops[:-1] if ref() is not None] == []


def test_a_pool_watches_from_the_next_loop_once_it_has_nothing_left_to_watch() -> None:
    pool = HeartbeatPool()
    with Heart() as heart:
        for _ in range(3):  # one asyncio.run() after another, as a script or a test suite does
            assert asyncio.run(beats(pool.watch(heart.url, time_to_dead=0.4, first_beat=0.0)))
    assert pool.sockets == 0


def test_a_member_started_from_another_loop_than_the_pools_is_refused_by_name() -> None:
    pool = HeartbeatPool()
    with Heart() as heart:

        async def on_another_loop() -> None:
            with pytest.raises(RuntimeError, match="on another loop") as info:
                pool.watch(heart.url).start()
            assert heart.url in str(info.value)

        async def scenario() -> None:
            first = pool.watch(heart.url, time_to_dead=0.4, first_beat=0.0)
            first.start()
            try:
                await asyncio.to_thread(asyncio.run, on_another_loop())
                assert await beats(pool.watch(heart.url, time_to_dead=0.4, first_beat=0.0))
            finally:
                first.stop()

        asyncio.run(scenario())
