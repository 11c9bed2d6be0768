"""The manager side, wired to real kernel processes: the seed, the GIL, stalls, deaths, restarts.

Real time is only used to prove the wiring; the exact rules are in test_judge.py. Bounds are
wide enough for a loaded 2-core machine, and every wait ends on an event or a deadline.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from heartbeat import Beat, Dead, Event, Heart, HeartbeatPool, HeartMonitor, Ping, Stall, State
from tests.conftest import Kernel, free_port
from tests.fakes import FakeFactory

# Scheduling slack allowed on top of the contract's bounds on a loaded machine.
SLACK = 1.0


class Watch:
    """A HeartMonitor plus a record of what it reported, with monotonic timestamps."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.events: list[tuple[float, Event]] = []
        self.died: list[float] = []
        self.during: list[tuple[float, Beat]] = []
        self.monitor = HeartMonitor(url, on_event=self._record, **kwargs)

    def _record(self, event: Event) -> None:
        self.events.append((time.monotonic(), event))

    def start(self) -> None:
        self.monitor.start(lambda: self.died.append(time.monotonic()))

    def beats(self, since: float = 0.0) -> list[tuple[float, Beat]]:
        return [(t, e) for t, e in self.events if isinstance(e, Beat) and t >= since]

    def pings(self, since: float = 0.0) -> list[tuple[float, Ping]]:
        return [(t, e) for t, e in self.events if isinstance(e, Ping) and t >= since]

    def of(self, kind: type) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]

    async def until(self, condition: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.01)
        return True


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the seed and the busy kernel ---------------------------------------------------------------


def test_the_seed_a_kernel_that_binds_two_seconds_late_is_not_dead(
    kernel_factory: Callable[..., Kernel],
) -> None:
    port = free_port()
    kernel = kernel_factory("--url", f"tcp://127.0.0.1:{port}", "--wait-bind", wait=False)
    kernel.read()  # the process is up, its heart is not

    async def scenario() -> Watch:
        watch = Watch(f"tcp://127.0.0.1:{port}", time_to_dead=0.3, first_beat=3.0)
        watch.start()
        await asyncio.sleep(2.0)
        assert watch.monitor.state is State.STARTING
        kernel.command("bind")
        kernel.read()
        bound = time.monotonic()
        assert await watch.until(lambda: bool(watch.beats()), timeout=SLACK)
        await asyncio.sleep(2.0)  # well past first_beat + time_to_dead
        assert watch.beats()[0][0] - bound < 0.5  # the queued ping was answered at once
        watch.monitor.stop()
        return watch

    watch = run(scenario())
    assert watch.died == [] and watch.of(Dead) == []
    assert watch.monitor.state is State.STOPPED


def test_a_kernel_holding_the_gil_for_five_seconds_keeps_beating(kernel: Kernel) -> None:
    async def scenario() -> Watch:
        watch = Watch(kernel.url, time_to_dead=0.3, first_beat=1.0)
        watch.start()
        assert await watch.until(lambda: bool(watch.beats()), timeout=5)
        kernel.command("gil 5")
        held = time.monotonic()
        await asyncio.sleep(5.0)
        watch.during = watch.beats(since=held + 0.5)
        watch.monitor.stop()
        return watch

    watch = run(scenario())
    assert kernel.read(timeout=10) == {"gil": 5.0}  # the call really lasted through the window
    assert watch.died == [] and watch.of(Dead) == []
    assert len(watch.during) >= 10  # ~30 pings in 4.5 s; every one should be answered


# -- the manager's own stalls -------------------------------------------------------------------


def test_a_loop_blocked_two_seconds_is_the_monitors_own_stall_and_no_death(kernel: Kernel) -> None:
    # The stall rule's test (2 s is far past the stall threshold of 0.075 s); the flush before
    # judging, which the stall rule would mask here, has its own test in test_flush.py.
    async def scenario() -> Watch:
        watch = Watch(kernel.url, time_to_dead=0.3, first_beat=0.0)
        watch.start()
        assert await watch.until(lambda: len(watch.beats()) >= 3, timeout=5)
        # Block right after a ping goes out: its reply sits in the socket for 2 s.
        await watch.until(lambda: isinstance(watch.events[-1][1], Ping), timeout=5)
        time.sleep(2.0)
        await asyncio.sleep(1.0)
        watch.monitor.stop()
        return watch

    watch = run(scenario())
    assert watch.died == [] and watch.of(Dead) == []
    assert watch.of(Stall), "the 2 s block should have been seen as the monitor's own stall"


