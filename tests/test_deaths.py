"""A real ipykernel's death under HeartbeatKernelManager: seen at once when its process is our
child, its cause in one log line and in ``last_death``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from traitlets.config import Config

from benchmarks.crash import answers
from heartbeat._cause import Death
from heartbeat.jupyter import HeartbeatKernelManager, HeartbeatKernelRestarter, _kmsg
from tests import cgroups
from tests.cgroups import joiner
from tests.conftest import run_python, scaled

# The restarter's own poll, as jupyter_client has it: a death it alone saw would take up to this.
RESTARTER_POLL = 3.0
# A death seen through the exit watch, on a loaded 2-core machine: well under one poll.
SEEN_WITHIN = 1.0


class PollRecorder(HeartbeatKernelRestarter):
    """Records when the restarter polls, so that a test can kill just after a periodic poll:
    then only something other than that poll can see the death within a poll's period."""

    polls: ClassVar[list[float]] = []

    async def poll(self) -> None:  # type: ignore[override]
        PollRecorder.polls.append(time.monotonic())
        await super().poll()


def manager(**settings: Any) -> HeartbeatKernelManager:
    config = Config({"KernelRestarter": {"time_to_dead": RESTARTER_POLL}})
    options: dict[str, Any] = {
        "kernel_name": "python3",
        "time_to_dead": 3.0,  # the heart would take at least this: it cannot be what saw it
        "first_beat": 5.0,
        "restarter_class": PollRecorder,
        "config": config,
        **settings,
    }
    return HeartbeatKernelManager(**options)


async def until(condition: Any, timeout: float, what: str, step: float = 0.005) -> float:
    """Wait for ``condition()`` (bounded); the monotonic time it was first seen true."""
    end = time.monotonic() + scaled(timeout)
    while not condition():
        assert time.monotonic() < end, what
        await asyncio.sleep(step)
    return time.monotonic()


async def ready(km: HeartbeatKernelManager) -> None:
    await answers(km)  # the crash benchmark's: a fresh client sees the kernel answer


async def kill_after_a_poll(km: HeartbeatKernelManager, signum: int) -> tuple[int, float]:
    """Signal the kernel's process (the provisioner's Popen: our own child) just after the
    restarter's periodic poll; its pid and the time of the kill."""
    process = km.provisioner.process  # type: ignore[union-attr]
    assert process.pid == km.provisioner.pid and process.poll() is None  # type: ignore[union-attr]
    polled = len(PollRecorder.polls)
    await until(lambda: len(PollRecorder.polls) > polled, 2 * RESTARTER_POLL, "no poll", 0.001)
    os.kill(process.pid, signum)
    return process.pid, time.monotonic()


def death_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "heartbeat_death" in r.__dict__]


