"""The cause of a kernel's death, decided from fixture text (cgroup v1 and v2, /proc), and the
small readers beside it (the probe of a heart's port: tests/test_heart_probe.py)."""

from __future__ import annotations

import re
from pathlib import Path

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
from heartbeat.jupyter import _proc

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


def test_sigkill_with_an_oom_kill_counted_since_the_start_is_the_oom_killer_v2() -> None:
    start = memory(2, V2_EVENTS_NONE, V2_MAX)
    now = memory(2, V2_EVENTS, V2_MAX)
    cause = decide(returncode=-9, memory_at_start=start, memory_now=now)
    assert cause == Cause("oom", signal=9, memory_limit=2 << 30)
    assert cause.describe() == (
        "was killed by SIGKILL (9): its memory cgroup recorded an out-of-memory kill "
        "(limit 2.0 GiB)"
    )


def test_sigkill_with_an_oom_kill_counted_since_the_start_is_the_oom_killer_v1() -> None:
    start = memory(1, V1_OOM_NONE, V1_LIMIT)
    now = memory(1, V1_OOM, V1_LIMIT)
    cause = decide(returncode=-9, memory_at_start=start, memory_now=now)
    assert cause.kind == "oom" and not cause.likely
    assert cause.describe().endswith("an out-of-memory kill (limit 64.0 MiB)")


def test_an_oom_kill_counted_before_the_start_is_not_this_death() -> None:
    before = memory(1, V1_OOM, V1_LIMIT)  # 2 already at the start, 2 now
    cause = decide(returncode=-9, memory_at_start=before, memory_now=before)
    assert cause == Cause("signal", signal=9)


def test_an_oom_kill_with_no_start_count_is_only_likely() -> None:
    cause = decide(returncode=-9, memory_at_start=None, memory_now=memory(1, V1_OOM, V1_LIMIT))
    assert cause.kind == "oom" and cause.likely
    assert "likely out of memory" in cause.describe() and "maybe before" in cause.describe()


def test_an_oom_count_does_not_explain_another_signal() -> None:
    start, now = memory(2, V2_EVENTS_NONE, V2_MAX), memory(2, V2_EVENTS, V2_MAX)
    cause = decide(returncode=-11, memory_at_start=start, memory_now=now)
    assert cause == Cause("signal", signal=11)


def test_no_limit_is_not_named() -> None:
    start, now = memory(2, V2_EVENTS_NONE, V2_NO_MAX), memory(2, V2_EVENTS, V2_NO_MAX)
    described = decide(returncode=-9, memory_at_start=start, memory_now=now).describe()
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
    ],
)
def test_bad_input_is_a_clear_error(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        decide(**kwargs)  # type: ignore[arg-type]


def test_names_and_sizes() -> None:
    assert signal_name(9) == "SIGKILL" and signal_name(99) == "signal 99"
    assert size(2 << 30) == "2.0 GiB" and size(64 << 20) == "64.0 MiB" and size(512) == "512 B"


# -- the readers, on a fake cgroup tree and on this process ------------------------------------


def test_memory_cgroup_files_are_read_for_v1_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "memory" / "jobs"
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text(V1_OOM)
    (v1 / "memory.limit_in_bytes").write_text(V1_LIMIT)
    assert _proc.MemoryCgroup(1, v1).read() == Memory(2, 64 << 20)
    v2 = tmp_path / "k"
    v2.mkdir()
    (v2 / "memory.events").write_text(V2_EVENTS)
    (v2 / "memory.max").write_text(V2_MAX)
    assert _proc.MemoryCgroup(2, v2).read() == Memory(1, 2 << 30)
    assert _proc.MemoryCgroup(2, tmp_path / "gone").read() is None


def test_this_process_is_read_where_proc_exists() -> None:
    import os

    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc here")
    assert _proc.read_state(os.getpid()) == "R"  # it is reading it