def test_a_manager_stopped_with_sigstop_for_three_seconds_is_no_death(kernel: Kernel) -> None:
    async def scenario() -> Watch:
        watch = Watch(kernel.url, time_to_dead=0.3, first_beat=0.0)
        watch.start()
        assert await watch.until(lambda: len(watch.beats()) >= 3, timeout=5)
        me = os.getpid()
        # Another process suspends this whole process (loop, zmq I/O thread and all), as a
        # laptop lid does, wakes it 3 s later, and says so.
        waker = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            f"kill -STOP {me}; sleep 3; kill -CONT {me}; echo resumed",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert waker.stdout is not None
            line = await asyncio.wait_for(waker.stdout.readline(), timeout=60)
            assert line == b"resumed\n"
        finally:
            if waker.returncode is None:
                waker.kill()
            await waker.wait()
        await asyncio.sleep(1.0)  # more than 3 x time_to_dead of ordinary watching after it
        watch.monitor.stop()
        return watch

    watch = run(scenario())
    assert watch.died == [] and watch.of(Dead) == []
    # The suspension really happened, and was seen as the monitor's own stall.
    assert max(stall.late_by for stall in watch.of(Stall)) >= 2.5


# -- real deaths --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_dead_or_frozen_kernel_is_reported_within_the_bound(kernel: Kernel, how: str) -> None:
    ttd = 1.0

    async def scenario() -> tuple[Watch, float]:
        watch = Watch(kernel.url, time_to_dead=ttd, first_beat=0.5)
        watch.start()
        assert await watch.until(lambda: len(watch.beats()) >= 3, timeout=5)
        if how == "SIGKILL":
            kernel.kill()
        else:
            kernel.freeze()
        gone = time.monotonic()
        assert await watch.until(lambda: bool(watch.died), timeout=1.5 * ttd + 5)
        return watch, gone

    watch, gone = run(scenario())
    last_beat = watch.beats()[-1][0]
    assert last_beat <= gone + 0.1
    latency = watch.died[0] - last_beat
    assert ttd <= latency + 0.01
    assert latency <= 1.5 * ttd + SLACK
    assert len(watch.died) == 1 and len(watch.of(Dead)) == 1
    assert watch.monitor.state is State.DEAD and not watch.monitor.running


def test_the_callback_is_called_once_and_the_monitor_stops_itself() -> None:
    async def scenario() -> Watch:
        watch = Watch(f"tcp://127.0.0.1:{free_port()}", time_to_dead=0.1, first_beat=0.0)
        watch.start()
        assert await watch.until(lambda: bool(watch.died), timeout=5)
        await asyncio.sleep(0.3)
        return watch

    watch = run(scenario())
    assert len(watch.died) == 1
    assert watch.monitor.state is State.DEAD and not watch.monitor.running
    pings_after = [t for t, e in watch.events if isinstance(e, Ping) and t > watch.died[0]]
    assert pings_after == []


# -- lifecycle ----------------------------------------------------------------------------------


def test_stop_during_the_grace_means_the_callback_never_fires() -> None:
    async def scenario() -> Watch:
        watch = Watch(f"tcp://127.0.0.1:{free_port()}", time_to_dead=0.1, first_beat=0.2)
        watch.start()
        await asyncio.sleep(0.1)
        watch.monitor.stop()
        watch.monitor.stop()
        await asyncio.sleep(0.6)  # past when it would have died
        return watch

    watch = run(scenario())
    assert watch.died == [] and watch.monitor.state is State.STOPPED


def test_start_again_after_death_watches_the_restarted_kernel_on_the_same_port(
    kernel_factory: Callable[..., Kernel],
) -> None:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    first = kernel_factory("--url", url)

    async def scenario() -> Watch:
        watch = Watch(url, time_to_dead=0.5, first_beat=0.0)
        watch.start()
        assert await watch.until(lambda: len(watch.beats()) >= 2, timeout=5)
        first.kill()
        assert await watch.until(lambda: bool(watch.died), timeout=5)
        kernel_factory("--url", url)
        watch.start()
        restarted = time.monotonic()
        assert watch.monitor.state is State.STARTING
        assert await watch.until(lambda: bool(watch.beats(since=restarted)), timeout=5)
        await asyncio.sleep(1.0)
        watch.monitor.stop()
        return watch

    watch = run(scenario())
    assert len(watch.died) == 1


def test_url_can_change_while_stopped_only(kernel: Kernel) -> None:
    async def scenario() -> Watch:
        watch = Watch(f"tcp://127.0.0.1:{free_port()}", time_to_dead=0.4, first_beat=0.0)
        watch.monitor.url = kernel.url
        watch.start()
        with pytest.raises(RuntimeError, match="cannot change url"):
            watch.monitor.url = "tcp://127.0.0.1:1"
        with pytest.raises(RuntimeError, match="already running"):
            watch.start()
        assert await watch.until(lambda: bool(watch.beats()), timeout=5)
        watch.monitor.stop()
        return watch

    assert run(scenario()).died == []


