"""The cause of a kernel's death behind a wrapper that does not ``exec`` it (a shell, ``conda
run``, ``uv run``): the wrapper's exit code 128 + N, the kernel log and the cgroup's count for
what it ran, and the state of the processes under it; decided from plain data."""

from __future__ import annotations

import pytest

from heartbeat._cause import Cause, decide, memory
from tests.test_cause import V1_LIMIT, V1_OOM, V1_OOM_NONE


@pytest.mark.parametrize(
    ("code", "number", "name"),
    [(137, 9, "SIGKILL"), (139, 11, "SIGSEGV"), (134, 6, "SIGABRT"), (143, 15, "SIGTERM")],
)
def test_an_exit_code_128_plus_n_is_likely_signal_n(code: int, number: int, name: str) -> None:
    cause = decide(returncode=code)
    assert cause == Cause(
        "signal", exit_code=code, signal=number, likely=True, evidence="exit-code"
    )
    assert cause.describe() == (
        f"exited with code {code}, likely killed by {name} ({number}) behind a wrapper "
        f"(128 + {number})"
    )


@pytest.mark.parametrize("code", [0, 1, 3, 127, 128, 255, 128 + 32, 128 + 65])
def test_other_exit_codes_are_exits(code: int) -> None:
    assert decide(returncode=code) == Cause("exited", exit_code=code)


def test_a_wrappers_137_with_the_kernel_log_naming_what_it_ran_is_the_oom_killer() -> None:
    cause = decide(returncode=137, pid=4242, descendants={4243}, oom_victims={4243})
    assert cause == Cause("oom", exit_code=137, signal=9, evidence="kernel-log")
    assert cause.describe() == (
        "exited with code 137, killed by SIGKILL (9) behind a wrapper (128 + 9), out of "
        "memory: the kernel log names the process it wraps as the out-of-memory killer's victim"
    )


def test_a_wrapper_that_exits_0_after_what_it_ran_was_oom_killed() -> None:
    # A shell script that cleans up after the kernel ends, and exits 0.
    cause = decide(returncode=0, pid=4242, descendants={4243}, oom_victims={4243})
    assert cause == Cause("oom", exit_code=0, signal=9, evidence="kernel-log")
    assert cause.describe() == (
        "exited with code 0 after what it wraps was killed by SIGKILL (9), out of memory: the "
        "kernel log names the process it wraps as the out-of-memory killer's victim"
    )
    # Named: another; or nothing under it seen: an exit.
    assert decide(returncode=0, pid=4242, descendants={4243}, oom_victims={4100}).kind == "exited"
    assert decide(returncode=0, pid=4242, oom_victims={4243}).kind == "exited"


def test_a_wrappers_137_with_its_cgroups_count_risen_is_likely_the_oom_killer() -> None:
    before, now = memory(1, V1_OOM_NONE, V1_LIMIT), memory(1, V1_OOM, V1_LIMIT)
    for shared in (False, True):
        cause = decide(returncode=137, memory_before=before, memory_now=now, shared=shared)
        assert cause.kind == "oom" and cause.likely and cause.exit_code == 137
    alone = decide(returncode=137, memory_before=before, memory_now=now, shared=False)
    assert alone.describe() == (
        "exited with code 137, likely killed by SIGKILL (9) behind a wrapper (128 + 9), likely "
        "out of memory: its memory cgroup recorded an out-of-memory kill (limit 64.0 MiB)"
    )
    # Another signal's code is no memory matter.
    assert decide(returncode=139, memory_before=before, memory_now=now).kind == "signal"


def test_a_wrappers_137_and_a_kernel_log_naming_others() -> None:
    before, now = memory(1, V1_OOM_NONE, V1_LIMIT), memory(1, V1_OOM, V1_LIMIT)
    # What it ran was seen, and is not named: not the OOM killer.
    seen = decide(
        returncode=137,
        memory_before=before,
        memory_now=now,
        shared=False,
        pid=4242,
        descendants={4243},
        oom_victims={4100},
    )
    assert seen.kind == "signal" and seen.likely
    # Nothing under it was ever seen (it died young): the named one may be it; the counts say.
    unseen = decide(
        returncode=137,
        memory_before=before,
        memory_now=now,
        shared=False,
        pid=4242,
        oom_victims={4100},
    )
    assert unseen.kind == "oom" and unseen.likely


def test_a_stopped_process_under_a_running_wrapper_is_likely_the_frozen_kernel() -> None:
    cause = decide(returncode=None, state="S", descendant_states=["S", "T"], silence=2.5)
    assert cause == Cause("stopped", silence=2.5, likely=True, evidence="descendant")
    assert cause.describe() == (
        "was likely frozen: a process under its own (the kernel behind a wrapper) was stopped "
        "(SIGSTOP, or a debugger) while its heart was silent for 2.5 s"
    )
    # Its own process stopped: that, certain.
    assert decide(returncode=None, state="T", descendant_states=["S"], silence=2.5) == Cause(
        "stopped", silence=2.5
    )
    running = decide(returncode=None, state="S", descendant_states=["S", "R"], silence=2.5)
    assert running.kind == "frozen"
