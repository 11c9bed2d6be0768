"""The decision whether a kernel answers (heartbeat._responsive) and the reading of its stacks
(heartbeat._tracebacks), step by step on a fake clock and on fixture text."""

from __future__ import annotations

import pytest

from heartbeat import _tracebacks
from heartbeat._responsive import (
    Answering,
    Probe,
    Responsiveness,
    Unresponsive,
    probe_every,
    stat_cpu,
)


def probes(events: list[object]) -> int:
    return sum(isinstance(e, Probe) for e in events)


def run(
    r: Responsiveness,
    start: float,
    end: float,
    cpu: float = 0.0,
    rate: float = 0.0,
    state: str = "S",
    running: bool | None = None,
) -> list[object]:
    """Tick every 0.5 s from ``start`` to ``end``, CPU growing at ``rate``; the events."""
    events: list[object] = []
    now = start
    while now <= end + 1e-9:
        events += r.tick(now, cpu + rate * (now - start), state, running=running)
        now += 0.5
    return events


def test_a_kernel_that_answers_every_probe_is_never_reported() -> None:
    r = Responsiveness(10)
    assert r.start(0.0, "own-thread") == [Probe()]
    assert r.answered(0.05) == []
    now = 0.0
    sent = 1
    while now < 300:
        now += 0.1
        events = r.tick(now, now * 0.9, "R")  # busy in Python: CPU, yet it answers
        sent += probes(events)
        if probes(events):
            assert r.answered(now + 0.05) == []
    assert r.reported is None
    # One probe outstanding at a time, every probe_every (a quarter of the bound, at most 5 s).
    assert probe_every(10) == 2.5
    assert 300 / 2.7 <= sent <= 300 / 2.5 + 2  # each after the last reply and a tick


def test_silence_counts_from_the_first_unanswered_ask_and_is_reported_once() -> None:
    r = Responsiveness(10)
    r.start(0.0, "own-thread")
    r.answered(0.1)
    events = run(r, 0.5, 12.0)  # the next probe goes at 2.6: silent from then on
    assert probes(events) == 1
    assert [e for e in events if isinstance(e, Unresponsive)] == []
    events = run(r, 12.5, 40.0)
    reports = [e for e in events if isinstance(e, Unresponsive)]
    assert len(reports) == 1
    assert reports[0].silent_for == pytest.approx(10.0, abs=0.5)
    assert reports[0].kind == "hung"
    # Asked again every bound while unanswered (a probe lost to a reconnect is not forever).
    assert probes(events) >= 2
    (again,) = r.answered(41.0)
    assert isinstance(again, Answering) and again.silent_for == pytest.approx(41.0 - 2.6, abs=0.6)
    # A new episode is a new report.
    events = run(r, 41.5, 60.0)
    assert len([e for e in events if isinstance(e, Unresponsive)]) == 1


def test_cpu_gained_while_silent_makes_it_busy_in_native_code() -> None:
    r = Responsiveness(10)
    r.start(0.0, "own-thread")
    (report,) = [e for e in run(r, 0.5, 11.0, rate=0.95, state="R") if isinstance(e, Unresponsive)]
    assert report.kind == "native"
    assert report.cpu_share == pytest.approx(0.95, abs=0.05)
    assert report.main_state == "R"
    assert "busy in native code" in report.describe()
    r = Responsiveness(10)
    r.start(0.0, "own-thread")
    (report,) = [e for e in run(r, 0.5, 11.0, rate=0.05) if isinstance(e, Unresponsive)]
    assert report.kind == "hung" and "hung" in report.describe()


def test_unknown_cpu_is_said_so() -> None:
    r = Responsiveness(5)
    r.start(0.0, "own-thread")
    events: list[object] = []
    for i in range(1, 14):
        events += r.tick(i * 0.5)
    (report,) = [e for e in events if isinstance(e, Unresponsive)]
    assert report.kind == "silent" and report.cpu_share is None


