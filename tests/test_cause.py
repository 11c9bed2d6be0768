"""The cause of a kernel's death, decided from fixture text (cgroup v1 and v2, /proc); the
evidence's parsers and readers: tests/test_evidence.py (the probe of a heart's port:
tests/test_heart_probe.py)."""

from __future__ import annotations

import re

import pytest

from heartbeat._cause import (
    Cause,
    Connection,
    Memory,
    decide,
    memory,
    memory_cgroup,
    signal_name,
    size,
    stat_state,
)

# -- fixture text, as the files read ----------------------------------------------------------

STAT_RUNNING = "4242 (python) S 4200 4242 4200 0 -1 4194560 2840 0 0 0 12 3 0 0 20 0 3 0 1"
STAT_STOPPED = "4242 (python) T 4200 4242 4200 0 -1 4194560 2840 0 0 0 12 3 0 0 20 0 3 0 1"
STAT_TRACED = "4242 (python) t 4200 4242 4200 0 -1 4194560 2840 0 0 0 12 3 0 0 20 0 3 0 1"
STAT_ZOMBIE = "4242 (python) Z 4200 4242 4200 0 -1 4227084 76 0 0 0 0 0"
STAT_ODD_NAME = "4242 (a) b) (c) D 4200 4242 4200 0 -1"  # a command name may hold ") "

V2_EVENTS = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"
V2_EVENTS_NONE = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"
V2_MAX = "2147483648\n"
V2_NO_MAX = "max\n"
V1_OOM = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
V1_OOM_NONE = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"
V1_LIMIT = "67108864\n"
V1_NO_LIMIT = "9223372036854771712\n"

CGROUP_V1 = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/4447c71f\n3:cpuset:/\n0::/\n"
CGROUP_V1_JOINED = "5:cpu,memory:/jobs/k1\n0::/\n"
CGROUP_V2 = "0::/user.slice/user-1000.slice/session-2.scope\n"
CGROUP_NONE = "1:name=systemd:/\n"


# -- /proc/<pid>/stat -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "state"),
    [
        (STAT_RUNNING, "S"),
        (STAT_STOPPED, "T"),
        (STAT_TRACED, "t"),
        (STAT_ZOMBIE, "Z"),
        (STAT_ODD_NAME, "D"),
    ],
)
def test_the_state_letter_follows_the_last_parenthesis(text: str, state: str) -> None:
    assert stat_state(text) == state


@pytest.mark.parametrize("text", ["", "4242 python S", "4242 (python)", "4242 (python) Sx 1"])
def test_text_that_is_no_stat_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="/proc/<pid>/stat"):
        stat_state(text)


def test_stat_that_is_not_text_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="str"):
        stat_state(b"4242 (python) S")  # type: ignore[arg-type]


# -- /proc/<pid>/cgroup and the memory files --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (CGROUP_V1, (1, "/process_api/4447c71f")),
        (CGROUP_V1_JOINED, (1, "/jobs/k1")),
        (CGROUP_V2, (2, "/user.slice/user-1000.slice/session-2.scope")),
        (CGROUP_NONE, None),
        ("", None),
    ],
)
def test_the_memory_cgroup_is_v1_memory_hierarchy_else_the_unified_one(
    text: str, found: tuple[int, str] | None
) -> None:
    assert memory_cgroup(text) == found


def test_a_cgroup_line_that_is_none_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="/proc/<pid>/cgroup"):
        memory_cgroup("memory /somewhere\n")


@pytest.mark.parametrize(
    ("version", "events", "limit", "counted"),
    [
        (2, V2_EVENTS, V2_MAX, Memory(1, 2 << 30)),
        (2, V2_EVENTS_NONE, V2_NO_MAX, Memory(0, None)),
        (1, V1_OOM, V1_LIMIT, Memory(2, 64 << 20)),
        (1, V1_OOM_NONE, V1_NO_LIMIT, Memory(0, None)),  # v1's "no limit" is a huge number
    ],
)
def test_memory_counters_from_v1_and_v2_text(
    version: int, events: str, limit: str, counted: Memory
) -> None:
    assert memory(version, events, limit) == counted


