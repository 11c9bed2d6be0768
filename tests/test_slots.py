"""The pool's wake-up slots, driven step by step: no clock, no loop, no socket."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from heartbeat._slots import Phases, Slots

deadlines = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
steps = st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.25, 1.0])


def test_members_due_within_one_batch_share_the_slot_at_its_end() -> None:
    slots: Slots[str] = Slots()
    # A step of 0.25 s keeps the arithmetic exact in binary.
    assert slots.add("a", 100.05, 0.25) == slots.add("b", 100.2, 0.25) == 100.25
    assert slots.add("c", 100.3, 0.25) == 100.5
    assert slots.first() == 100.25
    assert slots.pop_due(100.24) == []
    assert slots.pop_due(100.25) == ["a", "b"]  # in the order they came
    assert slots.pop_due(100.4) == []
    assert slots.pop_due(100.5) == ["c"]
    assert slots.first() is None


def test_a_member_that_left_its_slot_is_not_woken_and_an_empty_slot_is_not_waited_for() -> None:
    slots: Slots[str] = Slots()
    first = slots.add("a", 10.0, 0.5)
    slots.add("b", 12.2, 0.5)
    assert slots.remove("a", first)  # True: that slot is now empty
    assert slots.first() == 12.5  # not 10.0: nobody waits there any more
    assert slots.pop_due(11.0) == []
    assert not slots.remove("nobody", 12.5)  # no error, and "b" still waits there
    assert not slots.remove("b", 99.0)  # no such slot
    assert len(slots) == 1
    slots.clear()
    assert slots.first() is None and len(slots) == 0


def test_a_zero_step_gives_every_deadline_its_own_slot() -> None:
    slots: Slots[str] = Slots()
    assert slots.add("a", 1.25, 0.0) == 1.25
    assert slots.add("b", 1.2500001, 0.0) == 1.2500001
    assert slots.pop_due(1.25) == ["a"]


@given(deadline=deadlines, step=steps)
def test_a_slot_opens_at_its_deadline_or_at_most_one_step_after(
    deadline: float, step: float
) -> None:
    slot = Slots[int]().add(1, deadline, step)
    assert deadline <= slot
    assert slot - deadline <= step


@given(
    plan=st.lists(st.tuples(deadlines, st.booleans()), min_size=1, max_size=40),
    step=steps,
    probes=st.lists(st.floats(min_value=0.0, max_value=1.1e6), max_size=20),
)
def test_every_waiting_member_is_woken_exactly_once_never_early_and_slots_are_a_step_apart(
    plan: list[tuple[float, bool]], step: float, probes: list[float]
) -> None:
    slots: Slots[int] = Slots()
    opens: dict[int, float] = {}
    for member, (deadline, leaves) in enumerate(plan):
        slot = slots.add(member, deadline, step)
        if leaves:
            slots.remove(member, slot)
        else:
            opens[member] = slot
    assert len(slots) == len(opens)
    distinct = sorted(set(opens.values()))
    if step:
        assert all(b - a >= step * (1 - 1e-9) for a, b in itertools.pairwise(distinct))
    woken: dict[int, float] = {}
    for now in [*sorted(probes), 2e6]:
        while members := slots.pop_due(now):
            for member in members:
                assert member not in woken, "woken twice"
                assert plan[member][0] <= opens[member] <= now, "woken before its deadline"
                woken[member] = now
        first = slots.first()
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
