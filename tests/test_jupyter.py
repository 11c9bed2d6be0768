"""The Jupyter drop-ins, driven by jupyter_client's own client and manager code and a real
ipykernel."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from jupyter_client import (
    AsyncKernelClient,
    BlockingKernelClient,
    KernelManager,
)
from jupyter_client.channelsabc import HBChannelABC
from jupyter_client.threaded import ThreadedKernelClient
from traitlets import DottedObjectName, TraitError
from traitlets.config.loader import KVArgParseConfigLoader

from heartbeat import HeartbeatPool
from heartbeat.jupyter import (
    HBChannel,
    HeartbeatBlockingKernelClient,
    HeartbeatIOLoopKernelManager,
    HeartbeatKernelClient,
    HeartbeatKernelManager,
    HeartbeatKernelRestarter,
)
from heartbeat.jupyter.kernel import shared_pool
from heartbeat.probe import ping
from tests.conftest import run_python, wait_for
from tests.test_monitor import SLACK

HOLD_GIL = "import ctypes; ctypes.PyDLL(None).usleep({us})"


class RecordingHBChannel(HBChannel):
    failures: list[float]

    def call_handlers(self, since_last_heartbeat: float) -> None:
        self.failures.append(since_last_heartbeat)


def recording(ttd: float, fb: float) -> type[RecordingHBChannel]:
    return type(
        "Recording",
        (RecordingHBChannel,),
        {"time_to_dead": ttd, "first_beat": fb, "failures": []},
    )


@pytest.fixture
def ipykernel() -> Iterator[KernelManager]:
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    # Ready before the test's channel starts, so the tests can use a short first_beat.
    end = time.monotonic() + 60
    while ping(km._make_url("hb"), timeout=0.5) is None:
        assert time.monotonic() < end, "ipykernel's heart never answered"
    yield km
    if km.has_kernel:
        os.kill(km.provisioner.pid, signal.SIGCONT)  # type: ignore[union-attr]
    km.shutdown_kernel(now=True)


def test_it_is_an_hbchannel_to_jupyter_client() -> None:
    assert issubclass(HBChannel, HBChannelABC)
    channel = HBChannel(None, None, ("127.0.0.1", 5555))
    assert channel.address == "tcp://127.0.0.1:5555"
    assert channel.time_to_dead == 3.0 and channel.first_beat == 5.0
    assert not channel.is_beating() and not channel.is_alive()


@pytest.mark.parametrize("client_class", [BlockingKernelClient, ThreadedKernelClient])
def test_a_client_using_it_beats_through_a_gil_bound_cell_then_sees_a_freeze(
    ipykernel: KernelManager, client_class: type
) -> None:
    channel_class = recording(ttd=1.0, fb=2.0)
    client = client_class(connection_file=ipykernel.connection_file)
    client.load_connection_file()
    client.hb_channel_class = channel_class
    client.start_channels()
    started = time.monotonic()
    try:
        hb = client.hb_channel
        assert isinstance(hb, RecordingHBChannel)
        assert wait_for(hb.is_beating, 60)
        assert client.is_alive()  # for these clients: hb_channel.is_beating()
        if client_class is BlockingKernelClient:
            client.wait_for_ready(timeout=60)
            reply = client.execute_interactive(HOLD_GIL.format(us=4_000_000), timeout=60)
            assert reply["content"]["status"] == "ok"
            assert hb.failures == [] and hb.is_beating()
        time.sleep(max(0.0, started + 2.0 - time.monotonic()))  # past the grace
        os.kill(ipykernel.provisioner.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        frozen = time.monotonic()
        assert wait_for(lambda: bool(hb.failures), 30)
        assert time.monotonic() - frozen <= 1.5 + SLACK
        assert 1.0 - 0.01 <= hb.failures[0] <= 1.5 + SLACK
        assert not hb.is_beating()
    finally:
        client.stop_channels()
    assert not client.hb_channel.is_alive()


def test_a_client_not_made_by_a_manager_waits_for_ready_on_its_heartbeat(
    ipykernel: KernelManager,
) -> None:
    client = BlockingKernelClient(connection_file=ipykernel.connection_file)
    client.load_connection_file()
    client.hb_channel_class = recording(ttd=1.0, fb=30.0)
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)  # loops on is_alive() -> our is_beating()
        assert client.hb_channel.is_beating()
    finally:
        client.stop_channels()


def test_pause_and_unpause(ipykernel: KernelManager) -> None:
    hb = recording(ttd=0.5, fb=30.0)(None, None, ipykernel._make_url("hb"))
    hb.start()
    try:
        assert wait_for(hb.is_beating, 60)
        hb.pause()
        assert not hb.is_beating()
        os.kill(ipykernel.provisioner.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        time.sleep(1.0)  # paused: twice time_to_dead of silence is not judged
        assert hb.failures == []
        os.kill(ipykernel.provisioner.pid, signal.SIGCONT)  # type: ignore[union-attr]
        hb.unpause()
        assert wait_for(hb.is_beating, 10)
        assert hb.failures == []
    finally:
        hb.stop()
        hb.stop()
    assert not hb.is_alive()


def test_after_a_death_the_channel_keeps_watching_and_sees_the_kernel_return(
    ipykernel: KernelManager,
) -> None:
    hb = recording(ttd=0.5, fb=1.0)(None, None, ipykernel._make_url("hb"))
    hb.start()
    pid = ipykernel.provisioner.pid  # type: ignore[union-attr]
    try:
        assert wait_for(hb.is_beating, 60)
        os.kill(pid, signal.SIGSTOP)
        assert wait_for(lambda: bool(hb.failures), 10)
        os.kill(pid, signal.SIGCONT)
        assert wait_for(hb.is_beating, 10)
        assert len(hb.failures) == 1
    finally:
        hb.stop()


def test_bad_settings_fail_in_start_not_in_the_thread() -> None:
    hb = HBChannel(None, None, "tcp://127.0.0.1:0")
    with pytest.raises(ValueError, match="from 1 to 65535"):
        hb.start()
    hb = HBChannel(None, None, "tcp://127.0.0.1:5555")
    hb.time_to_dead = -1
    with pytest.raises(ValueError, match="time_to_dead"):
        hb.start()
    assert not hb.is_alive()


# -- the kernel manager -------------------------------------------------------------------------


def raised_by_start(hb: HBChannel) -> BaseException | None:
    """What ``hb.start()`` raised, or None; started from a thread of its own, so a start that
    blocks fails the test instead of stalling it."""
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            hb.start()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    starter = threading.Thread(target=start, name="test-starter", daemon=True)
    starter.start()
    starter.join(30)
    assert not starter.is_alive(), "HBChannel.start() blocked"
    return outcome[0]


def test_a_bad_curve_key_reaches_the_caller_of_start_and_leaves_no_thread() -> None:
    hb = HBChannel(None, None, "tcp://127.0.0.1:5555", curve_serverkey=b"not-a-key")
    error = raised_by_start(hb)
    assert isinstance(error, ValueError) and "curve_serverkey" in str(error), error
    assert not hb.is_alive() and not hb.is_beating()
    hb.stop()  # still idempotent


def test_a_socket_that_cannot_be_opened_reaches_the_caller_of_start_and_leaves_no_thread() -> None:
    context: zmq.Context[Any] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 1)
    taken = context.socket(zmq.REQ)  # the context's one socket: the channel's cannot be opened
    try:
        hb = HBChannel(context, None, "tcp://127.0.0.1:5555")
        error = raised_by_start(hb)
        assert isinstance(error, OSError) and error.errno == errno.EMFILE, error
        assert "zmq.MAX_SOCKETS" in str(error)
        assert not hb.is_alive()
        hb.stop()
    finally:
        taken.close()
        context.term()


def test_time_to_dead_and_first_beat_are_configurable_like_any_jupyter_option() -> None:
    config = KVArgParseConfigLoader(
        argv=["--HeartbeatKernelManager.time_to_dead=10", "--HeartbeatKernelManager.first_beat=0"]
    ).load_config()
    km = HeartbeatKernelManager(config=config)
    assert km.time_to_dead == 10.0 and km.first_beat == 0.0
    default = HeartbeatKernelManager()
    assert default.time_to_dead == 3.0 and default.first_beat == 5.0
    assert default.restarter_class is HeartbeatKernelRestarter
    with pytest.raises(TraitError, match="time_to_dead must be a finite number > 0"):
        HeartbeatKernelManager(time_to_dead=0)
    with pytest.raises(TraitError, match="first_beat"):
        HeartbeatKernelManager(first_beat=float("inf"))


class ThreadedClientManager(HeartbeatIOLoopKernelManager):
    """Sets only client_class, as qtconsole's QtKernelManager does."""

    client_class = DottedObjectName("jupyter_client.threaded.ThreadedKernelClient")