def test_bad_memory_text_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=re.escape("no 'oom_kill' count in memory.events")):
        memory(2, "low 0\nhigh 0\n", V2_MAX)
    with pytest.raises(ValueError, match=re.escape("no 'oom_kill' count in memory.oom_control")):
        memory(1, "oom_kill many\n", V1_LIMIT)
    with pytest.raises(ValueError, match=re.escape("memory.limit_in_bytes")):
        memory(1, V1_OOM, "max\n")  # "max" is v2's word only
    with pytest.raises(ValueError, match=re.escape("memory.max")):
        memory(2, V2_EVENTS, "lots\n")
    with pytest.raises(ValueError, match="version must be 1 or 2"):
        memory(3, V2_EVENTS, V2_MAX)
    with pytest.raises(TypeError):
        memory(2, b"oom_kill 1", V2_MAX)  # type: ignore[arg-type]


# -- the decision -----------------------------------------------------------------------------


def test_an_exit_code_is_an_exit() -> None:
    cause = decide(returncode=3)
    assert cause == Cause("exited", exit_code=3)
    assert cause.describe() == "exited with code 3"
    assert decide(returncode=0).describe() == "exited with code 0"


def test_a_running_kernel_that_exits_0_ended_itself_as_asked() -> None:
    # exit() or quit() in a cell: code 0 after the heart answered. No death.
    cause = decide(returncode=0, answered=True)
    assert cause.asked_for and cause.kind == "exited" and cause.exit_code == 0
    assert cause.describe() == (
        "ended itself: it exited with code 0 (exit() or quit() in a cell, say)"
    )
    # Before it ever answered, code 0 is a kernel that failed to start; any other code, an exit.
    assert not decide(returncode=0).asked_for
    assert not decide(returncode=3, answered=True).asked_for
    assert not decide(returncode=-9, answered=True).asked_for


def test_a_negative_returncode_is_the_signal_named() -> None:
    cause = decide(returncode=-11)
    assert cause.kind == "signal" and cause.signal == 11 and cause.signal_name == "SIGSEGV"
    assert cause.describe() == "was killed by SIGSEGV (11)"
    assert decide(returncode=-9).describe() == "was killed by SIGKILL (9)"


def test_sigkill_with_an_oom_kill_counted_since_last_seen_alone_is_the_oom_killer_v2() -> None:
    start = memory(2, V2_EVENTS_NONE, V2_MAX)
    now = memory(2, V2_EVENTS, V2_MAX)
    cause = decide(returncode=-9, memory_before=start, memory_now=now, shared=False)
    assert cause == Cause("oom", signal=9, memory_limit=2 << 30, evidence="cgroup")
    assert cause.describe() == (
        "was killed by SIGKILL (9): its memory cgroup recorded an out-of-memory kill "
        "(limit 2.0 GiB)"
    )


def test_sigkill_with_an_oom_kill_counted_since_last_seen_alone_is_the_oom_killer_v1() -> None:
    start = memory(1, V1_OOM_NONE, V1_LIMIT)
    now = memory(1, V1_OOM, V1_LIMIT)
    cause = decide(returncode=-9, memory_before=start, memory_now=now, shared=False)
    assert cause.kind == "oom" and not cause.likely
    assert cause.describe().endswith("an out-of-memory kill (limit 64.0 MiB)")


def test_an_oom_kill_counted_before_it_was_last_seen_is_not_this_death() -> None:
    # Issue 24's reproduction: kernels A and B share a cgroup; A is OOM-killed (the count is 2
    # now), B, read since, is then killed by hand. Its count at its start (0) would have
    # blamed the OOM killer; the one read last while it lived (2) does not.
    before = memory(1, V1_OOM, V1_LIMIT)  # 2 already when last read, 2 now
    for shared in (True, False, None):
        cause = decide(returncode=-9, memory_before=before, memory_now=before, shared=shared)
        assert cause == Cause("signal", signal=9)


def test_an_oom_kill_counted_in_a_cgroup_shared_with_others_is_only_likely() -> None:
    before, now = memory(1, V1_OOM_NONE, V1_LIMIT), memory(1, V1_OOM, V1_LIMIT)
    for shared in (True, None):  # others there, or not known whether
        cause = decide(returncode=-9, memory_before=before, memory_now=now, shared=shared)
        assert cause == Cause(
            "oom", signal=9, memory_limit=64 << 20, likely=True, evidence="cgroup-shared"
        )
    assert cause.describe() == (
        "was killed by SIGKILL (9), likely out of memory: its memory cgroup recorded an "
        "out-of-memory kill (limit 64.0 MiB) just before, but other processes share that cgroup"
    )