def test_a_main_loop_kernel_is_judged_only_while_known_idle() -> None:
    r = Responsiveness(10)
    r.start(0.0, "main-loop")
    # A cell runs for a minute, or whether one runs is not known: its silence is normal.
    assert not [e for e in run(r, 0.5, 60.0, running=True) if isinstance(e, Unresponsive)]
    assert not [e for e in run(r, 60.5, 120.0, running=None) if isinstance(e, Unresponsive)]
    # Idle now: counted from the moment it was seen idle, not from the ask (a reply may trail
    # the idle status).
    assert not [e for e in run(r, 120.5, 129.5, running=False) if isinstance(e, Unresponsive)]
    (report,) = [e for e in run(r, 130.0, 135.0, running=False) if isinstance(e, Unresponsive)]
    assert report.silent_for > 100  # the whole silence is told


def test_a_kernel_that_never_answered_on_control_is_never_judged() -> None:
    # IRkernel does not answer kernel_info_request on control at all, idle or not.
    r = Responsiveness(5)
    r.start(0.0)
    assert not [e for e in run(r, 0.5, 30.0) if isinstance(e, Unresponsive)]
    assert not [e for e in run(r, 30.5, 90.0, running=False) if isinstance(e, Unresponsive)]
    r.answered(30.2, "own-thread")  # ipykernel said so in its reply
    assert r.answers_from == "own-thread"
    r.answered(31.0, None)  # once known to answer from its own thread, it does
    assert r.answers_from == "own-thread"


def test_a_stall_of_the_caller_is_not_the_kernels_silence() -> None:
    r = Responsiveness(10)
    r.start(0.0, "own-thread")
    r.answered(0.1)
    run(r, 0.5, 5.0)
    # The caller's loop stood still for 30 s: the reply may be waiting unread.
    events = r.tick(35.0, 0.0, "S")
    assert events == [Probe()]
    assert not [e for e in run(r, 35.5, 44.5) if isinstance(e, Unresponsive)]
    assert [e for e in run(r, 45.0, 46.0) if isinstance(e, Unresponsive)]


def test_wake_at_is_when_something_is_due() -> None:
    r = Responsiveness(10)
    r.start(0.0, "own-thread")
    assert r.wake_at == pytest.approx(2.5)
    r.answered(1.0)
    assert r.wake_at == pytest.approx(2.5)  # the next tick, a probe at 3.5 at the latest


def test_bad_bounds_are_refused_with_words() -> None:
    with pytest.raises(ValueError, match="unresponsive_after"):
        Responsiveness(0)
    with pytest.raises(TypeError, match="unresponsive_after"):
        Responsiveness("10")  # type: ignore[arg-type]


def test_cpu_is_read_from_proc_stat_text() -> None:
    text = "1234 (python (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0"
    assert stat_cpu(text, 100) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="/proc"):
        stat_cpu("nonsense", 100)


DUMP = """\
heartbeat-stacks pid=13706 tid=13712 signal=62 main=0x7f8210a31b80
Thread 0x00007f81effff6c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap

Current thread 0x00007f820fbf66c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 327 in wait
  File "<string>", line 14 in wait

Thread 0x00007f8210a31b80 (most recent call first):
  File "/usr/lib/python3.11/re/__init__.py", line 166 in match
  File "/usr/lib/python3.11/mod.py", line 3 in helper
  File "/usr/lib/python3.11/mod.py", line 9 in outer
  File "/tmp/ipykernel_13706/16411275.py", line 4 in <module>
  File "/usr/lib/python3.11/site-packages/IPython/core/interactiveshell.py", line 3508 in run_code
  File "<frozen runpy>", line 88 in _run_code
"""

CRASH = """\
Fatal Python error: Segmentation fault

Thread 0x00007f81effff6c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap

Current thread 0x00007f8210a31b80 (most recent call first):
  File "/usr/lib/python3.11/ctypes/__init__.py", line 519 in string_at
  File "/tmp/ipykernel_13706/99.py", line 2 in <module>

Extension modules: zmq.backend.cython.context (total: 1)
"""


