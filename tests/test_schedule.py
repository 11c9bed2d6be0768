"""The pool's schedule (batches, ping phases, who is judged at a wake-up), driven step by step
on a fake clock: no loop, no socket."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heartbeat._schedule import Batches, Phases, PoolSchedule

deadlines = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
steps = st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.25, 1.0])


def test_members_due_within_one_batch_share_the_batch_at_its_end() -> None:
    batches: Batches[str] = Batches()
    # A step of 0.25 s keeps the arithmetic exact in binary.
    assert batches.add("a", 100.05, 0.25) == batches.add("b", 100.2, 0.25) == 100.25
    assert batches.add("c", 100.3, 0.25) == 100.5
    assert batches.first() == 100.25
    assert batches.pop_due(100.24) == []
    assert batches.pop_due(100.25) == ["a", "b"]  # in the order they came
    assert batches.pop_due(100.4) == []
    assert batches.pop_due(100.5) == ["c"]
    assert batches.first() is None


def test_a_member_that_left_its_batch_is_not_woken_and_an_empty_batch_is_not_waited_for() -> None:
    batches: Batches[str] = Batches()
    first = batches.add("a", 10.0, 0.5)
    batches.add("b", 12.2, 0.5)
    batches.remove("a", first)
    assert batches.first() == 12.5  # not 10.0: nobody waits there any more
    assert batches.pop_due(11.0) == []
    batches.remove("nobody", 12.5)  # no error, and "b" still waits there
    batches.remove("b", 99.0)  # no such batch
    assert len(batches) == 1
    batches.clear()
    assert batches.first() is None and len(batches) == 0


def test_a_zero_step_gives_every_deadline_its_own_batch() -> None:
    batches: Batches[str] = Batches()
    assert batches.add("a", 1.25, 0.0) == 1.25
    assert batches.add("b", 1.2500001, 0.0) == 1.2500001
    assert batches.pop_due(1.25) == ["a"]


def test_a_long_batch_is_handed_out_a_bounded_number_at_a_time_in_arrival_order() -> None:
    batches: Batches[int] = Batches()
    for member in range(7):
        batches.add(member, 5.1, 0.25)
    assert batches.pop_due(5.25, most=3) == [0, 1, 2]
    assert batches.first() == 5.25  # the rest are still due
    assert batches.pop_due(5.3, most=3) == [3, 4, 5]
    assert batches.pop_due(5.3, most=3) == [6]
    assert batches.pop_due(5.3, most=3) == [] and batches.first() is None


@given(deadline=deadlines, step=steps)
def test_a_batch_opens_at_its_deadline_or_at_most_one_step_after(
    deadline: float, step: float
) -> None:
    opens = Batches[int]().add(1, deadline, step)
    assert deadline <= opens
    assert opens - deadline <= step


@given(
    plan=st.lists(st.tuples(deadlines, st.booleans()), min_size=1, max_size=40),
    step=steps,
    probes=st.lists(st.floats(min_value=0.0, max_value=1.1e6), max_size=20),
    most=st.sampled_from([None, 1, 3]),
)
def test_every_waiting_member_is_woken_exactly_once_never_early_and_batches_are_a_step_apart(
    plan: list[tuple[float, bool]], step: float, probes: list[float], most: int | None
) -> None:
    batches: Batches[int] = Batches()
    opens: dict[int, float] = {}
    for member, (deadline, leaves) in enumerate(plan):
        at = batches.add(member, deadline, step)
        if leaves:
            batches.remove(member, at)
        else:
            opens[member] = at
    assert len(batches) == len(opens)
    distinct = sorted(set(opens.values()))
    if step:
        assert all(b - a >= step * (1 - 1e-9) for a, b in itertools.pairwise(distinct))
    woken: dict[int, float] = {}
    for now in [*sorted(probes), 2e6]:
        while members := batches.pop_due(now, most):
            assert most is None or len(members) <= most
            for member in members:
                assert member not in woken, "woken twice"
                assert plan[member][0] <= opens[member] <= now, "woken before its deadline"
                woken[member] = now
        first = batches.first()
        assert first is None or first > now
    assert woken.keys() == opens.keys()


def test_members_share_a_phase_in_groups_of_at_most_the_size_oldest_group_first() -> None:
    phases: Phases[str] = Phases(size=2)
    assert phases.join("a", 1.0, now=10.3) == 10.3  # the first opens a group at its start
    assert phases.join("b", 1.0, now=10.7) == 10.3  # joins it, whatever its own start
    assert phases.join("c", 1.0, now=11.1) == 11.1  # that group is full: a new one
    assert phases.join("d", 0.5, now=11.2) == 11.2  # another interval, another grid
    phases.leave("a")
    assert phases.join("e", 1.0, now=12.0) == 10.3  # a freed place in the oldest group
    assert phases.join("f", 1.0, now=12.1) == 11.1
    assert phases.join("g", 1.0, now=12.2) == 12.2


def test_a_group_everyone_left_is_gone_and_joining_again_moves_a_member() -> None:
    phases: Phases[str] = Phases(size=5)
    assert phases.join("a", 1.0, now=1.0) == 1.0
    phases.leave("a")
    phases.leave("a")  # no error
    assert phases.join("b", 1.0, now=2.5) == 2.5  # not 1.0: that group is gone
    assert phases.join("c", 1.0, now=2.6) == 2.5
    assert phases.join("b", 1.0, now=3.0) == 2.5  # joining again gives up the old place first
    phases.leave("c")
    assert phases.join("c", 1.0, now=3.1) == 2.5  # so "b" held one place, not two
    phases.clear()
    assert phases.join("d", 1.0, now=4.0) == 4.0


@given(
    plan=st.lists(st.tuples(st.integers(0, 30), st.booleans()), max_size=200),
    size=st.integers(1, 8),
)
def test_no_group_ever_holds_more_than_the_size(plan: list[tuple[int, bool]], size: int) -> None:
    phases: Phases[int] = Phases(size)
    where: dict[int, float] = {}
    for t, (member, joins) in enumerate(plan):
        if joins:
            where[member] = phases.join(member, 1.0, now=float(t))
        else:
            phases.leave(member)
            where.pop(member, None)
        counts: dict[float, int] = {}
        for phase in where.values():
            counts[phase] = counts.get(phase, 0) + 1
        assert max(counts.values(), default=0) <= size


# -- one pool's schedule ------------------------------------------------------------------------


def test_the_default_batch_is_a_tenth_of_the_shortest_interval_until_everyone_has_left() -> None:
    schedule: PoolSchedule[str] = PoolSchedule(None, phase_size=1024)
    assert schedule.batch is None
    schedule.join("slow", interval=2.0, now=0.0)
    assert schedule.batch == 0.2
    schedule.join("fast", interval=0.5, now=0.0)
    assert schedule.batch == 0.05
    schedule.leave("fast")
    assert schedule.batch == 0.05  # never coarser while members are judged on the finer grid
    schedule.leave("slow")
    assert schedule.batch is None and len(schedule) == 0  # chosen afresh by the next members


def test_an_explicit_batch_too_coarse_for_a_member_is_refused_by_name() -> None:
    schedule: PoolSchedule[str] = PoolSchedule(0.2, phase_size=1024)
    with pytest.raises(ValueError, match=r"batch of 0.2 s is too coarse for h .* at most 0.125 s"):
        schedule.check("h", time_to_dead=1.0, interval=0.5, stall_after=0.25)
    schedule.check("h", time_to_dead=2.0, interval=1.0, stall_after=0.5)


def test_the_timer_follows_the_earliest_batch_and_moves_when_its_members_re_arm_or_leave() -> None:
    schedule: PoolSchedule[str] = PoolSchedule(0.25, phase_size=1024)
    for name in "abc":
        schedule.join(name, interval=1.0, now=0.0)
    schedule.wake_at("a", 1.1)
    schedule.wake_at("b", 1.2)
    schedule.wake_at("c", 2.0)
    assert schedule.next_wake == 1.25  # a and b share one wake-up
    schedule.wake_at("a", 1.9)
    assert schedule.next_wake == 1.25  # b still waits there
    schedule.leave("b")
    assert schedule.next_wake == 2.0  # nobody waits at 1.25: no wake-up for nobody
    schedule.leave("a")
    schedule.leave("c")
    assert schedule.next_wake is None


def test_a_member_handed_out_is_pending_until_it_re_arms_or_leaves() -> None:
    schedule: PoolSchedule[str] = PoolSchedule(0.25, phase_size=1024)
    for name in "abcde":
        schedule.join(name, interval=1.0, now=0.0)
        schedule.wake_at(name, 1.0)
    first = schedule.due(1.0, most=2)
    assert first == ["a", "b"] and all(schedule.pending(m) for m in first)
    schedule.wake_at("a", 2.0)  # judged: it asked for its next time
    schedule.leave("b")  # stopped while its batch was judged
    assert not schedule.pending("a") and not schedule.pending("b")
    assert schedule.due(1.0, most=2) == ["c", "d"]  # the socket is read between the two
    assert schedule.due(1.0, most=2) == ["e"]
    assert schedule.due(1.0, most=2) == []
    assert schedule.next_wake == 2.0


@given(
    intervals=st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=1, max_size=30),
    starts=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=30),
    wakes=st.integers(1, 40),
)
def test_a_member_is_judged_at_or_after_its_deadline_and_within_one_batch_of_it(
    intervals: list[float], starts: list[float], wakes: int
) -> None:
    """Members ping on their cadence and ask to be judged at each next ping, as Judges do;
    the pool's timer wakes exactly when ``next_wake`` says."""
    schedule: PoolSchedule[int] = PoolSchedule(None, phase_size=4)
    asked: dict[int, tuple[float, float]] = {}  # deadline, and the batch in force then

    def arm(member: int, deadline: float) -> None:
        schedule.wake_at(member, deadline)
        assert schedule.batch is not None
        asked[member] = (deadline, schedule.batch)

    for member, interval in enumerate(intervals):
        start = starts[member % len(starts)]
        schedule.join(member, interval, start)
        arm(member, start + interval)
    assert schedule.batch == min(intervals) / 10
    for _ in range(wakes):
        now = schedule.next_wake
        assert now is not None
        judged = 0
        while members := schedule.due(now, most=5):
            for member in members:
                assert schedule.pending(member)
                deadline, batch = asked[member]
                assert deadline <= now <= deadline + batch + 1e-9
                arm(member, now + intervals[member])
                judged += 1
        assert judged >= 1  # never a wake-up for nobody


