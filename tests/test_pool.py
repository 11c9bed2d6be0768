"""HeartbeatPool: many monitors, one socket, one timer, the same rules."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

from heartbeat import Dead, Heart, HeartbeatPool, HeartMonitor, State
from heartbeat.transport import HeartSpec, Listener, Transport
from tests.conftest import Kernel, free_port, run_python
from tests.fakes import FakeFactory
from tests.test_monitor import SLACK, Watch


def pooled(pool: HeartbeatPool, url: str, **kwargs: Any) -> Watch:
    watch = Watch(url, **kwargs)
    watch.monitor = HeartMonitor(url, pool=pool, on_event=watch._record, **kwargs)
    return watch


def test_a_hundred_hearts_beat_through_one_socket_and_one_dies_alone(
    kernel_factory: Callable[..., Kernel],
) -> None:
    victim = kernel_factory()
    hearts = [Heart() for _ in range(100)]
    for heart in hearts:
        heart.start()

    async def scenario() -> tuple[list[Watch], Watch, float]:
        pool = HeartbeatPool()
        watches = [pooled(pool, h.url, time_to_dead=1.0, first_beat=0.5) for h in hearts]
        doomed = pooled(pool, victim.url, time_to_dead=1.0, first_beat=0.5)
        for w in [*watches, doomed]:
            w.start()
        assert len(pool) == 101
        assert await doomed.until(lambda: len(doomed.beats()) >= 3, timeout=10)
        victim.kill()
        killed = time.monotonic()
        assert await doomed.until(lambda: bool(doomed.died), timeout=10)
        await asyncio.sleep(1.0)
        pool.close()
        assert len(pool) == 0 and pool.sockets == 0
        return watches, doomed, killed

    try:
        watches, doomed, killed = asyncio.run(scenario())
    finally:
        for heart in hearts:
            heart.stop()
    assert all(w.died == [] and len(w.beats()) >= 4 for w in watches)
    assert all(w.monitor.state is State.STOPPED for w in watches)
    last = doomed.beats()[-1][0]
    assert last <= killed + 0.1
    assert 1.0 - 0.01 <= doomed.died[0] - last <= 1.5 + SLACK
    assert doomed.monitor.state is State.DEAD


def test_the_seed_in_a_pool_a_heart_bound_late_within_the_grace_is_not_dead() -> None:
    port = free_port()

    async def scenario() -> Watch:
        pool = HeartbeatPool()
        watch = pooled(pool, f"tcp://127.0.0.1:{port}", time_to_dead=0.3, first_beat=3.0)
        watch.start()
        await asyncio.sleep(2.0)
        with Heart(f"tcp://127.0.0.1:{port}"):
            assert await watch.until(lambda: bool(watch.beats()), timeout=2)
            await asyncio.sleep(2.0)
        watch.monitor.stop()
        return watch

    watch = asyncio.run(scenario())
    assert watch.died == []


def test_a_blocked_loop_kills_no_member() -> None:
    hearts = [Heart() for _ in range(20)]
    for heart in hearts:
        heart.start()

    async def scenario() -> list[Watch]:
        pool = HeartbeatPool()
        watches = [pooled(pool, h.url, time_to_dead=0.3, first_beat=0.0) for h in hearts]
        for w in watches:
            w.start()
        assert await watches[0].until(lambda: all(w.beats() for w in watches), timeout=10)
        time.sleep(2.0)  # the loop is blocked: every member's deadline passes unseen
        await asyncio.sleep(1.0)
        pool.close()
        return watches

    try:
        watches = asyncio.run(scenario())
    finally:
        for heart in hearts:
            heart.stop()
    assert all(w.died == [] for w in watches)
    assert all(w.monitor.stalls >= 1 for w in watches)


def test_members_stop_and_restart_independently_and_the_socket_closes_when_idle() -> None:
    async def scenario() -> None:
        with Heart() as a, Heart() as b:
            pool = HeartbeatPool()
            wa = pooled(pool, a.url, time_to_dead=0.3, first_beat=0.0)
            wb = pooled(pool, b.url, time_to_dead=0.3, first_beat=0.0)
            wa.start()
            wb.start()
            assert await wa.until(lambda: bool(wa.beats() and wb.beats()), timeout=5)
            wa.monitor.stop()
            assert len(pool) == 1 and pool.sockets == 1
            before = len(wb.beats())
            assert await wb.until(lambda: len(wb.beats()) > before + 3, timeout=5)
            wa.start()
            restarted = time.monotonic()
            assert await wa.until(lambda: bool(wa.beats(since=restarted)), timeout=5)
            wa.monitor.stop()
            wb.monitor.stop()
            assert len(pool) == 0 and pool.sockets == 0
            assert wa.died == [] and wb.died == []
            pool.close()  # idempotent

    asyncio.run(scenario())


def test_inproc_hearts_in_a_pool() -> None:
    async def scenario() -> Watch:
        with Heart("inproc://pooled-heart"):
            pool = HeartbeatPool()
            watch = pooled(pool, "inproc://pooled-heart", time_to_dead=0.2, first_beat=0.0)
            watch.start()
            assert await watch.until(lambda: len(watch.beats()) >= 3, timeout=5)
            pool.close()
        return watch

    assert asyncio.run(scenario()).died == []


def test_members_started_at_different_moments_ping_in_one_burst_from_their_second_ping() -> None:
    # 40 members started over one interval (0.2 s) share one ping phase: after their first
    # ping they ping together, so the pool wakes about once an interval (five times a second),
    # not once a batch of 0.02 s (fifty) nor once a member (two hundred).
    urls = [f"inproc://phased-{i}" for i in range(40)]

    async def scenario() -> tuple[int, float, int]:
        with contextlib.ExitStack() as hearts:
            for url in urls:
                hearts.enter_context(Heart(url))
            pool = HeartbeatPool()
            monitors = [pool.watch(url, time_to_dead=0.4, first_beat=1.0) for url in urls]
            for m in monitors:
                m.start()
                await asyncio.sleep(0.2 / len(monitors))
            assert pool.batch == pytest.approx(0.02)
            await asyncio.sleep(0.5)
            wakes = pool.wakeups
            beats, start = sum(m.stats.count for m in monitors), time.monotonic()
            await asyncio.sleep(1.0)
            span = time.monotonic() - start
            beats = sum(m.stats.count for m in monitors) - beats
            wakes = pool.wakeups - wakes
            pool.close()
        return wakes, span, beats

    count, span, beats = asyncio.run(scenario())
    assert beats >= 80  # every member pinged and answered, about five times each
    assert count <= span / 0.2 + 3


def test_a_beating_member_wakes_the_pool_once_per_ping() -> None:
    # Late and dead are counted from a ping, and the next ping is due no later than either:
    # the Judge asks for one wake-up a ping, and a reply re-arms nothing.

    async def scenario() -> tuple[int, int]:
        # A heart that answers 20 ms late, so its reply always comes after the pool has set
        # its timer (an instant echo can be read first, and then no timer is left to move).
        context = zmq.asyncio.Context()
        heart = context.socket(zmq.ROUTER)
        heart.linger = 0
        port = heart.bind_to_random_port("tcp://127.0.0.1")

        async def echo_late() -> None:
            while True:
                frames = await heart.recv_multipart()
                await asyncio.sleep(0.02)
                await heart.send_multipart(frames)

        echo = asyncio.create_task(echo_late())
        pool = HeartbeatPool()
        try:
            monitor = pool.watch(f"tcp://127.0.0.1:{port}", time_to_dead=1.0, first_beat=1.0)
            monitor.start()
            await asyncio.sleep(0.6)
            wakes, beats = pool.wakeups, monitor.stats.count
            await asyncio.sleep(3.0)
            return pool.wakeups - wakes, monitor.stats.count - beats
        finally:
            pool.close()
            echo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await echo
            heart.close()
            context.term()

    count, beats = asyncio.run(scenario())
    assert beats >= 4  # pinged every 0.5 s, and answered
    assert count <= beats + 2  # one wake-up a ping (twice as many if the timer were left)


class _RaisingOnce:
    """A Listener in front of a real monitor, whose next judgement raises once when armed."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.armed = False

    def timer_due(self, now: float) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("a member's judgement failed")
        self.listener.timer_due(now)

    def payload_received(self, now: float, payload: bytes) -> None:
        self.listener.payload_received(now, payload)

    def transport_failed(self, reason: str) -> None:
        self.listener.transport_failed(reason)

    def transport_closed(self) -> None:
        self.listener.transport_closed()