def test_a_raising_callback_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise RuntimeError("user bug")

    async def scenario() -> HeartMonitor:
        monitor = HeartMonitor(f"tcp://127.0.0.1:{free_port()}", time_to_dead=0.1, first_beat=0)
        monitor.start(boom)
        end = time.monotonic() + 5
        while monitor.running and time.monotonic() < end:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        return monitor

    with caplog.at_level(logging.ERROR, logger="heartbeat"):
        monitor = run(scenario())
    assert monitor.state is State.DEAD
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.name == "heartbeat" and "user bug" in str(record.exc_info[1])


def test_rtt_statistics(kernel: Kernel) -> None:
    async def scenario() -> HeartMonitor:
        monitor = HeartMonitor(kernel.url, time_to_dead=0.2, first_beat=0.0)
        assert monitor.stats.count == 0 and monitor.last_rtt is None
        monitor.start()
        end = time.monotonic() + 10
        while monitor.stats.count < 10 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        monitor.stop()
        return monitor

    monitor = run(scenario())
    s = monitor.stats
    assert s.count >= 10
    assert s.min is not None and s.median is not None and s.p99 is not None and s.max is not None
    assert 0 < s.min <= s.median <= s.p99 <= s.max < 1.0
    assert monitor.last_rtt is not None


# -- replies that come late, or never -----------------------------------------------------------


class DelayingHeart:
    """A ROUTER echo in a thread that answers the n-th ping ``delay(n)`` seconds late (or a
    fixed ``delay``), and drops the ones ``drop(n)`` picks: a slow link, or a lossy one."""

    def __init__(
        self,
        delay: float | Callable[[int], float],
        drop: Callable[[int], bool] = lambda n: False,
    ) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self.delay = delay if callable(delay) else (lambda n: delay)
        self.drop = drop
        self.running = True
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        queue: list[tuple[float, int, list[bytes]]] = []  # a heap: replies by when they are due
        n = 0
        while self.running:
            timeout = 10 if not queue else max(0, int((queue[0][0] - time.monotonic()) * 1000))
            if self.sock.poll(timeout):
                frames = self.sock.recv_multipart()
                n += 1
                if not self.drop(n):
                    heapq.heappush(queue, (time.monotonic() + self.delay(n), n, frames))
            while queue and queue[0][0] <= time.monotonic():
                self.sock.send_multipart(heapq.heappop(queue)[2])

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()
        self.ctx.term()

    def watch_for(self, seconds: float, **kwargs: Any) -> Watch:
        """Watch this heart for ``seconds``, then close it."""

        async def scenario() -> Watch:
            watch = Watch(self.url, **kwargs)
            watch.start()
            await asyncio.sleep(seconds)
            watch.monitor.stop()
            return watch

        try:
            return run(scenario())
        finally:
            self.close()


def test_replies_slower_than_the_ping_interval_are_life_with_their_true_round_trip() -> None:
    # interval 0.25, ttd 0.5: each reply lands after the next ping went out
    watch = DelayingHeart(delay=0.35).watch_for(3.0, time_to_dead=0.5, first_beat=0.0)
    assert watch.died == []
    rtts = [b.rtt for _, b in watch.beats() if b.rtt is not None]
    assert len(rtts) >= 5
    # Each reply is timed against its own ping, never against the newer one it overtook.
    assert min(rtts) >= 0.35 - 0.01
    assert any(b.stale for _, b in watch.beats())
    assert watch.monitor.stats.late >= 5


def test_a_lost_reply_never_wedges_the_socket() -> None:
    heart = DelayingHeart(delay=0.0, drop=lambda n: n % 2 == 0)  # every other reply is lost
    # Pings every 0.15 s; with every other reply lost, one still comes every 0.3 s.
    watch = heart.watch_for(3.0, time_to_dead=0.6, first_beat=0.0, interval=0.15)
    assert watch.died == []
    assert len(watch.beats()) >= 6
    assert len(watch.of(Ping)) >= 1.6 * len(watch.beats())  # replies really were lost