async def crash(signum: int, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    PollRecorder.polls = []
    km = manager()
    await km.start_kernel()
    try:
        await ready(km)
        pid, killed = await kill_after_a_poll(km, signum)
        seen = await until(lambda: km.last_death is not None, 30, "death not seen")
        replaced = await until(lambda: km.provisioner.pid != pid, 30, "not restarted")  # type: ignore[union-attr]
        await asyncio.wait_for(km.ready, 60)
        await ready(km)  # the new kernel answers kernel_info
        up = time.monotonic()
        return {
            "km": km,
            "pid": pid,
            "seen": seen - killed,
            "replaced": replaced - killed,
            "up": up - killed,
            "death": km.last_death,
            "deaths": km.deaths,
        }
    finally:
        await km.shutdown_kernel(now=True)


@pytest.mark.parametrize(
    ("signum", "words"),
    [(signal.SIGKILL, "was killed by SIGKILL (9)"), (signal.SIGSEGV, "was killed by SIGSEGV (11)")],
)
def test_a_killed_kernel_is_seen_at_once_restarted_and_its_signal_named(
    signum: int, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        seen = asyncio.run(crash(signum, caplog))
    print(
        f"signal {signum}: seen {seen['seen']:.3f} s, new process {seen['replaced']:.3f} s, "
        f"new kernel answering {seen['up']:.3f} s after the kill"
    )
    # Killed just after a periodic poll: that poll would see it RESTARTER_POLL later.
    assert seen["seen"] <= SEEN_WITHIN, seen
    assert seen["replaced"] <= SEEN_WITHIN + 1.0, seen
    death: Death = seen["death"]
    assert death.signal == signum and death.exit_code is None and death.silence is None
    assert death.pid == seen["pid"] and death.restarting and seen["deaths"] == 1
    assert death.kernel_id == seen["km"].kernel_id and abs(death.time - time.time()) < 120
    [line] = death_lines(caplog)  # one line for the death
    assert line.__dict__["heartbeat_death"] == death and line.levelno == logging.WARNING
    # A fatal signal also names the Python frame it hit (the stack hook's faulthandler).
    assert re.fullmatch(
        rf"Kernel {death.kernel_id}: process {seen['pid']} died: it {re.escape(words)}"
        rf"{'' if signum == signal.SIGKILL else ' at .+'}; restarting it",
        line.getMessage(),
    ), line.getMessage()


def test_a_cell_that_exits_is_an_exit_code_and_with_autorestart_off_is_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[HeartbeatKernelManager, int, float, bool]:
        km = manager(autorestart=False)
        await km.start_kernel()
        client = km.client()
        try:
            client.start_channels()
            await client.wait_for_ready(timeout=scaled(60))
            pid = km.provisioner.pid  # type: ignore[union-attr]
            client.execute("import os; os._exit(3)")
            asked = time.monotonic()
            seen = await until(lambda: km.last_death is not None, 30, "death not seen")
            # Its heart is no longer watched: it would only report this death again, later.
            assert km._heart_monitor is None
            return km, pid, seen - asked, await km.is_alive()
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        km, pid, seen, alive = asyncio.run(scenario())
    death = km.last_death
    assert death is not None and death.exit_code == 3 and death.signal is None
    assert not death.restarting and not alive and km.deaths == 1
    # No restarter at all with autorestart off: only the exit watch can have seen it.
    assert seen <= SEEN_WITHIN + 1.0, seen  # the cell's own round trip included
    [line] = death_lines(caplog)
    assert line.getMessage() == (
        f"Kernel {km.kernel_id}: process {pid} died: it exited with code 3; "
        "not restarting it (autorestart is off)"
    )


@pytest.mark.parametrize("code", ["exit()", "quit()"])
def test_exit_in_a_cell_is_the_end_asked_for_not_a_death(
    code: str, caplog: pytest.LogCaptureFixture
) -> None:
    # ipykernel ends with code 0 on exit() or quit() (its reply carries 'ask_exit'): a line at
    # INFO, and no death: not counted (deaths, /metrics), no event, no callback, no last_death.
    from heartbeat.jupyter.metrics import process_tally

    told: list[Death] = []
    before = dict(process_tally().deaths)

    async def scenario() -> tuple[HeartbeatKernelManager, int]:
        km = manager()
        km.add_death_callback(told.append)
        await km.start_kernel()
        client = km.client()
        try:
            client.start_channels()
            await client.wait_for_ready(timeout=scaled(60))
            # A kernel whose heart has answered is running (the rule for "ended itself"):
            # the heart's first answer may come after the shell's on a loaded machine.
            await until(lambda: km.heart_has_beaten, 30, "its heart never answered")
            pid = km.provisioner.pid  # type: ignore[union-attr]
            client.execute(code)
            await until(lambda: km.provisioner.pid != pid, 30, "not restarted")  # type: ignore[union-attr]
            await asyncio.wait_for(km.ready, 60)
            return km, pid
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        km, pid = asyncio.run(scenario())
    assert death_lines(caplog) == [] and told == []
    assert km.deaths == 0 and km.last_death is None
    assert dict(process_tally().deaths) == before
    [line] = [r for r in caplog.records if "heartbeat_exit" in r.__dict__]
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        f"Kernel {km.kernel_id}: process {pid} ended: it ended itself: it exited with code 0 "
        "(exit() or quit() in a cell, say); restarting it"
    )


def test_a_stopped_kernel_is_frozen_its_heart_says_so_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[HeartbeatKernelManager, int]:
        km = manager(time_to_dead=1.0, first_beat=1.0)
        await km.start_kernel()
        try:
            await ready(km)
            await until(lambda: km.heart_has_beaten, 30, "the heart never answered")
            pid = km.provisioner.pid  # type: ignore[union-attr]
            os.kill(pid, signal.SIGSTOP)
            await until(lambda: km.last_death is not None, 30, "death not seen")
            await until(lambda: km.provisioner.pid != pid, 30, "not restarted")  # type: ignore[union-attr]
            await asyncio.wait_for(km.ready, 60)
            return km, pid
        finally:
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        km, pid = asyncio.run(scenario())
    death = km.last_death
    assert death is not None and death.cause.kind == "stopped" and not death.cause.likely
    assert death.silence is not None and 1.0 <= death.silence <= 3.0, death
    assert death.signal is None and death.exit_code is None and km.deaths == 1
    [line] = death_lines(caplog)  # the heart's line, not a second one for the killed process
    text = line.getMessage()
    assert text.startswith(f"Kernel {km.kernel_id}: heart at tcp://"), text
    assert (
        "it was frozen: its process was stopped (SIGSTOP, or a debugger) while its heart was "
        f"silent for {death.silence:.1f} s; killed its process {pid}; restarting it"
    ) in text, text


def test_death_callbacks_hear_of_a_death_before_the_restart_even_with_its_line_unlogged() -> None:
    heard: list[Any] = []

    async def scenario() -> HeartbeatKernelManager:
        km = manager(time_to_dead=1.0, first_beat=1.0)
        # The heart's death line is a WARNING: with it not logged, its death is still recorded
        # (from the monitor's verdict), with the silence measured.
        quiet = logging.getLogger("heartbeat-test-quiet")
        quiet.setLevel(logging.ERROR)
        km.log = quiet
        km.add_death_callback(lambda death: heard.append(("death", death)))
        await km.start_kernel()
        km.add_restart_callback(lambda: heard.append(("restart", None)))
        try:
            await ready(km)
            await until(lambda: km.heart_has_beaten, 30, "the heart never answered")
            os.kill(km.provisioner.pid, signal.SIGSTOP)  # type: ignore[union-attr]  # our child
            await until(lambda: len(heard) >= 2, 30, "not heard")
            await asyncio.wait_for(km.ready, 60)
            return km
        finally:
            await km.shutdown_kernel(now=True)

    km = asyncio.run(scenario())
    assert [what for what, _ in heard] == ["death", "restart"], heard
    death = heard[0][1]
    assert death is km.last_death and death.cause.kind == "stopped", death
    assert death.silence is not None and death.silence >= 1.0, death


def test_a_death_past_the_restart_limit_is_said_to_be_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[HeartbeatKernelManager, int]:
        km = manager(config=Config({"KernelRestarter": {"restart_limit": 0}}))
        await km.start_kernel()
        try:
            await ready(km)
            await until(lambda: km.heart_has_beaten, 30, "the heart never answered")
            pid = km.provisioner.pid  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)  # the provisioner's Popen: our own child
            await until(lambda: km.last_death is not None, 30, "death not seen")
            return km, pid
        finally:
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        km, pid = asyncio.run(scenario())
    death = km.last_death
    assert death is not None and not death.restarting, death
    assert death.notice() == "The kernel was killed by SIGKILL (9). It is not restarted."
    [line] = death_lines(caplog)
    assert line.getMessage().endswith(
        f"process {pid} died: it was killed by SIGKILL (9); not restarting it (past "
        "restart_limit 0: it died once)"
    ), line.getMessage()