class PlainAsyncClientManager(HeartbeatKernelManager):
    client_class = DottedObjectName("jupyter_client.asynchronous.AsyncKernelClient")


def test_a_subclass_or_config_that_sets_only_client_class_gets_the_client_it_names() -> None:
    # Ours by default.
    assert type(HeartbeatKernelManager().client()) is HeartbeatKernelClient
    assert type(HeartbeatIOLoopKernelManager().client()) is HeartbeatBlockingKernelClient
    # client_factory follows client_class, as in jupyter_client.
    assert type(ThreadedClientManager().client()) is ThreadedKernelClient
    assert type(PlainAsyncClientManager().client()) is AsyncKernelClient
    config = KVArgParseConfigLoader(
        argv=[
            "--HeartbeatIOLoopKernelManager.client_class="
            "jupyter_client.blocking.BlockingKernelClient"
        ]
    ).load_config()
    assert type(HeartbeatIOLoopKernelManager(config=config).client()) is BlockingKernelClient
    # Set after construction too.
    km = HeartbeatIOLoopKernelManager()
    km.client_class = "jupyter_client.threaded.ThreadedKernelClient"
    assert type(km.client()) is ThreadedKernelClient


def test_a_frozen_kernel_is_restarted_and_a_busy_one_is_not() -> None:
    async def scenario() -> dict[str, Any]:
        km = HeartbeatKernelManager(kernel_name="python3", time_to_dead=1.0, first_beat=10.0)
        restarts: list[float] = []
        client = None
        try:
            await km.start_kernel()
            km.add_restart_callback(lambda: restarts.append(time.monotonic()))
            client = km.client()  # after the start: it reads the ports the kernel got
            client.start_channels()
            await client.wait_for_ready(timeout=60)
            first_pid = km.provisioner.pid  # type: ignore[union-attr]

            # A cell that holds the GIL for 10 s: the heart answers, nothing restarts.
            msg_id = client.execute(HOLD_GIL.format(us=10_000_000))
            reply = await client.get_shell_msg(timeout=60)
            while reply["parent_header"]["msg_id"] != msg_id:  # a late kernel_info reply
                reply = await client.get_shell_msg(timeout=60)
            assert reply["content"]["status"] == "ok"
            assert restarts == [] and km.provisioner.pid == first_pid  # type: ignore[union-attr]
            client.stop_channels()

            # Frozen: the process lives, the heart is silent, the restarter restarts it.
            os.kill(first_pid, signal.SIGSTOP)
            frozen = time.monotonic()
            end = frozen + 60
            while not restarts and time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert restarts, "the frozen kernel was not restarted"
            end = time.monotonic() + 60
            while not (km.provisioner and km.provisioner.pid != first_pid):
                assert time.monotonic() < end, "no new kernel"
                await asyncio.sleep(0.05)
            await asyncio.wait_for(km.ready, 60)  # the restart has finished
            assert await km.is_alive()
            new_pid = km.provisioner.pid
            return {"frozen": frozen, "restarts": restarts, "old": first_pid, "new": new_pid}
        finally:
            if client is not None:
                client.stop_channels()
            await km.shutdown_kernel(now=True)

    result = asyncio.run(scenario())
    assert result["new"] != result["old"]
    with pytest.raises(ProcessLookupError):
        os.kill(result["old"], 0)  # the frozen one was killed, not left behind
    # Death within the bound (ttd .. 1.5 ttd after the last reply) plus the prompt poll.
    assert result["restarts"][0] - result["frozen"] <= 1.5 * 1.0 + SLACK
    assert len(result["restarts"]) == 1


