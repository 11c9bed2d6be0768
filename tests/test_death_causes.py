"""Every death named right (issue 24), on real ipykernels under HeartbeatKernelManager: an
out-of-memory kill in a memory cgroup shared by two kernels is the victim's alone; a kernel
moved into a limited cgroup after its start is known there when the OOM killer kills it; a
kernel behind a wrapper that does not ``exec`` is told by the wrapper's 128 + N and by the
state of the process under it. Each with the kernel log (``/dev/kmsg``) read, where it can be,
and without it (the memory cgroup's counts alone)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heartbeat._cause import Death
from heartbeat.jupyter import HeartbeatKernelManager, _kmsg, _proc
from tests import cgroups
from tests.cgroups import joiner
from tests.conftest import scaled
from tests.test_deaths import a_memory_cgroup, death_lines, manager, ready, until

# Two idle ipykernels need about half of this; the cell asks for twice it.
LIMIT = 384 << 20


@pytest.fixture(params=["kernel-log", "cgroup"])
def evidence(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """What an out-of-memory kill is told by: the kernel log where this process may read it
    (else skipped), or, with the log made unreadable, the memory cgroup's counts alone."""
    if request.param == "cgroup":
        monkeypatch.setattr(_kmsg, "_log", _kmsg.OomLog("/nonexistent/kmsg"))
    elif _kmsg.oom_log().mark() is None:
        pytest.skip("the kernel log (/dev/kmsg) cannot be read here")
    return str(request.param)


def seen_in(km: HeartbeatKernelManager, group: Path, kills: int) -> bool:
    """Whether the manager's witness of its kernel has read it in ``group`` with ``kills``
    out-of-memory kills counted there."""
    witness = km._death_watch.witness
    if witness is None:
        return False
    return any(
        g.cgroup.path == group and g.memory is not None and g.memory.oom_kills == kills
        for g in witness.where.values()
    )


def test_a_kernel_killed_by_hand_after_another_was_oom_killed_in_its_cgroup_is_no_oom_kill(
    evidence: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(group: Path) -> tuple[Death, Death, int]:
        join = joiner(group)
        a, b = manager(autorestart=False), manager(autorestart=False)
        await a.start_kernel(preexec_fn=join)
        await b.start_kernel(preexec_fn=join)
        client = a.client()
        try:
            client.start_channels()
            await client.wait_for_ready(timeout=scaled(60))
            await ready(b)
            await until(lambda: b.heart_has_beaten, 30, "B's heart never answered")
            client.execute(f"x = bytearray({2 * LIMIT})")
            await until(lambda: a.last_death is not None, 60, "A's death not seen")
            # B's cgroup read since A's kill: the count B's death is compared with.
            await until(lambda: seen_in(b, group, 1), 30, "B's cgroup not read again")
            b_pid = b.provisioner.pid  # type: ignore[union-attr]
            os.kill(b_pid, signal.SIGKILL)  # the provisioner's Popen: our own child
            await until(lambda: b.last_death is not None, 30, "B's death not seen")
            assert a.last_death is not None and b.last_death is not None
            return a.last_death, b.last_death, b_pid
        finally:
            client.stop_channels()
            await a.shutdown_kernel(now=True)
            await b.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO), a_memory_cgroup(LIMIT) as group:
        a, b, b_pid = asyncio.run(scenario(group))
    assert a.cause.kind == "oom" and a.cause.memory_limit == LIMIT, a
    if evidence == "kernel-log":
        assert not a.cause.likely and a.cause.evidence == "kernel-log", a
    else:
        # B was in its cgroup too: A may not have been the one killed.
        assert a.cause.likely and a.cause.evidence == "cgroup-shared", a
    assert b.cause.kind == "signal" and b.signal == signal.SIGKILL and not b.cause.likely, b
    [line] = [r for r in death_lines(caplog) if r.__dict__["heartbeat_death"] is b]
    assert line.getMessage().endswith(
        f"process {b_pid} died: it was killed by SIGKILL (9); not restarting it (autorestart is "
        "off)"
    ), line.getMessage()


def test_a_kernel_moved_into_a_limited_cgroup_after_its_start_is_oom_killed_there(
    evidence: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(group: Path) -> tuple[Death, int]:
        km = manager(autorestart=False)
        await km.start_kernel()  # in this process's cgroup, with no limit of its own
        client = km.client()
        try:
            client.start_channels()
            await client.wait_for_ready(timeout=scaled(60))
            pid = km.provisioner.pid  # type: ignore[union-attr]
            # As a cgroup rules engine or a batch system does, once it has started.
            (group / "cgroup.procs").write_text(str(pid))
            await until(lambda: seen_in(km, group, 0), 30, "the move was not seen")
            client.execute(f"x = bytearray({2 * LIMIT})")
            await until(lambda: km.last_death is not None, 60, "death not seen")
            assert km.last_death is not None
            return km.last_death, pid
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO), a_memory_cgroup(LIMIT) as group:
        death, pid = asyncio.run(scenario(group))
        assert cgroups.oom_kills(group) == 1
    assert death.cause.kind == "oom" and death.signal == signal.SIGKILL, death
    assert death.cause.memory_limit == LIMIT and not death.cause.likely, death
    assert death.cause.evidence == evidence, death
    [line] = death_lines(caplog)
    assert f"process {pid} died: it was killed by SIGKILL (9)" in line.getMessage()
    # The limit, or (its memory read while it lived, in that cgroup) what it used against it.
    assert re.search(
        r"( \(limit 384\.0 MiB\)|: .*its cgroup's limit is 384\.0 MiB.*); not restarting it",
        line.getMessage(),
    ), line.getMessage()