def test_a_dump_is_read_main_thread_first_cell_line_shown() -> None:
    header = _tracebacks.parse_header(DUMP.splitlines()[0])
    assert header == _tracebacks.Header(13706, 13712, 62, 0x7F8210A31B80)
    (dump,) = _tracebacks.parse(DUMP)
    main = dump.main(header)
    assert main is not None and main.frames[0].function == "match"
    assert all(f.file != "<frozen runpy>" for f in main.frames)
    line = _tracebacks.innermost(main)
    assert (
        line == "re/__init__.py:166 in match <- python3.11/mod.py:3 in helper "
        "<- python3.11/mod.py:9 in outer <- ... <- cell:4 in <module>"
    )
    # The dumper's own stack is left out of the others.
    assert [t.ident for t in dump.others(header)] == [0x7F81EFFFF6C0]
    text = _tracebacks.render(dump, header)
    assert text.startswith("main thread (most recent call first):\n  /usr/lib/python3.11/re")


def test_two_dumps_in_a_row_are_two_and_a_crash_names_its_line() -> None:
    body = "\n".join(DUMP.splitlines()[1:]) + "\n"
    assert len(_tracebacks.parse(body + body)) == 2
    (crash,) = _tracebacks.parse(CRASH)
    assert crash.fatal == "Segmentation fault"
    crashed = next(t for t in crash.threads if t.current)
    assert (
        _tracebacks.innermost(crashed)
        == "ctypes/__init__.py:519 in string_at <- cell:2 in <module>"
    )
    assert "(crashed)" in _tracebacks.render(crash, None)


def test_not_a_header_is_none() -> None:
    assert _tracebacks.parse_header("Thread 0x1 (most recent call first):") is None
    assert _tracebacks.parse_header("heartbeat-stacks pid=x") is None
    with pytest.raises(TypeError, match="header"):
        _tracebacks.parse_header(None)  # type: ignore[arg-type]


def test_given_up_on_once_past_give_up_after_never_before_the_report() -> None:
    from heartbeat._responsive import GiveUp

    r = Responsiveness(10, give_up_after=25)
    r.start(0.0, "own-thread")
    events = run(r, 0.5, 24.5)
    assert len([e for e in events if isinstance(e, Unresponsive)]) == 1
    assert not [e for e in events if isinstance(e, GiveUp)]
    events = run(r, 25.0, 60.0)
    (give_up,) = [e for e in events if isinstance(e, GiveUp)]
    assert give_up.silent_for == pytest.approx(25.0, abs=0.5)
    assert give_up.report is r.reported
    # A bound below unresponsive_after is unresponsive_after: reported first, then given up.
    r = Responsiveness(10, give_up_after=1)
    r.start(0.0, "own-thread")
    kinds = [type(e).__name__ for e in run(r, 0.5, 12.0) if not isinstance(e, Probe)]
    assert kinds == ["Unresponsive", "GiveUp"]
    # Not while a main-loop kernel runs a cell.
    r = Responsiveness(10, give_up_after=20)
    r.start(0.0, "main-loop")
    assert not [e for e in run(r, 0.5, 100.0, running=True) if isinstance(e, GiveUp)]


def test_a_brief_dump_is_the_main_thread_down_to_the_cell_and_the_users_threads() -> None:
    header = _tracebacks.parse_header(DUMP.splitlines()[0])
    kernels = (
        "Thread 0x00007f81aaaaa6c0 (most recent call first):\n"
        '  File "/usr/lib/python3.11/site-packages/ipykernel/heartbeat.py", line 124 in run\n'
        '  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap\n\n'
    )
    head, _, rest = DUMP.partition("\n")
    (dump,) = _tracebacks.parse(f"{head}\n{kernels}{rest}")
    brief = _tracebacks.render(dump, header, brief=True)
    assert "interactiveshell.py" not in brief and "cell" not in brief  # the file's path is shown
    assert brief.splitlines()[4] == "  /tmp/ipykernel_13706/16411275.py, line 4 in <module>"
    assert "ipykernel/heartbeat.py" not in brief  # the kernel's own thread
    assert "thread 0x7f81effff6c0" in brief  # a thread of the user's (threading.py alone)
    full = _tracebacks.render(dump, header)
    assert "interactiveshell.py" in full and "ipykernel/heartbeat.py" in full