# -- many kernels, deaths, ports, logs -----------------------------------------------------------


async def freeze_when_beating(km: HeartbeatKernelManager, client: Any) -> int:
    """Start ``client``, wait until the kernel is ready and its heart has answered, then
    freeze it with SIGSTOP; returns its pid."""
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    while not km.heart_has_beaten:
        await asyncio.sleep(0.05)
    pid = int(km.provisioner.pid)  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    return pid


async def restarted(km: HeartbeatKernelManager, old: int, timeout: float = 30) -> None:
    """Wait until a new kernel process has replaced ``old``."""
    end = time.monotonic() + timeout
    while km.provisioner is None or km.provisioner.pid == old:  # type: ignore[union-attr]
        assert time.monotonic() < end, "not restarted"
        await asyncio.sleep(0.05)


async def seen_dead(client: Any, timeout: float = 30) -> None:
    """Wait until ``client.is_alive()`` is False."""
    end = time.monotonic() + timeout
    while await client.is_alive():
        assert time.monotonic() < end, "the client never saw the death"
        await asyncio.sleep(0.05)


def pool_of_this_loop() -> HeartbeatPool:
    return shared_pool(logging.getLogger("tests"))


def test_kernel_managers_on_one_loop_share_one_pool_and_leave_it_cleanly() -> None:
    async def scenario() -> list[tuple[int, int]]:
        options = {"kernel_name": "python3", "time_to_dead": 1.0, "first_beat": 30.0}
        shared = [HeartbeatKernelManager(**options) for _ in range(2)]
        lone = HeartbeatKernelManager(shared_pool=False, **options)
        seen = []
        try:
            for km in [*shared, lone]:
                await km.start_kernel()
            pool = pool_of_this_loop()
            seen.append((len(pool), pool.sockets))  # the lone one is not in it
            await shared[0].restart_kernel(now=True)
            seen.append((len(pool), pool.sockets))  # left, and joined again
            await shared[0].shutdown_kernel(now=True)
            seen.append((len(pool), pool.sockets))
            await shared[1].shutdown_kernel(now=True)
            seen.append((len(pool), pool.sockets))  # nothing held while nothing is watched
        finally:
            for km in [*shared, lone]:
                if km.has_kernel:
                    await km.shutdown_kernel(now=True)
        return seen

    assert asyncio.run(scenario()) == [(2, 1), (2, 1), (1, 1), (0, 0)]