class _RaisingFactory:
    """The pool, with a listener in front of each member that can be made to raise."""

    def __init__(self, pool: HeartbeatPool) -> None:
        self.pool = pool
        self.listeners: list[_RaisingOnce] = []

    def check(self, heart: HeartSpec) -> None:
        self.pool.check(heart)

    def open(self, heart: HeartSpec, listener: Listener) -> Transport:
        raising = _RaisingOnce(listener)
        self.listeners.append(raising)
        return self.pool.open(heart, raising)


def test_a_member_that_raises_leaves_nobody_in_its_batch_unwatched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Members due together are judged in one wake-up, in the order they armed. If one of them
    # raises (a bug of ours, a KeyboardInterrupt), the members after it in that batch, and the
    # one that raised, must still be judged at the next wake-up, not dropped from the clock
    # (the rule itself is tested on a fake clock in test_schedule.py).
    urls = [f"inproc://raising-{i}" for i in range(20)]

    async def scenario() -> tuple[list[int], list[int], bool]:
        with contextlib.ExitStack() as hearts:
            for url in urls:
                hearts.enter_context(Heart(url))
            # A batch as long as allowed, members started at once: they share wake-ups.
            pool = HeartbeatPool(batch=0.05)
            factory = _RaisingFactory(pool)
            monitors = [
                HeartMonitor(url, transport=factory, time_to_dead=0.4, first_beat=1.0)
                for url in urls
            ]
            for m in monitors:
                m.start()
            await asyncio.sleep(0.3)
            factory.listeners[0].armed = True  # the first to arm: its batch-mates follow it
            before = [m.stats.count for m in monitors]
            await asyncio.sleep(0.8)
            after = [m.stats.count for m in monitors]
            pool.close()
        return before, after, factory.listeners[0].armed

    with caplog.at_level("ERROR"):
        before, after, still_armed = asyncio.run(scenario())
    assert not still_armed, "the member was never judged"
    assert any(
        "a member's judgement failed" in r.getMessage() + str(r.exc_info) for r in caplog.records
    )
    # Pinged every 0.2 s: 0.8 s is four pings; a member dropped from the clock gets none.
    assert all(a >= b + 2 for b, a in zip(before, after, strict=True)), (before, after)


