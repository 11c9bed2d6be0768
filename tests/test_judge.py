"""Every timing rule of the pure core, on a fake clock, in milliseconds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heartbeat import Beat, Dead, Judge, Ping, RttStats, Stall, State, StateChanged
from tests.judge_sim import World

MS = 0.001


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-9)


def pings(events: list[object]) -> list[int]:
    return [e.token for e in events if isinstance(e, Ping)]


# -- start, pings, replies ----------------------------------------------------------------------


def test_start_pings_at_once_and_asks_for_the_next_ping_one_interval_later() -> None:
    judge = Judge(time_to_dead=3.0, first_beat=5.0)
    assert judge.state is State.IDLE and judge.next_deadline is None
    events = judge.start(100.0)
    assert events == [StateChanged(State.IDLE, State.STARTING), Ping(1)]
    assert judge.interval == 1.5
    assert judge.next_deadline == approx(101.5)


def test_pings_keep_their_pace_whether_or_not_they_are_answered() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=10.0)
    judge.start(0.0)
    tokens = []
    for k in range(1, 6):
        assert judge.next_deadline == approx(k * 0.5)
        tokens += pings(judge.on_timer(k * 0.5))
    assert tokens == [2, 3, 4, 5, 6]


def test_pings_keep_their_cadence_when_the_timer_runs_a_little_late() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=10.0)  # interval 0.5, stall after 0.25
    judge.start(0.0)
    judge.on_timer(0.52)
    judge.on_timer(1.03)
    assert judge.next_deadline == approx(1.5)  # not 1.53: lateness does not accumulate
    judge.on_timer(5.0)  # a stall: the cadence restarts from now
    assert judge.next_deadline == approx(5.5)


def test_with_a_phase_every_ping_after_the_first_is_due_on_the_callers_grid() -> None:
    judge = Judge(time_to_dead=2.0, first_beat=0.0)  # interval 1, stall after 0.5
    assert pings(judge.start(10.3, phase=5.0)) == [1]  # the first at once
    assert judge.next_deadline == approx(11.0)  # 0.7 s later: on the grid 5 + k
    assert pings(judge.on_timer(11.0)) == [2]
    assert judge.next_deadline == approx(12.0)
    judge.on_reply(11.001, 2)
    assert pings(judge.on_timer(12.3)) == [3]  # 0.3 s late, not a stall
    judge.on_reply(12.301, 3)
    assert judge.next_deadline == approx(13.0)  # back on the grid, not 13.3
    events = judge.on_timer(20.0)  # a stall: a fresh ping now ...
    assert isinstance(events[0], Stall) and pings(events) == [4]
    assert judge.next_deadline == approx(21.0)  # ... and the grid again, not now + interval
    assert pings(judge.start(30.0, phase=-0.25)) == [1]  # any phase; a new run may move it
    assert judge.next_deadline == approx(30.75)


@pytest.mark.parametrize("phase", [float("nan"), float("inf"), "0", b"1"])
def test_a_phase_that_is_no_finite_number_is_refused(phase: object) -> None:
    with pytest.raises(TypeError, match="phase must be a finite number"):
        Judge().start(0.0, phase=phase)  # type: ignore[arg-type]


def test_a_reply_is_a_beat_with_its_round_trip() -> None:
    judge = Judge(time_to_dead=3.0, first_beat=5.0)
    judge.start(0.0)
    events = judge.on_reply(0.004, 1)
    assert events[0] == StateChanged(State.STARTING, State.BEATING)
    beat = events[1]
    assert isinstance(beat, Beat) and beat.token == 1 and not beat.stale
    assert beat.rtt == approx(4 * MS)
    assert judge.last_reply == 0.004


def test_a_reply_to_an_older_ping_is_stale_life_timed_against_its_own_ping() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=0.0)
    judge.start(0.0)  # ping 1 at 0 ms
    judge.on_timer(0.5)  # ping 2 at 500 ms
    [_, beat] = judge.on_reply(0.7, 1)
    assert beat == Beat(1, pytest.approx(0.7), stale=True)
    [beat2] = judge.on_reply(0.75, 2)
    assert beat2 == Beat(2, pytest.approx(0.25), stale=False)
    # The stale reply counted as life: silence is measured from the newest reply.
    assert judge.next_deadline is not None
    assert all(not isinstance(e, Dead) for e in judge.on_timer(1.7))


@pytest.mark.parametrize("token", [0, -1, 2, 10**9])
def test_tokens_never_sent_in_this_run_are_ignored(token: int) -> None:
    judge = Judge(time_to_dead=1.0, first_beat=0.0)
    judge.start(0.0)
    assert judge.on_reply(0.1, token) == []
    assert judge.state is State.STARTING and judge.last_reply is None


def test_rtt_is_none_for_a_ping_older_than_the_window_but_it_still_counts() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=1000.0)
    judge.start(0.0)
    t = 0.0
    for _ in range(100):
        t = judge.next_deadline or 0.0
        judge.on_timer(t)
    [_, beat] = judge.on_reply(t + 0.01, 1)
    assert beat == Beat(1, None, stale=True)
    assert judge.last_reply == t + 0.01


# -- rule 1: grace ------------------------------------------------------------------------------


def until_dead(judge: Judge) -> float:
    """Drive the timer on time with no more replies; return when death was declared."""
    while True:
        t = judge.next_deadline
        assert t is not None
        if any(isinstance(e, Dead) for e in judge.on_timer(t)):
            return t


@pytest.mark.parametrize(
    ("ttd", "fb"), [(3.0, 5.0), (0.3, 3.0), (1.0, 0.0), (0.01, 0.0), (10.0, 60.0)]
)
def test_a_silent_heart_dies_exactly_first_beat_plus_time_to_dead_after_start(
    ttd: float, fb: float
) -> None:
    judge = Judge(ttd, fb)
    judge.start(50.0)
    assert until_dead(judge) == approx(50.0 + fb + ttd)


def test_a_heart_that_beat_during_the_grace_and_stopped_still_gets_the_whole_grace() -> None:
    judge = Judge(time_to_dead=3.0, first_beat=5.0)
    judge.start(0.0)
    judge.on_reply(0.001, 1)
    assert until_dead(judge) == approx(8.0)


def test_the_seed_a_kernel_that_binds_after_two_seconds_is_never_dead() -> None:
    # ttd 0.3 s, first_beat 3 s: the heart answers only from 2 s on (queued pings included).
    world = World(Judge(0.3, 3.0), rtt=lambda n: 1 * MS, bind_at=2.0)
    world.run(until=60.0)
    assert world.dead_at is None
    assert world.judge.state is State.BEATING


def test_state_is_starting_through_the_grace_and_late_after_it_without_a_reply() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=2.0)
    judge.start(0.0)
    judge.on_timer(1.5)
    assert judge.state is State.STARTING
    judge.on_timer(2.0)
    assert judge.state is State.LATE


# -- rule 2: detection --------------------------------------------------------------------------


def test_silence_after_the_grace_is_death_exactly_time_to_dead_after_the_last_reply() -> None:
    world = World(Judge(1.0, 0.0), rtt=lambda n: 2 * MS, kill_at=10.0)
    world.run(until=100.0)
    last = max(world.replies_read)
    assert world.dead_at == approx(last + 1.0)
    dead = [e for e in world.events if isinstance(e, Dead)]
    assert dead == [Dead(pytest.approx(1.0))]


def test_late_comes_halfway_between_a_missed_beat_and_death() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=0.0)  # interval 0.5, late after 0.75
    judge.start(0.0)
    judge.on_reply(0.001, 1)
    assert judge.next_deadline == approx(0.5)
    judge.on_timer(0.5)
    assert judge.state is State.BEATING
    assert judge.next_deadline == approx(0.751)
    assert judge.on_timer(0.751) == [StateChanged(State.BEATING, State.LATE)]
    judge.on_reply(0.8, 2)
    assert judge.state is State.BEATING


def test_dead_is_final_until_started_again() -> None:
    judge = Judge(time_to_dead=0.2, first_beat=0.0)
    judge.start(0.0)
    until_dead(judge)
    assert judge.state is State.DEAD and judge.next_deadline is None
    assert judge.on_reply(0.5, 1) == []
    assert judge.on_timer(0.5) == []
    assert judge.stop() == []
    assert judge.state is State.DEAD
    events = judge.start(1.0)
    assert events == [StateChanged(State.DEAD, State.STARTING), Ping(1)]


def test_stop_ends_judging() -> None:
    judge = Judge(time_to_dead=0.2, first_beat=0.0)
    judge.start(0.0)
    assert judge.stop() == [StateChanged(State.STARTING, State.STOPPED)]
    assert judge.next_deadline is None
    assert judge.on_timer(5.0) == []
    assert judge.stop() == []


# -- rule 4: the monitor's own stalls -----------------------------------------------------------


def test_a_timer_much_later_than_asked_is_a_stall_with_a_fresh_ping_and_a_full_ttd() -> None:
    judge = Judge(time_to_dead=3.0, first_beat=0.0)  # stall_after = 0.75
    judge.start(0.0)
    judge.on_reply(0.001, 1)
    assert judge.next_deadline == approx(1.5)
    events = judge.on_timer(4.5)  # the loop was blocked: the deadline (3.001) passed unseen
    assert events[0] == Stall(pytest.approx(3.0))
    assert pings(events) == [2]
    assert judge.stalls == 1
    # A full ttd from the stall's end, even with no reply.
    assert until_dead(judge) == approx(7.5)


def test_lateness_up_to_the_stall_threshold_is_ordinary_and_still_judged() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=0.0)  # interval 0.5, stall_after 0.25
    assert judge.stall_after == approx(0.25)
    judge.start(0.0)
    judge.on_reply(0.001, 1)
    judge.on_timer(0.5 + 0.25)  # ping 2, 250 ms late: not a stall
    assert judge.stalls == 0
    assert judge.next_deadline == approx(0.751)
    judge.on_timer(0.751 + 0.2)  # late wake-up, 200 ms late
    assert judge.state is State.LATE
    assert judge.next_deadline == approx(1.0)  # the next ping, on its cadence
    assert pings(judge.on_timer(1.0)) == [3]
    assert judge.next_deadline == approx(1.001)
    events = judge.on_timer(1.001 + 0.25)  # death deadline, 250 ms late: not a stall
    assert judge.stalls == 0
    assert events[-1] == Dead(pytest.approx(1.25))


def test_a_reply_moves_the_deadline_and_lateness_is_measured_against_the_moved_one() -> None:
    judge = Judge(time_to_dead=2.0, first_beat=0.0)  # interval 1, stall_after 0.5
    judge.start(0.0)
    judge.on_reply(0.001, 1)
    judge.on_timer(1.0)  # ping 2; no reply yet, so the judge asks to see it turn late
    assert judge.next_deadline == approx(1.501)
    judge.on_reply(1.002, 2)
    assert judge.next_deadline == approx(2.0)  # now only the next ping is due
    # The caller re-armed for 2.0 and skipped 1.501. It wakes 400 ms late: lateness counts
    # from the deadline it was asked for, not the old one (900 ms, which would be a stall).
    events = judge.on_timer(2.4)
    assert pings(events) == [3]
    assert judge.stalls == 0
    assert judge.next_deadline == approx(1.002 + 1.5)  # turns late if ping 3 goes unanswered


def test_a_timer_set_before_a_reply_moved_the_deadline_does_nothing() -> None:
    judge = Judge(time_to_dead=2.0, first_beat=0.0)
    judge.start(0.0)
    judge.on_reply(0.001, 1)
    judge.on_timer(1.0)
    judge.on_reply(1.002, 2)
    assert judge.on_timer(1.501) == []
    assert judge.state is State.BEATING and judge.stalls == 0
    assert judge.next_deadline == approx(2.0)


def test_a_stall_does_not_make_a_beating_heart_late() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=0.0)
    judge.start(0.0)
    judge.on_reply(0.001, 1)
    events = judge.on_timer(3.0)  # the loop froze for 2.5 s past the ping due at 0.5
    assert isinstance(events[0], Stall)
    assert judge.state is State.BEATING
    assert judge.next_deadline == approx(3.5)  # the next ping; late only at 3.75


def test_a_stall_forgives_silence_but_is_no_evidence_of_life() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=0.0)
    judge.start(0.0)
    judge.on_reply(0.001, 1)
    judge.on_timer(0.5)
    judge.on_timer(0.751)
    assert judge.state is State.LATE
    events = judge.on_timer(5.0)
    assert isinstance(events[0], Stall)
    assert judge.state is State.LATE


def test_a_sigstopped_manager_does_not_kill_a_live_kernel() -> None:
    # The loop is frozen for 3 s, just before a ping was due; the heart answers in 1 ms.
    world = World(Judge(0.3, 0.5), rtt=lambda n: 1 * MS, stalls=[(2.1, 5.1)])
    world.run(until=20.0)
    assert world.dead_at is None
    assert world.judge.stalls >= 1


def test_a_blocked_loop_with_the_reply_waiting_does_not_kill() -> None:
    # Blocked 2 s right after a ping went out: the reply arrived meanwhile and is flushed.
    world = World(Judge(0.3, 0.0), rtt=lambda n: 1 * MS, stalls=[(1.05, 3.05)])
    world.run(until=10.0)
    assert world.dead_at is None


def test_a_continually_late_loop_still_judges_when_lateness_is_below_the_threshold() -> None:
    world = World(Judge(1.0, 0.0), rtt=lambda n: 1 * MS, kill_at=5.0, lateness=lambda n: 0.2)
    world.run(until=100.0)
    assert world.dead_at is not None
    assert world.dead_at - max(world.replies_read) <= 1.0 + 0.2 + 1e-9


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"time_to_dead": 0}, ValueError, "time_to_dead must be a finite number > 0"),
        ({"time_to_dead": -1.0}, ValueError, "time_to_dead"),
        ({"time_to_dead": math.nan}, ValueError, "nan"),
        ({"time_to_dead": math.inf}, ValueError, "inf"),
        ({"time_to_dead": "3"}, TypeError, "got '3'"),
        ({"time_to_dead": None}, TypeError, "time_to_dead"),
        ({"time_to_dead": True}, TypeError, "True"),
        ({"first_beat": -0.1}, ValueError, "first_beat must be a finite number >= 0"),
        ({"first_beat": math.inf}, ValueError, "first_beat"),
        ({"interval": 0}, ValueError, "interval"),
        ({"interval": 2.0}, ValueError, "at most time_to_dead / 2 = 1.5"),
    ],
)
def test_bad_numbers_are_named(kwargs: dict[str, object], error: type, words: str) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(").replace(".", r"\.")):
        Judge(**kwargs)  # type: ignore[arg-type]


def test_first_beat_zero_and_a_smaller_interval_are_accepted() -> None:
    judge = Judge(time_to_dead=1.0, first_beat=0, interval=0.1)
    assert judge.first_beat == 0.0 and judge.interval == 0.1
    assert judge.stall_after == approx(0.45)


# -- the contract as properties -----------------------------------------------------------------

ttds = st.sampled_from([0.05, 0.3, 1.0, 3.0, 10.0])
fractions = st.floats(min_value=0.0, max_value=0.95)
phases = st.none() | st.floats(min_value=-5.0, max_value=5.0)  # in units of ttd


@settings(max_examples=300, deadline=None)
@given(
    ttd=ttds,
    fb=st.sampled_from([0.0, 0.5, 5.0]),
    interval_frac=st.floats(min_value=0.1, max_value=1.0),
    rtt_fracs=st.lists(fractions, min_size=1, max_size=50),
    late_fracs=st.lists(fractions, min_size=1, max_size=50),
    bind_frac=st.floats(min_value=0.0, max_value=1.0),
    stalls=st.lists(st.tuples(st.floats(0.0, 30.0), st.floats(0.0, 10.0)), max_size=4),
    phase=phases,
)
def test_replies_always_in_time_means_never_dead(
    ttd: float,
    fb: float,
    interval_frac: float,
    rtt_fracs: list[float],
    late_fracs: list[float],
    bind_frac: float,
    stalls: list[tuple[float, float]],
    phase: float | None,
) -> None:
    """Round trips and timer delays below the stall threshold, a heart bound within the grace,
    any number of loop stalls of any length: no death, ever."""
    judge = Judge(ttd, fb, interval=ttd / 2 * interval_frac)
    theta = judge.stall_after
    world = World(
        judge,
        rtt=lambda n: theta * rtt_fracs[n % len(rtt_fracs)],
        lateness=lambda n: theta * late_fracs[n % len(late_fracs)],
        bind_at=fb * bind_frac,
        stalls=[(s * ttd, s * ttd + length * ttd) for s, length in sorted(stalls)],
        phase=None if phase is None else phase * ttd,
    )
    world.run(until=40 * ttd + fb)
    assert world.dead_at is None


@settings(max_examples=300, deadline=None)
@given(
    ttd=ttds,
    fb=st.sampled_from([0.0, 0.5, 5.0]),
    interval_frac=st.floats(min_value=0.1, max_value=1.0),
    rtt_frac=fractions,
    late_fracs=st.lists(fractions, min_size=1, max_size=50),
    kill_frac=st.floats(min_value=0.0, max_value=20.0),
    phase=phases,
)
def test_silence_after_the_grace_means_dead_within_one_and_a_half_ttd(
    ttd: float,
    fb: float,
    interval_frac: float,
    rtt_frac: float,
    late_fracs: list[float],
    kill_frac: float,
    phase: float | None,
) -> None:
    judge = Judge(ttd, fb, interval=ttd / 2 * interval_frac)
    theta = judge.stall_after
    world = World(
        judge,
        rtt=lambda n: theta * rtt_frac,
        lateness=lambda n: theta * late_fracs[n % len(late_fracs)],
        kill_at=kill_frac * ttd,
        phase=None if phase is None else phase * ttd,
    )
    world.run(until=kill_frac * ttd + fb + 10 * ttd)
    assert world.dead_at is not None
    heard = max([*world.replies_read, fb])  # the last reply, or the end of the grace
    assert world.dead_at >= fb + ttd - 1e-9  # rule 1
    assert world.dead_at - max(world.replies_read, default=0.0) >= ttd - 1e-9
    assert world.dead_at - heard <= 1.5 * ttd + 1e-9  # rule 2


@settings(max_examples=200, deadline=None)
@given(
    ttd=ttds,
    fb=st.sampled_from([0.0, 0.5, 5.0, 30.0]),
    rtt_fracs=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=20),
    kill_frac=st.floats(min_value=0.0, max_value=3.0),
)
def test_no_death_is_ever_declared_before_the_grace_and_ttd(
    ttd: float, fb: float, rtt_fracs: list[float], kill_frac: float
) -> None:
    world = World(
        Judge(ttd, fb),
        rtt=lambda n: ttd * rtt_fracs[n % len(rtt_fracs)],
        kill_at=kill_frac * ttd,
    )
    world.run(until=fb + 10 * ttd)
    assert world.dead_at is None or world.dead_at >= fb + ttd - 1e-9


def test_rtt_window_keeps_the_most_recent_beats_only() -> None:
    from heartbeat._stats import RttWindow

    window = RttWindow(size=4)
    assert window.summary() == RttStats(0, 0, None, None, None, None)
    for rtt in [9.0, 8.0, 1.0, 2.0, 3.0, 4.0]:
        window.add(rtt, late=rtt > 5)
    window.add(None, late=False)
    s = window.summary()
    assert (s.count, s.late, s.min, s.max) == (7, 2, 1.0, 4.0)  # 9 and 8 have left the window
    assert s.median == 3.0 and s.p99 == 4.0
    window.clear()
    assert window.summary().count == 0