def test_an_oom_kill_with_no_count_from_its_life_is_only_likely() -> None:
    cause = decide(returncode=-9, memory_before=None, memory_now=memory(1, V1_OOM, V1_LIMIT))
    assert cause.kind == "oom" and cause.likely and cause.evidence == "cgroup-unknown-before"
    assert "likely out of memory" in cause.describe() and "maybe before" in cause.describe()


def test_the_kernel_log_naming_the_process_is_the_oom_killer_whatever_the_counts() -> None:
    before = memory(1, V1_OOM, V1_LIMIT)
    for now, shared in ((before, True), (None, None), (memory(1, V1_OOM, V1_LIMIT), False)):
        cause = decide(
            returncode=-9,
            memory_before=before,
            memory_now=now,
            shared=shared,
            pid=4242,
            oom_victims=[4100, 4242],
        )
        assert cause.kind == "oom" and not cause.likely and cause.evidence == "kernel-log"
    assert cause.describe() == (
        "was killed by SIGKILL (9), out of memory: the kernel log names it as the out-of-memory "
        "killer's victim (limit 64.0 MiB)"
    )


def test_the_kernel_log_naming_only_others_is_no_oom_kill_of_this_one() -> None:
    before, now = memory(1, V1_OOM_NONE, V1_LIMIT), memory(1, V1_OOM, V1_LIMIT)
    # The count rose, and it was alone there: yet the log names another victim (a process
    # that joined the cgroup since it was read, say), and the kill of this one was someone's.
    cause = decide(
        returncode=-9,
        memory_before=before,
        memory_now=now,
        shared=False,
        pid=4242,
        oom_victims={4100},
    )
    assert cause == Cause("signal", signal=9)
    # A process the kernel started, killed by the OOM killer, is not the kernel.
    cause = decide(
        returncode=-9,
        memory_before=before,
        memory_now=now,
        shared=False,
        pid=4242,
        descendants={4300},
        oom_victims={4300},
    )
    assert cause == Cause("signal", signal=9)


def test_a_kernel_log_that_names_no_one_leaves_it_to_the_counts() -> None:
    # Read, but empty since the start: a record not yet written, or lost; the counts decide.
    before, now = memory(1, V1_OOM_NONE, V1_LIMIT), memory(1, V1_OOM, V1_LIMIT)
    alone = decide(
        returncode=-9, memory_before=before, memory_now=now, shared=False, pid=4242, oom_victims=()
    )
    assert alone.kind == "oom" and not alone.likely and alone.evidence == "cgroup"
    shared = decide(
        returncode=-9, memory_before=before, memory_now=now, shared=True, pid=4242, oom_victims=()
    )
    assert shared.kind == "oom" and shared.likely


def test_an_oom_count_does_not_explain_another_signal() -> None:
    start, now = memory(2, V2_EVENTS_NONE, V2_MAX), memory(2, V2_EVENTS, V2_MAX)
    cause = decide(returncode=-11, memory_before=start, memory_now=now)
    assert cause == Cause("signal", signal=11)


def test_no_limit_is_not_named() -> None:
    start, now = memory(2, V2_EVENTS_NONE, V2_NO_MAX), memory(2, V2_EVENTS, V2_NO_MAX)
    described = decide(returncode=-9, memory_before=start, memory_now=now, shared=False).describe()
    assert described == (
        "was killed by SIGKILL (9): its memory cgroup recorded an out-of-memory kill"
    )


def test_a_stopped_process_with_a_silent_heart_was_frozen() -> None:
    cause = decide(returncode=None, state=stat_state(STAT_STOPPED), silence=3.14)
    assert cause == Cause("stopped", silence=3.14)
    assert cause.describe() == (
        "was frozen: its process was stopped (SIGSTOP, or a debugger) while its heart was "
        "silent for 3.1 s"
    )
    assert decide(returncode=None, state=stat_state(STAT_TRACED), silence=1).kind == "stopped"


