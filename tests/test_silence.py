"""What a silent heart means (heartbeat._silence), step by step on plain data and a fake clock."""

from __future__ import annotations

import pytest

from heartbeat._silence import (
    Decision,
    Heart,
    Process,
    Silence,
    Verdict,
    declared,
    heart_of,
    verdict,
)


@pytest.mark.parametrize(
    ("implementation", "heart"),
    [
        ("ipython", Heart.THREADED),  # ipykernel
        ("xeus-python", Heart.THREADED),
        ("xeus-cling", Heart.THREADED),
        ("IRkernel", Heart.MAIN_LOOP),
        ("ijulia", Heart.UNKNOWN),
        ("", Heart.UNKNOWN),
        (None, Heart.UNKNOWN),
        (3, Heart.UNKNOWN),
    ],
)
def test_the_kind_of_heart_is_known_from_the_implementation(
    implementation: object, heart: Heart
) -> None:
    assert heart_of(implementation) is heart


def test_a_declared_kind_wins_and_none_is_to_be_learned() -> None:
    assert declared(True) is Heart.THREADED
    assert declared(False) is Heart.MAIN_LOOP
    assert declared(None) is None
    with pytest.raises(TypeError, match="answers_while_busy must be True, False or None, not 1"):
        declared(1)  # type: ignore[arg-type]


@pytest.mark.parametrize("heart", list(Heart))
def test_a_process_gone_or_stopped_is_a_death_whatever_the_kernel(heart: Heart) -> None:
    for answered in (True, False):
        for process in (Process.GONE, Process.STOPPED):
            assert verdict(heart, answered=answered, process=process) is Verdict.DEATH


@pytest.mark.parametrize("heart", list(Heart))
def test_a_heart_that_never_answered_of_a_live_process_is_starting(heart: Heart) -> None:
    # A slow start (a wrapper that sleeps, a container pulled, a remote kernel scheduled, whose
    # port refuses until it binds) is no death, whatever the kernel.
    for process in (Process.RUNNING, Process.REFUSED, Process.UNKNOWN):
        assert verdict(heart, answered=False, process=process) is Verdict.STARTING


def test_silence_kills_only_a_heart_known_to_answer_while_busy() -> None:
    for process in (Process.RUNNING, Process.UNKNOWN):
        assert verdict(Heart.THREADED, answered=True, process=process) is Verdict.DEATH
        assert verdict(Heart.MAIN_LOOP, answered=True, process=process) is Verdict.SILENT
        assert verdict(Heart.UNKNOWN, answered=True, process=process) is Verdict.SILENT


def test_a_port_that_refuses_after_the_heart_had_answered_is_a_death() -> None:
    for heart in Heart:
        assert verdict(heart, answered=True, process=Process.REFUSED) is Verdict.DEATH
        # A kernel not ours was there before it was watched: a refusal is its death (told,
        # not acted on), whether or not it had answered. One ours is starting until it binds.
        refused = verdict(heart, answered=False, process=Process.REFUSED, owned=False)
        assert refused is Verdict.DEATH
        assert verdict(heart, answered=False, process=Process.REFUSED) is Verdict.STARTING


def test_an_irkernel_cell_is_logged_once_watched_on_and_ends_when_its_heart_answers() -> None:
    silence = Silence(Heart.MAIN_LOOP, owned=True, now=0.0)
    assert silence.answered_now(0.5) == (None, 0.5)
    assert silence.answered
    # A 10 s cell: silent at 4.5 s, then again at every new run of the monitor.
    first = silence.silent(5.0, Process.RUNNING)
    assert first == Decision(Verdict.SILENT, new=True, watch_on=True, silence=4.5)
    again = silence.silent(8.0, Process.RUNNING)
    assert again == Decision(Verdict.SILENT, new=False, watch_on=True, silence=7.5)
    assert silence.state is Verdict.SILENT
    assert silence.answered_now(10.6) == (Verdict.SILENT, pytest.approx(10.1))
    assert silence.state is None
    # The next silence is logged again.
    assert silence.silent(15.0, Process.RUNNING).new


def test_a_silent_kernel_that_is_then_stopped_is_dead_at_its_next_look() -> None:
    silence = Silence(Heart.UNKNOWN, owned=True, now=0.0)
    silence.answered_now(1.0)
    assert silence.silent(5.0, Process.RUNNING).verdict is Verdict.SILENT
    death = silence.silent(8.0, Process.STOPPED)
    assert death == Decision(Verdict.DEATH, new=True, watch_on=False, silence=7.0)


def test_a_slow_start_is_starting_until_it_answers() -> None:
    silence = Silence(Heart.UNKNOWN, owned=True, now=100.0)
    assert silence.silent(108.0, Process.RUNNING) == Decision(
        Verdict.STARTING, new=True, watch_on=True, silence=8.0
    )
    assert not silence.silent(111.0, Process.RUNNING).new
    assert silence.answered_now(112.0) == (Verdict.STARTING, 12.0)
    # A wrapper whose child exits: its own exit is the death, told as never answered by the
    # cause (not here); a stopped one is a death at once.
    silence = Silence(Heart.THREADED, owned=True, now=0.0)
    assert silence.silent(8.0, Process.STOPPED).verdict is Verdict.DEATH


def test_a_kernel_not_ours_is_dead_once_and_alive_again_when_its_heart_answers() -> None:
    silence = Silence(Heart.THREADED, owned=False, now=0.0)
    silence.answered_now(1.0)
    assert not silence.wants_port()  # threaded: dead whatever its port says
    # A 3 s SIGSTOP: dead, once, and watched on (nothing kills or restarts it).
    death = silence.silent(4.0, Process.UNKNOWN)
    assert death == Decision(Verdict.DEATH, new=True, watch_on=True, silence=3.0)
    # Still silent at the next runs of the monitor: the same death, not a new one.
    assert silence.silent(7.0, Process.UNKNOWN) == Decision(
        Verdict.DEATH, new=False, watch_on=True, silence=6.0
    )
    assert silence.answered_now(7.5) == (Verdict.DEATH, 6.5)
    # Its next silence is a death of its own.
    assert silence.silent(11.0, Process.UNKNOWN).new


def test_the_port_of_a_kernel_not_ours_is_asked_only_when_it_could_change_the_verdict() -> None:
    owned = Silence(Heart.UNKNOWN, owned=True, now=0.0)
    assert not owned.wants_port()  # starting: a port refuses until it binds
    silence = Silence(Heart.UNKNOWN, owned=False, now=0.0)
    assert silence.wants_port()  # started apart, before it was watched
    silence.answered_now(1.0)
    assert silence.wants_port()
    assert silence.silent(5.0, Process.UNKNOWN).verdict is Verdict.SILENT
    assert silence.wants_port()  # silent so far: a refusal now would be its death
    assert silence.silent(8.0, Process.REFUSED) == Decision(
        Verdict.DEATH, new=True, watch_on=True, silence=7.0
    )
    assert not silence.wants_port()


def test_an_owned_kernel_is_not_watched_on_after_its_death() -> None:
    silence = Silence(Heart.THREADED, owned=True, now=0.0)
    silence.answered_now(0.1)
    assert silence.silent(3.1, Process.RUNNING).watch_on is False


def test_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match="heart must be a Heart, not 'threaded'"):
        Silence("threaded", owned=True, now=0.0)  # type: ignore[arg-type]
    silence = Silence(Heart.UNKNOWN, owned=True, now=0.0)
    with pytest.raises(TypeError, match="process must be a Process, not 'running'"):
        silence.silent(1.0, "running")  # type: ignore[arg-type]