# -- behind a wrapper that does not exec ---------------------------------------------------------

# bash runs the kernel as its child, and does something after it ends (it cannot exec it),
# then exits with the kernel's status as a shell has it: 128 + N for signal N.
WRAPPED = f'{sys.executable} -m ipykernel_launcher -f "$0"; s=$?; echo "kernel ended: $s"; exit $s'


@pytest.fixture
def wrapped_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A kernel spec ``wrapped``: bash, running ipykernel. Yields a list to put the kernels'
    pids (bash's child) in: any still there after the test (a stopped one whose bash was
    killed) is killed."""
    spec = tmp_path / "data" / "kernels" / "wrapped"
    spec.mkdir(parents=True)
    argv = ["bash", "-c", WRAPPED, "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "wrapped"}))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    kernels: list[int] = []
    yield kernels
    for pid in kernels:
        with contextlib.suppress(OSError):
            if "ipykernel_launcher" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)  # the test's own kernel, orphaned


async def wrapped(km: HeartbeatKernelManager, kernels: list[int]) -> tuple[int, int]:
    """The wrapper's pid and the kernel's, once the kernel answers."""
    await ready(km)
    await until(lambda: km.heart_has_beaten, 30, "the heart never answered")
    shell = km.provisioner.pid  # type: ignore[union-attr]
    await until(lambda: len(_proc.descendants(shell)) == 1, 30, "no kernel under bash")
    [kernel] = _proc.descendants(shell)
    kernels.append(kernel)
    return shell, kernel


@pytest.mark.parametrize(
    ("signum", "words"),
    [
        (signal.SIGKILL, "exited with code 137, likely killed by SIGKILL (9) behind a wrapper"),
        (signal.SIGSEGV, "exited with code 139, likely killed by SIGSEGV (11) behind a wrapper"),
    ],
)
def test_a_wrapped_kernel_killed_by_a_signal_is_named_by_its_wrappers_128_plus_n(
    wrapped_kernel: list[int], signum: int, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[Death, int]:
        km = manager(kernel_name="wrapped", autorestart=False)
        await km.start_kernel()
        try:
            shell, kernel = await wrapped(km, wrapped_kernel)
            os.kill(kernel, signum)  # the test's own kernel, under bash
            await until(lambda: km.last_death is not None, 30, "death not seen")
            assert km.last_death is not None
            return km.last_death, shell
        finally:
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        death, shell = asyncio.run(scenario())
    assert death.cause.kind == "signal" and death.cause.likely, death
    assert death.signal == signum and death.exit_code == 128 + signum, death
    [line] = death_lines(caplog)
    assert line.getMessage().endswith(
        f"process {shell} died: it {words} (128 + {signum}); not restarting it (autorestart is off)"
    ), line.getMessage()


def test_a_wrapped_kernel_stopped_is_named_stopped_by_the_process_under_the_wrapper(
    wrapped_kernel: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> Death:
        km = manager(kernel_name="wrapped", autorestart=False, time_to_dead=1.0, first_beat=1.0)
        await km.start_kernel()
        try:
            _, kernel = await wrapped(km, wrapped_kernel)
            os.kill(kernel, signal.SIGSTOP)
            await until(lambda: km.last_death is not None, 30, "death not seen")
            assert km.last_death is not None
            return km.last_death
        finally:
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        death = asyncio.run(scenario())
    assert death.cause.kind == "stopped" and death.cause.evidence == "descendant", death
    assert death.silence is not None and death.silence >= 1.0, death
    [line] = death_lines(caplog)
    assert (
        "it was likely frozen: a process under its own (the kernel behind a wrapper) was stopped "
        "(SIGSTOP, or a debugger) while its heart was silent for "
    ) in line.getMessage(), line.getMessage()


def test_a_wrapped_kernel_oom_killed_is_named_out_of_memory(
    wrapped_kernel: list[int], evidence: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(group: Path) -> Death:
        km = manager(kernel_name="wrapped", autorestart=False)
        await km.start_kernel(preexec_fn=joiner(group))
        client = km.client()
        try:
            _, kernel = await wrapped(km, wrapped_kernel)
            client.start_channels()
            await client.wait_for_ready(timeout=scaled(60))
            # The kernel under bash read while it lived (a kill of it is then its kernel's).
            witness = km._death_watch.witness
            await until(lambda: witness and kernel in witness.descendants, 30, "kernel unseen")
            client.execute(f"x = bytearray({2 * LIMIT})")
            await until(lambda: km.last_death is not None, 60, "death not seen")
            assert km.last_death is not None
            return km.last_death
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO), a_memory_cgroup(LIMIT) as group:
        death = asyncio.run(scenario(group))
    assert death.cause.kind == "oom" and death.exit_code == 137 and death.signal == 9, death
    assert death.cause.evidence == evidence and death.cause.memory_limit == LIMIT, death
    # The log names the very process; the counts, behind the wrapper's exit code, only suggest.
    assert death.cause.likely == (evidence == "cgroup"), death
    [line] = death_lines(caplog)
    said: dict[str, Any] = {
        "kernel-log": "the kernel log names the process it wraps as the out-of-memory killer's "
        "victim",
        "cgroup": "likely out of memory: its memory cgroup recorded an out-of-memory kill",
    }
    assert said[evidence] in line.getMessage(), line.getMessage()
    assert re.search(r"( \(limit 384\.0 MiB\)|: .*384\.0 MiB)", line.getMessage())