@pytest.mark.parametrize("pooled", [False, True], ids=["lone", "pool member"])
def test_every_reply_counts_when_replies_overtake_each_other(pooled: bool) -> None:
    # The review's heart: odd pings answered after 50 ms, even ones after 300 ms, so a slow
    # reply is still on its way when the next ping goes out and a fast one overtakes it. A REQ
    # socket kept only the newest request's reply: 20 beats of 41 pings. Every reply is life.
    heart = DelayingHeart(delay=lambda n: 0.05 if n % 2 else 0.3)

    async def scenario() -> Watch:
        pool = HeartbeatPool() if pooled else None
        watch = Watch(heart.url, time_to_dead=2.0, first_beat=0.0, interval=0.25, pool=pool)
        watch.start()
        assert await watch.until(lambda: len(watch.pings()) >= 14, timeout=30)
        await asyncio.sleep(1.5)  # the replies of those 14 are due within 0.3 s of their ping
        watch.monitor.stop()
        return watch

    try:
        watch = run(scenario())
    finally:
        heart.close()
    assert watch.died == []
    sent = [ping.token for _, ping in watch.pings()][:14]
    counted = [beat.token for _, beat in watch.beats()]
    assert len(counted) == len(set(counted))  # each reply counted once
    missed = sorted(set(sent) - set(counted))
    assert not missed, f"replies to pings {missed} were answered but never counted"
    rtts = sorted(b.rtt for _, b in watch.beats() if b.rtt is not None)
    assert rtts[0] >= 0.05 and rtts[-1] >= 0.3  # and timed against its own ping


def test_replies_from_a_previous_run_never_count_in_the_next() -> None:
    factory = FakeFactory()
    beats: list[Beat] = []
    monitor = HeartMonitor(
        "tcp://127.0.0.1:9",
        transport=factory,
        time_to_dead=0.4,
        first_beat=0.0,
        on_event=lambda e: beats.append(e) if isinstance(e, Beat) else None,
    )
    monitor.start()
    first = factory.opened[-1]
    now = first.wakes[0] - monitor.interval
    monitor.payload_received(now + 0.001, first.sent[0])
    assert len(beats) == 1  # a reply of this run
    monitor.stop()
    monitor.start()
    second = factory.opened[-1]
    assert second is not first and first.closed  # a fresh transport for each run
    # The first run's ping carries that run's nonce and token 1, as the second run's first
    # ping does: forged or late, it is ignored.
    assert first.sent[0] != second.sent[0]
    monitor.payload_received(now + 0.2, first.sent[0])
    assert len(beats) == 1
    monitor.payload_received(now + 0.2, second.sent[0])
    assert len(beats) == 2
    monitor.stop()


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"url": "tcp://127.0.0.1:0"}, ValueError, "from 1 to 65535"),
        ({"url": "tcp://*:5555"}, ValueError, "can only be bound"),
        ({"url": "localhost:5555"}, ValueError, "not a zmq endpoint"),
        ({"url": b"tcp://127.0.0.1:5"}, TypeError, "url must be a str"),
        ({"time_to_dead": 0}, ValueError, "time_to_dead"),
        ({"time_to_dead": "3"}, TypeError, "time_to_dead"),
        ({"first_beat": -1}, ValueError, "first_beat"),
        ({"first_beat": float("nan")}, ValueError, "first_beat"),
        ({"interval": 5.0}, ValueError, "interval"),
        ({"context": object()}, TypeError, "context"),
        ({"io_loop": object()}, TypeError, "io_loop"),
        ({"on_event": 3}, TypeError, "on_event"),
        ({"curve_serverkey": b"not-a-key"}, ValueError, "40-character Z85 CURVE key"),
        # Not left to zmq, whose EINVAL at connect() would look like a bad url.
        ({"curve_serverkey": "a" * 39 + " "}, ValueError, "is not Z85"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type, words: str) -> None:
    kwargs = {"url": "tcp://127.0.0.1:5555", **kwargs}
    with pytest.raises(error, match=words):
        HeartMonitor(**kwargs)


def test_an_unresolvable_host_is_silence_dead_after_the_grace_and_leaves_nothing_open() -> None:
    # zmq resolves names in the background: a name that never resolves is a heart never heard.
    ctx: zmq.Context[Any] = zmq.Context()

    async def scenario() -> Watch:
        watch = Watch(
            "tcp://no-such-host.invalid:5555", time_to_dead=0.2, first_beat=0.2, context=ctx
        )
        with pytest.raises(TypeError, match="callback must be callable"):
            watch.monitor.start("not callable")  # type: ignore[arg-type]
        assert watch.monitor.state is State.IDLE and not watch.monitor.running
        watch.start()
        assert await watch.until(lambda: bool(watch.died), timeout=5)
        return watch

    try:
        watch = run(scenario())
        assert watch.died[0] - watch.events[0][0] >= 0.4 - 0.01
        assert not [s for s in ctx._sockets if not s.closed]
    finally:
        ctx.destroy(linger=0)


def test_heart_and_monitor_in_one_process_over_inproc() -> None:
    async def scenario() -> Watch:
        with Heart("inproc://in-process-heart"):
            watch = Watch("inproc://in-process-heart", time_to_dead=0.2, first_beat=0.0)
            watch.start()
            assert await watch.until(lambda: len(watch.beats()) >= 3, timeout=5)
            watch.monitor.stop()
        return watch

    assert run(scenario()).died == []