def test_a_shutdown_is_no_death_and_leaves_no_watch(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[HeartbeatKernelManager, Any]:
        km = manager()
        await km.start_kernel()
        watch = km._death_watch.exit_watch
        assert watch is not None and not watch.closed
        await ready(km)
        await km.shutdown_kernel(now=False)  # the kernel exits: asked to
        await asyncio.sleep(0)  # let anything that would fire, fire
        return km, watch

    with caplog.at_level(logging.INFO):
        km, watch = asyncio.run(scenario())
    assert watch.closed and km._death_watch.exit_watch is None
    assert km.last_death is None and km.deaths == 0 and death_lines(caplog) == []


def test_a_kernel_that_dies_before_its_heart_answered_is_left_to_the_restarters_own_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Stock behaviour, kept: restarting it at once raced jupyter_server's teardown (commit
    # 28b9142). A "kernel" that binds no port and exits after 0.5 s, noting when.
    marks = tmp_path / "exits"
    code = (
        f"import time; time.sleep(0.5); open({str(marks)!r}, 'a').write(f'{{time.monotonic()}}\\n')"
    )
    spec = tmp_path / "data" / "kernels" / "dies-young"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-c", code, "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "dies young"}))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    poll = 6.0  # the restarter's period: long after the exit, on any machine

    async def scenario() -> tuple[float, float, dict[str, Any], dict[str, Any], str | None]:
        km = manager(
            kernel_name="dies-young",
            first_beat=60.0,  # its silent heart is no death meanwhile
            cache_ports=False,  # new ports are new
            config=Config({"KernelRestarter": {"time_to_dead": poll}}),
        )
        await km.start_kernel()
        started = time.monotonic()
        before = km.get_connection_info()
        restarts: list[float] = []
        km.add_restart_callback(lambda: restarts.append(time.monotonic()))
        try:
            await until(lambda: bool(restarts), 3 * poll, "never restarted")
            await asyncio.wait_for(km.ready, 60)  # the restart has brought up the next one
            exited = float(marks.read_text().split()[0])
            after = km.get_connection_info()
            return restarts[0] - started, restarts[0] - exited, before, after, km.kernel_id
        finally:
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        polled, waited, before, after, kernel_id = asyncio.run(scenario())
    # By the first periodic poll (one period after the restarter's start), long after the exit.
    assert polled >= poll - 1.0 and waited >= 1.0, (polled, waited)
    assert after["hb_port"] != before["hb_port"]  # moved to new ports, as stock
    [line] = death_lines(caplog)  # seen by that poll, and said once
    assert line.getMessage().startswith(f"Kernel {kernel_id}: process "), line.getMessage()
    # Dead before its first verdict (first_beat 60 s): how it died, and nothing more.
    assert line.getMessage().endswith(" died: it exited with code 0; restarting it")


