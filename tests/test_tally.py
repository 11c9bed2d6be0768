"""The tally that metrics are read from: its histogram and counters on their own, then real
monitors (a real Judge behind each) driven by hand on a fake clock through the recording
transport of tests/fakes.py, so every gauge is checked across start, beats, lateness, stalls,
stop, restart and death."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from heartbeat import Event, HeartMonitor, Stall, State, Tally
from heartbeat._cause import Kind
from heartbeat._tally import KINDS, RTT_BUCKETS
from tests.fakes import FakeFactory, FakeTransport

# -- the tally alone ----------------------------------------------------------------------------


def test_a_round_trip_equal_to_a_bound_is_counted_at_or_below_it_and_the_rest_above_all() -> None:
    tally = Tally(buckets=(0.001, 0.01))
    for rtt in (0.0002, 0.001, 0.005, 0.01, 0.5, 7.0):
        tally.observe_rtt(rtt)
    assert tally.rtt_buckets() == [(0.001, 2), (0.01, 4), (math.inf, 6)]
    assert tally.rtt_count == 6
    assert tally.rtt_sum == pytest.approx(0.0002 + 0.001 + 0.005 + 0.01 + 0.5 + 7.0)


def test_buckets_must_increase() -> None:
    for bad in ((), (0.1, 0.1), (0.2, 0.1)):
        with pytest.raises(ValueError, match="increasing"):
            Tally(buckets=bad)
    assert Tally().rtt_buckets()[:-1] == [(b, 0) for b in RTT_BUCKETS]


def test_every_cause_of_death_is_counted_from_zero() -> None:
    tally = Tally()
    assert tally.deaths == {kind: 0 for kind in KINDS}
    assert set(KINDS) >= {"exited", "signal", "oom", "frozen", "remote-refused", "unknown"}
    kind: Kind = "signal"
    tally.died(kind)
    tally.died(kind)
    tally.died("oom")
    assert tally.deaths["signal"] == 2 and tally.deaths["oom"] == 1
    assert sum(tally.deaths.values()) == 3


# -- monitors on a fake clock ------------------------------------------------------------------


class Driven:
    """A real HeartMonitor (and Judge) whose transport only records; the test is its clock."""

    def __init__(self, tally: Tally, on_event: Callable[[Event], object] | None = None) -> None:
        self.factory = FakeFactory()
        self.events: list[Event] = []
        self.monitor = HeartMonitor(
            "tcp://127.0.0.1:9",
            transport=self.factory,
            time_to_dead=1.0,
            first_beat=0.0,
            tally=tally,
            on_event=self.events.append if on_event is None else on_event,
        )
        self.died = 0

    @property
    def transport(self) -> FakeTransport:
        return self.factory.opened[-1]

    def start(self) -> float:
        """Start a run; returns its start time, the clock the test then drives."""
        self.monitor.start(self._dead)
        return self.transport.wakes[-1] - self.monitor.interval

    def _dead(self) -> None:
        self.died += 1

    def reply(self, now: float, ping: int = -1) -> None:
        self.monitor.payload_received(now, self.transport.sent[ping])

    def timer(self, now: float) -> None:
        self.monitor.timer_due(now)


def test_a_beat_is_timed_into_the_histogram() -> None:
    tally = Tally()
    heart = Driven(tally)
    t = heart.start()
    heart.reply(t + 0.003)
    heart.timer(t + 0.5)  # the next ping
    heart.reply(t + 0.5004)
    assert tally.rtt_count == 2
    assert tally.rtt_sum == pytest.approx(0.0034)
    buckets = dict(tally.rtt_buckets())
    assert buckets[0.0005] == 1 and buckets[0.0025] == 1 and buckets[0.005] == 2
    assert heart.monitor.stats.count == 2  # the monitor's own statistics are as before


def test_watched_and_late_follow_each_monitor_through_its_states() -> None:
    tally = Tally()
    heart, other = Driven(tally), Driven(tally)
    t = heart.start()
    other.start()
    assert (tally.watched, tally.late) == (2, 0)
    heart.reply(t + 0.001)
    assert heart.monitor.state is State.BEATING
    heart.timer(t + 0.5)  # pings; its answer does not come
    heart.timer(t + 1.0)  # half of time_to_dead after that ping: late
    assert heart.monitor.state is State.LATE
    assert (tally.watched, tally.late) == (2, 1)
    heart.reply(t + 1.01)  # only a reply clears lateness
    assert (tally.watched, tally.late) == (2, 0)
    other.monitor.stop()
    assert (tally.watched, tally.late) == (1, 0)


def test_a_monitor_stopped_while_late_leaves_both_gauges_and_a_restart_counts_it_again() -> None:
    tally = Tally()
    heart = Driven(tally)
    t = heart.start()
    heart.reply(t + 0.001)
    heart.timer(t + 0.5)
    heart.timer(t + 1.0)
    assert (tally.watched, tally.late) == (1, 1)
    heart.monitor.stop()
    assert (tally.watched, tally.late) == (0, 0)
    heart.monitor.stop()  # idempotent: nothing counted twice
    assert (tally.watched, tally.late) == (0, 0)
    heart.start()
    assert (tally.watched, tally.late) == (1, 0)


def test_a_death_leaves_both_gauges() -> None:
    tally = Tally()
    heart = Driven(tally)
    t = heart.start()
    heart.reply(t + 0.001)
    heart.timer(t + 0.5)
    heart.timer(t + 1.0)
    assert tally.late == 1
    heart.timer(t + 1.5)  # the ping of t + 0.5 unanswered for time_to_dead
    assert heart.died == 1 and heart.monitor.state is State.DEAD
    assert (tally.watched, tally.late) == (0, 0)
    heart.monitor.stop()  # a stop after death counts nothing
    heart.start()
    assert (tally.watched, tally.late) == (1, 0)


def test_the_monitors_own_stall_is_counted_as_forgiven() -> None:
    tally = Tally()
    heart = Driven(tally)
    t = heart.start()
    heart.reply(t + 0.001)
    heart.timer(t + 3.0)  # the loop slept 2.5 s past the timer: the monitor's stall
    assert [type(e) for e in heart.events].count(Stall) == 1
    assert tally.stalls == 1 and heart.died == 0
    assert tally.watched == 1


def test_a_callback_that_stops_the_monitor_mid_batch_leaves_the_gauges_exact() -> None:
    # One wake-up whose events are Stall, Ping, then STARTING -> LATE (no reply ever, no grace):
    # a callback stops the monitor at the Stall, so that LATE is never dispatched, while the stop
    # moves the Judge from LATE to STOPPED. The tally must not take LATE away a second time.
    tally = Tally()
    heart = Driven(tally, on_event=lambda e: heart.monitor.stop() if isinstance(e, Stall) else None)
    t = heart.start()
    heart.timer(t + 3.0)
    assert heart.monitor.state is State.STOPPED
    assert (tally.stalls, tally.watched, tally.late) == (1, 0, 0)


def test_a_tally_that_is_not_one_is_named() -> None:
    with pytest.raises(TypeError, match=r"tally must be a heartbeat\.Tally"):
        HeartMonitor("tcp://127.0.0.1:9", transport=FakeFactory(), tally={})  # type: ignore[arg-type]