@pytest.mark.parametrize("death", ["frozen", "killed"])
def test_a_kernel_that_has_beaten_keeps_its_ports_when_it_dies_inside_stable_start_time(
    death: str,
) -> None:
    # jupyter_client moves a kernel that dies within stable_start_time (10 s) to new random
    # ports, in case its own were taken (only without cache_ports: cached ports are reused
    # whatever its log line says). One whose heart answered had bound them: it keeps them, and
    # a client connected before the restart talks to the new kernel. Killed: a process death
    # (its heart's monitor is stopped at once), frozen: a heart death.
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str, bool]:
        km = HeartbeatKernelManager(
            kernel_name="python3", time_to_dead=1.0, first_beat=1.0, cache_ports=False
        )
        await km.start_kernel()
        client = km.client()
        try:
            before = km.get_connection_info()
            pid = await freeze_when_beating(km, client)
            if death == "killed":
                os.kill(pid, signal.SIGKILL)
            await restarted(km, pid)
            await asyncio.wait_for(km.ready, 60)
            knows = not await client.is_alive()
            reply = await client.kernel_info(reply=True, timeout=60)
            return before, km.get_connection_info(), reply["content"]["status"], knows
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    before, after, status, knows = asyncio.run(scenario())
    ports = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    assert [after[p] for p in ports] == [before[p] for p in ports]
    assert status == "ok"  # the client made before the restart reached the new kernel
    assert knows  # and knows that what it asked the old one is lost