# -- an out-of-memory kill, in a memory cgroup of the test's own -------------------------------

OOM_LIMIT = 256 << 20  # an ipykernel needs about a third of this; the cell asks for twice it


# One maker of every test's memory cgroup, v1 or v2 (tests/cgroups.py): no kill after, here.
a_memory_cgroup = cgroups.memory_cgroup


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A memory cgroup limited to OOM_LIMIT."""
    with a_memory_cgroup(OOM_LIMIT) as group:
        yield group


def test_an_out_of_memory_kill_is_named_with_its_cgroups_limit(
    memory_cgroup: Path, caplog: pytest.LogCaptureFixture
) -> None:
    procs = memory_cgroup / "cgroup.procs"
    # In the kernel's process before it runs the kernel: in the cgroup from its start.
    join_the_cgroup = joiner(memory_cgroup)

    async def scenario() -> tuple[HeartbeatKernelManager, int]:
        km = manager(autorestart=False)
        await km.start_kernel(preexec_fn=join_the_cgroup)
        client = km.client()
        try:
            client.start_channels()
            await client.wait_for_ready(timeout=scaled(60))
            pid = km.provisioner.pid  # type: ignore[union-attr]
            assert str(pid) in procs.read_text().split()
            client.execute(f"x = bytearray({2 * OOM_LIMIT})")
            await until(lambda: km.last_death is not None, 60, "death not seen")
            return km, pid
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        km, pid = asyncio.run(scenario())
    death = km.last_death
    assert death is not None and death.signal == signal.SIGKILL, death
    assert death.cause.kind == "oom" and not death.cause.likely, death
    assert death.cause.memory_limit == OOM_LIMIT
    # Named by the kernel log where this process may read it, else by the cgroup it was alone
    # in (tests/test_death_causes.py runs both).
    readable = _kmsg.oom_log().mark() is not None
    assert death.cause.evidence == ("kernel-log" if readable else "cgroup"), death
    [line] = death_lines(caplog)
    # The cgroup was the kernel's own: its peak, read at its death, is the kernel's.
    told = {
        "kernel-log": r", out of memory: the kernel log names it as the out-of-memory killer's "
        r"victim",
        "cgroup": r": its memory cgroup recorded an out-of-memory kill",
    }[death.cause.evidence]
    assert re.fullmatch(
        rf"Kernel {km.kernel_id}: process {pid} died: it was killed by SIGKILL \(9\){told}: "
        r"this kernel used 25\d\.\d MiB at its peak; its cgroup's limit is 256.0 MiB, its own; "
        r"not restarting it \(autorestart is off\)",
        line.getMessage(),
    ), line.getMessage()


SYNC_MANAGER = """
import asyncio, json, os, signal, time
from traitlets.config import Config
from heartbeat.jupyter import HeartbeatIOLoopKernelManager

async def main():
    km = HeartbeatIOLoopKernelManager(
        kernel_name="python3", time_to_dead=3.0, first_beat=5.0,
        config=Config({"KernelRestarter": {"time_to_dead": 3.0}}),  # its poll: every 3 s
    )
    km.start_kernel()
    try:
        client = km.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        client.stop_channels()
        process = km.provisioner.process  # the Popen: this process's own child
        # Just after the restarter's periodic poll: only the exit watch can see it sooner.
        restarter = km._restarter
        polls = []
        poll = restarter.poll

        def counted():
            polls.append(time.monotonic())
            return poll()  # a coroutine: the periodic callback awaits it

        restarter._pcallback.callback = counted
        while not polls:
            await asyncio.sleep(0.001)
        os.kill(process.pid, signal.SIGKILL)
        killed = time.monotonic()
        while km.last_death is None:
            assert time.monotonic() < killed + 30, "death not seen"
            await asyncio.sleep(0.005)
        seen = time.monotonic() - killed
        while km.provisioner is None or km.provisioner.pid == process.pid:
            assert time.monotonic() < killed + 30, "not restarted"
            await asyncio.sleep(0.005)
        while not km.ready.done():  # the restart runs on the loop: let it end before shutdown
            assert time.monotonic() < killed + 30, "restart not done"
            await asyncio.sleep(0.005)
        return {"seen": seen, "signal": km.last_death.signal, "deaths": km.deaths}
    finally:
        km.shutdown_kernel(now=True)

print(json.dumps(asyncio.run(main())))
"""


def test_the_sync_manager_sees_a_killed_kernel_at_once_too() -> None:
    # In a process of its own, as tests/test_jupyter.py runs the sync manager.
    result = run_python(SYNC_MANAGER, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["seen"] <= SEEN_WITHIN and seen["signal"] == 9 and seen["deaths"] == 1, seen