def test_a_running_process_with_a_silent_heart_was_likely_frozen() -> None:
    running = stat_state(STAT_RUNNING)
    cause = decide(returncode=None, state=running, silence=3.1, language="python")
    assert cause == Cause("frozen", silence=3.1, likely=True, language="python")
    assert cause.describe() == (
        "was likely frozen: its process ran while its heart was silent for 3.1 s "
        "(stuck below Python, swapped out or suspended)"
    )
    # A kernel that is not Python, or of a language not known: not "below Python".
    for language in ("R", None):
        words = decide(returncode=None, state=running, silence=3.1, language=language).describe()
        assert words == (
            "was likely frozen: its process ran while its heart was silent for 3.1 s "
            "(stuck, swapped out or suspended)"
        )
    # Not Linux (no /proc): not exited, heart silent, the same inference.
    assert decide(returncode=None, state=None, silence=3.1).kind == "frozen"


def test_a_kernel_whose_heart_never_answered_says_so_after_its_cause() -> None:
    cause = decide(returncode=1, never_answered=True)
    assert cause.kind == "exited" and cause.exit_code == 1 and cause.never_answered
    assert (
        cause.describe() == "exited with code 1, its heart never having answered since it started"
    )
    with pytest.raises(TypeError, match="language must be a str or None, not 3"):
        decide(returncode=1, language=3)  # type: ignore[arg-type]


def test_a_zombie_exited_with_its_status_unknown() -> None:
    cause = decide(returncode=None, state=stat_state(STAT_ZOMBIE), silence=1.0)
    assert cause.kind == "exited" and cause.exit_code is None
    assert "had exited" in cause.describe()


def test_an_exit_seen_by_the_heart_keeps_its_silence() -> None:
    cause = decide(returncode=-9, silence=1.2)
    assert cause == Cause("signal", signal=9, silence=1.2)


@pytest.mark.parametrize(
    ("connection", "kind", "words"),
    [
        (Connection.REFUSED, "remote-refused", "nothing listens at its port"),
        (Connection.SILENT, "remote-silent", "its port accepts connections"),
        (Connection.UNREACHABLE, "remote-unreachable", "host or network unreachable"),
        (None, "unknown", "not known here"),
    ],
)
def test_a_remote_kernel_is_judged_by_its_hearts_connection(
    connection: Connection | None, kind: str, words: str
) -> None:
    cause = decide(returncode=None, local=False, silence=2.0, connection=connection)
    assert cause.kind == kind and cause.likely == (connection is not None)
    assert words in cause.describe() and "2.0 s" in cause.describe()


def test_a_remote_process_state_is_not_used() -> None:
    # A pid that is not ours says nothing of the kernel: its state letter is ignored.
    cause = decide(returncode=None, state="T", local=False, silence=2.0)
    assert cause.kind == "unknown"


def test_nothing_known_is_unknown() -> None:
    assert decide(returncode=None) == Cause("unknown")
    # A process that is not ours found dead by its provisioner: no silence to speak of.
    cause = decide(returncode=None, local=False)
    assert cause.describe() == "died of a cause not known here"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"returncode": "3"}, TypeError),
        ({"returncode": True}, TypeError),
        ({"returncode": None, "silence": -1.0}, ValueError),
        ({"returncode": None, "silence": float("nan")}, ValueError),
        ({"returncode": None, "local": False, "connection": "refused"}, TypeError),
        ({"returncode": -9, "shared": "yes"}, TypeError),
        ({"returncode": -9, "pid": "4242"}, TypeError),
        ({"returncode": -9, "descendants": "4243"}, TypeError),
        ({"returncode": -9, "oom_victims": [4242.0]}, TypeError),
        ({"returncode": -9, "oom_victims": [True]}, TypeError),
    ],
)
def test_bad_input_is_a_clear_error(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        decide(**kwargs)  # type: ignore[arg-type]


def test_names_and_sizes() -> None:
    assert signal_name(9) == "SIGKILL" and signal_name(99) == "signal 99"
    assert size(2 << 30) == "2.0 GiB" and size(64 << 20) == "64.0 MiB" and size(512) == "512 B"