def test_a_kernel_frozen_before_its_heart_ever_answered_moves_to_new_ports() -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        km = HeartbeatKernelManager(
            kernel_name="python3", time_to_dead=0.5, first_beat=0.5, cache_ports=False
        )
        await km.start_kernel()
        try:
            before = km.get_connection_info()
            old = km.provisioner.pid  # type: ignore[union-attr]
            os.kill(old, signal.SIGSTOP)  # still importing: its heart is not bound yet
            await restarted(km, old)
            await asyncio.wait_for(km.ready, 60)  # the restart has finished
            return before, km.get_connection_info()
        finally:
            await km.shutdown_kernel(now=True)

    before, after = asyncio.run(scenario())
    assert after["hb_port"] != before["hb_port"]  # as jupyter_client does: maybe a port clash


def test_with_autorestart_off_a_frozen_kernel_is_killed_and_its_death_is_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[str, int, bool, bool]:
        km = HeartbeatKernelManager(
            kernel_name="python3", time_to_dead=1.0, first_beat=1.0, autorestart=False
        )
        await km.start_kernel()
        client = km.client()
        try:
            pid = await freeze_when_beating(km, client)
            await seen_dead(client)
            return km.kernel_id, pid, await km.is_alive(), km.deaths == 1
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO):
        kernel_id, pid, alive, counted = asyncio.run(scenario())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed, and reaped: nothing left stopped
    assert not alive and counted
    lines = [r for r in caplog.records if "dead" in r.getMessage() or "heart" in r.getMessage()]
    [death] = lines  # one line for the death, not one per layer
    text = death.getMessage()
    assert death.levelno == logging.WARNING and death.name != "heartbeat"  # the manager's log
    assert text.startswith(f"Kernel {kernel_id}: heart at tcp://"), text
    silence = float(text.split("no reply for ")[1].split(" s")[0])
    assert 1.0 <= silence <= 1.5 + SLACK, text
    assert "it was frozen: its process was stopped (SIGSTOP, or a debugger)" in text, text
    assert f"; killed its process {pid}; not restarting it (autorestart is off)" in text, text


SYNC_MANAGER = textwrap.dedent(
    """
    import asyncio, json, os, signal, time
    from heartbeat.jupyter import HeartbeatBlockingKernelClient, HeartbeatIOLoopKernelManager

    async def main():
        # The sync manager and its restarter run on the loop that is running here.
        km = HeartbeatIOLoopKernelManager(kernel_name="python3", time_to_dead=1.0, first_beat=1.0)
        km.start_kernel()
        client = km.client()
        try:
            assert isinstance(client, HeartbeatBlockingKernelClient)
            client.start_channels()
            client.wait_for_ready(timeout=60)
            while not km.heart_has_beaten:
                await asyncio.sleep(0.05)
            old = km.provisioner.pid
            os.kill(old, signal.SIGSTOP)
            end = time.monotonic() + 30
            while km.provisioner is None or km.provisioner.pid == old:
                assert time.monotonic() < end, "not restarted"
                await asyncio.sleep(0.05)
            # The restarter restarts on the loop without blocking it: a shutdown asked from
            # the loop before that restart is done would overlap it (jupyter_client's ready
            # future is then set twice).
            while not km.ready.done():
                assert time.monotonic() < end, "restart not done"
                await asyncio.sleep(0.05)
            return {"old": old, "client_alive": client.is_alive(), "deaths": km.deaths}
        finally:
            client.stop_channels()
            km.shutdown_kernel(now=True)

    print(json.dumps(asyncio.run(main())))
    """
)


def test_the_sync_manager_kills_and_restarts_a_frozen_kernel_its_client_sees_the_death() -> None:
    # In a process of its own: jupyter_core runs sync calls made on a running loop in helper
    # threads that live as long as the process.
    result = run_python(SYNC_MANAGER, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(seen["old"], 0)  # killed and reaped
    assert seen == {"old": seen["old"], "client_alive": False, "deaths": 1}