def test_a_wake_up_reads_before_judging_and_again_every_most_members() -> None:
    # Flush before judging holds inside one wake-up too: 10,000 kernels started together take
    # ~150 ms to judge, and a reply that lands meanwhile must be read before its member is.
    schedule: PoolSchedule[int] = PoolSchedule(0.1, phase_size=1024)
    for member in range(600):
        schedule.join(member, interval=1.0, now=0.0)
        schedule.wake_at(member, 1.0)
    log: list[str] = []
    clock = iter(1.0 + k * 0.01 for k in range(100))

    def judge(member: int, now: float) -> None:
        log.append(f"judge {member} at {now:.2f}")
        schedule.wake_at(member, now + 1.0)  # as a Judge re-arms

    def read() -> bool:
        log.append("read")
        return True

    schedule.wake(lambda: next(clock), read, judge, most=256)
    reads = [i for i, entry in enumerate(log) if entry == "read"]
    assert reads == [0, 257, 514, 603]  # before, after each 256 judged, after the rest
    assert log[1] == "judge 0 at 1.00" and log[258] == "judge 256 at 1.01"  # a fresh now
    assert log[515] == "judge 512 at 1.02"
    assert schedule.next_wake == 2.0  # everyone re-armed for their next ping


def test_a_member_that_raises_and_the_rest_of_its_batch_wait_for_the_next_wake_up() -> None:
    schedule: PoolSchedule[str] = PoolSchedule(0.25, phase_size=1024)
    for name in "abcd":
        schedule.join(name, interval=1.0, now=0.0)
        schedule.wake_at(name, 1.0)
    judged: list[str] = []

    def judge(member: str, now: float) -> None:
        if member == "b" and not judged.count("b!"):
            judged.append("b!")
            raise RuntimeError("a member's judgement failed")
        judged.append(member)
        schedule.wake_at(member, now + 1.0)

    with pytest.raises(RuntimeError):
        schedule.wake(lambda: 1.1, lambda: True, judge, most=256)
    assert judged == ["a", "b!"]
    assert schedule.next_wake == 1.25  # b, c and d: judged at the next batch, not dropped
    schedule.wake(lambda: 1.25, lambda: True, judge, most=256)
    assert judged == ["a", "b!", "b", "c", "d"]
    assert schedule.next_wake == 2.25  # a (judged at 1.1) and the others (at 1.25) share it


def test_a_wake_up_stops_when_the_pool_has_no_socket_left() -> None:
    schedule: PoolSchedule[str] = PoolSchedule(0.25, phase_size=1024)
    schedule.join("a", interval=1.0, now=0.0)
    schedule.wake_at("a", 1.0)
    judged: list[str] = []
    schedule.wake(lambda: 1.0, lambda: False, lambda m, now: judged.append(m), most=256)
    assert judged == []
