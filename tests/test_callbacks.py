"""Callbacks that stop the monitor they were called by: nothing more of that run happens."""

from __future__ import annotations

import asyncio
import logging

import pytest

from heartbeat import Beat, Dead, Event, Heart, HeartbeatPool, HeartMonitor, StateChanged
from heartbeat._judge import State
from tests.fakes import FakeFactory


@pytest.mark.parametrize("stop_on", ["dead state", "death"])
def test_an_on_event_callback_that_stops_the_monitor_ends_its_run_there(
    stop_on: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A death comes as StateChanged(..., DEAD) then Dead; stopping on the first means the
    # second, its death line and the death callback belong to a run that is over.
    seen: list[Event] = []
    died: list[bool] = []
    factory = FakeFactory()

    def on_event(event: Event) -> None:
        seen.append(event)
        if (stop_on == "dead state" and isinstance(event, StateChanged)) and (
            event.new is State.DEAD
        ):
            monitor.stop()
        if stop_on == "death" and isinstance(event, Dead):
            monitor.stop()

    monitor = HeartMonitor(
        "tcp://127.0.0.1:9",
        transport=factory,
        time_to_dead=0.4,
        first_beat=0.0,
        on_event=on_event,
    )
    monitor.start(lambda: died.append(True))
    with caplog.at_level(logging.DEBUG, logger="heartbeat"):
        while monitor.running:  # each timer on time, no reply: death
            monitor.timer_due(factory.opened[-1].wakes[-1])
    assert monitor.state is State.DEAD and not monitor.running
    # The Judge's verdict is on the record all the same: state "dead" is never without one.
    assert isinstance(monitor.verdict, Dead) and monitor.verdict.silent_for >= 0.4 - 1e-9
    assert died == []
    assert [r for r in caplog.records if "is dead" in r.getMessage()] == []
    assert [e for e in seen if isinstance(e, Dead)] == (
        [] if stop_on == "dead state" else seen[-1:]
    )
    assert factory.opened[-1].closed


def test_the_last_member_stopped_from_its_reply_callback_leaves_the_pool_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stopping the last member closes the pool's socket while the pool is still reading from
    # it: that is no failed socket.
    with Heart() as heart:

        async def scenario() -> HeartbeatPool:
            pool = HeartbeatPool()
            watching: list[HeartMonitor] = []

            def stop_on_beat(event: Event) -> None:
                if isinstance(event, Beat):
                    watching[0].stop()

            monitor = pool.watch(heart.url, time_to_dead=1.0, first_beat=0.0, on_event=stop_on_beat)
            watching.append(monitor)
            monitor.start()
            while monitor.running:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            return pool

        with caplog.at_level(logging.DEBUG, logger="heartbeat"):
            pool = asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len(pool) == 0 and pool.sockets == 0