def test_a_silent_member_dies_after_the_grace_exactly_like_a_lone_monitor() -> None:
    async def scenario() -> Watch:
        pool = HeartbeatPool()
        watch = pooled(pool, f"tcp://127.0.0.1:{free_port()}", time_to_dead=0.2, first_beat=0.3)
        watch.start()
        assert await watch.until(lambda: bool(watch.died), timeout=5)
        return watch

    watch = asyncio.run(scenario())
    [dead] = watch.of(Dead)
    assert dead.silent_for >= 0.5 - 0.01  # silent since start: first_beat + time_to_dead
    assert watch.died[0] - watch.events[0][0] >= 0.5 - 0.01


def test_bad_arguments() -> None:
    pool = HeartbeatPool()
    with pytest.raises(TypeError, match="pool must be a HeartbeatPool"):
        HeartMonitor("tcp://127.0.0.1:5555", pool="pool")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch"):
        HeartbeatPool(batch=-1)
    with pytest.raises(TypeError, match="context"):
        HeartbeatPool(context=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time_to_dead"):
        pool.watch("tcp://127.0.0.1:5555", time_to_dead=0)
    # Stall threshold (1 - 0.5) / 2 = 0.25: batching may take at most half of it.
    coarse = HeartbeatPool(batch=0.2)
    with pytest.raises(ValueError, match=r"batch of 0.2 s is too coarse .* at most 0.125 s"):
        coarse.watch("tcp://127.0.0.1:5555", time_to_dead=1.0)
    assert coarse.watch("tcp://127.0.0.1:5555", time_to_dead=2.0).time_to_dead == 2.0


def test_the_default_batch_is_a_tenth_of_the_shortest_member_interval() -> None:
    async def scenario() -> list[float | None]:
        pool = HeartbeatPool()
        seen = [pool.batch]
        slow = pool.watch("tcp://127.0.0.1:9", time_to_dead=2.0, first_beat=60)
        fast = pool.watch("tcp://127.0.0.1:9", time_to_dead=1.0, interval=0.2, first_beat=60)
        slow.start()
        seen.append(pool.batch)
        fast.start()
        seen.append(pool.batch)
        pool.close()  # empty again: the next members set it afresh
        seen.append(pool.batch)
        return seen

    assert asyncio.run(scenario()) == [None, pytest.approx(0.1), pytest.approx(0.02), None]
    assert HeartbeatPool(batch=0.005).batch == 0.005


POOL_FD_LIMIT = textwrap.dedent(
    """
    import asyncio, resource, sys
    from heartbeat import HeartbeatPool
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
    paths = int(sys.argv[1])

    async def main():
        pool = HeartbeatPool()
        try:
            for i in range(1000):
                url = f"tcp://127.0.0.1:{20000 + i}"
                pool.watch(url, first_beat=60, paths=paths).start()
        except OSError as exc:
            print(len(pool), exc)
        pool.close()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("paths", [1, 4])
def test_the_file_descriptor_limit_is_a_clear_error_that_names_it(paths: int) -> None:
    result = run_python(POOL_FD_LIMIT, args=[str(paths)])
    assert result.returncode == 0, result.stderr
    count, _, message = result.stdout.strip().partition(" ")
    assert int(count) == (200 - 64) // paths  # a descriptor a connection, a connection a path
    assert "may open 200" in message and "ulimit -n" in message
    assert f"over {paths} paths" in message and "fewer paths" in message


def test_a_beating_member_asks_for_one_wake_up_a_ping_and_a_reply_asks_for_none() -> None:
    # With 10,000 members every needless wake-up is 10,000 of them.
    factory = FakeFactory()
    monitor = HeartMonitor("tcp://127.0.0.1:9", transport=factory, time_to_dead=2.0, first_beat=0.0)
    monitor.start()
    fake = factory.opened[-1]
    t0 = fake.wakes[0] - monitor.interval  # started then: the next ping is due an interval on
    for k in range(5):
        now = t0 + k
        if k:
            monitor.timer_due(now)  # the timer the member armed last, on time
        assert fake.wakes[-1] == pytest.approx(now + 1.0)  # the next ping, and only that
        asked = len(fake.wakes)
        monitor.payload_received(now + 0.002, fake.sent[-1])  # the echo
        assert len(fake.wakes) == asked
    assert len(fake.wakes) == 5
    assert len(fake.sent) == 5
    monitor.stop()
    assert fake.closed
