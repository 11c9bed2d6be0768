"""Flush before judging, the seed's second cause: a loaded manager judged a heart dead while its
reply already sat unread in the socket.

On asyncio's own loop this cannot be shown: each turn polls for I/O before it runs the timers
that came due, so a reply that arrived before the deadline is read before the verdict whether
the transport flushes or not. libuv's loop (uvloop, which servers run tornado on) runs the due
timers first: after a callback that blocked the loop through both the reply's arrival and the
deadline, the verdict comes before the loop has looked at the socket. Only the transport's own
read before judging then keeps a live heart alive; the block is shorter than the stall
threshold, so the stall rule forgives nothing.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
import uvloop

from heartbeat import Beat, Dead, Event, HeartbeatPool, HeartMonitor, Ping, Stall
from tests.test_monitor import DelayingHeart

TTD = 3.0
INTERVAL = 0.5  # the stall threshold is (3 - 0.5) / 2 = 1.25 s
TARGET = 4  # the ping answered late, with nothing else heard until its deadline
REPLY_AFTER = 2.6  # its reply comes after 2.6 s, within ttd
BLOCK = (2.0, 1.2)  # the loop is blocked from 2.0 s after that ping, for 1.2 s (< 1.25 s)
SILENT = range(TARGET + 1, TARGET + 6)  # pings sent before its deadline: never answered


@pytest.fixture
def heart() -> Iterator[DelayingHeart]:
    heart = DelayingHeart(
        delay=lambda n: REPLY_AFTER if n == TARGET else 0.01, drop=lambda n: n in SILENT
    )
    try:
        yield heart
    finally:
        heart.close()


@pytest.mark.parametrize("pooled", [False, True], ids=["lone", "pool member"])
def test_a_reply_waiting_when_a_late_timer_judges_is_read_first(
    heart: DelayingHeart, pooled: bool
) -> None:
    events: list[tuple[float, Event]] = []
    blocked: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        # A slow request, say: a reader callback that holds the loop. Its socket is made
        # readable from a timer, so the block runs in the loop's I/O phase.
        rsock, wsock = socket.socketpair()

        def slow_request() -> None:
            rsock.recv(1)
            blocked.append(time.monotonic())
            time.sleep(BLOCK[1])
            blocked.append(time.monotonic())

        loop.add_reader(rsock, slow_request)

        def record(event: Event) -> None:
            events.append((time.monotonic(), event))
            if isinstance(event, Ping) and sum(isinstance(e, Ping) for _, e in events) == TARGET:
                loop.call_later(BLOCK[0], wsock.send, b"x")

        pool = HeartbeatPool() if pooled else None
        monitor = HeartMonitor(
            heart.url,
            time_to_dead=TTD,
            first_beat=0.0,
            interval=INTERVAL,
            pool=pool,
            on_event=record,
        )
        try:
            monitor.start()
            end = time.monotonic() + 30
            while len(blocked) < 2 or not any(isinstance(e, Beat) for t, e in events[-3:]):
                assert time.monotonic() < end and monitor.running, "dead, or stuck"
                await asyncio.sleep(0.05)
            await asyncio.sleep(INTERVAL * 2)
        finally:
            monitor.stop()
            loop.remove_reader(rsock)
            rsock.close()
            wsock.close()

    uvloop.run(scenario())
    assert [e for _, e in events if isinstance(e, Dead)] == []
    assert [e for _, e in events if isinstance(e, Stall)] == []  # the stall rule forgave nothing
    sent = next(t for t, e in events if isinstance(e, Ping) and e.token == TARGET)
    start, end = blocked
    # The scenario happened: the block began before the reply was due and outlasted the
    # deadline, and the reply was first read once it was over.
    assert start - sent < REPLY_AFTER and end - sent > TTD
    [(read, _)] = [(t, e) for t, e in events if isinstance(e, Beat) and e.token == TARGET]
    assert read >= end
