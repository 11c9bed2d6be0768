"""Against the real peers, installed from PyPI: ipykernel's Heartbeat, a real ipykernel started by
jupyter_client's KernelManager, and jupyter_client's HBChannel watching our Heart."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from ipykernel.heartbeat import Heartbeat
from jupyter_client.channels import HBChannel
from jupyter_client.manager import AsyncKernelManager

from heartbeat import Heart, HeartMonitor, State
from heartbeat.connection import read_connection_file
from heartbeat.probe import ping
from tests.conftest import Kernel, wait_for
from tests.test_monitor import SLACK, Watch


@pytest.fixture
def ipykernel_heartbeat() -> Iterator[tuple[str, zmq.Context[Any], Heartbeat]]:
    """ipykernel's own Heartbeat thread, on its own context (ending the context ends it)."""
    ctx: zmq.Context[Any] = zmq.Context()
    hb = Heartbeat(ctx, ("tcp", "127.0.0.1", 0))
    hb.start()
    # It binds inside its thread, maybe after we connect: first_beat covers that.
    url = f"tcp://127.0.0.1:{hb.port}"
    yield url, ctx, hb
    ctx.term()
    hb.join(10)
    assert not hb.is_alive()


def test_monitor_watches_ipykernels_heartbeat_and_sees_it_die(
    ipykernel_heartbeat: tuple[str, zmq.Context[Any], Heartbeat],
) -> None:
    url, ctx, _hb = ipykernel_heartbeat

    async def scenario() -> Watch:
        watch = Watch(url, time_to_dead=0.5, first_beat=2.0)
        watch.start()
        assert await watch.until(lambda: len(watch.beats()) >= 4, timeout=10)
        assert watch.monitor.state is State.BEATING
        # Closing ipykernel's socket from outside is not possible; terminating its context is
        # how ipykernel itself ends the heartbeat, and it stops answering.
        terminator = threading.Thread(target=ctx.term)
        terminator.start()
        assert await watch.until(lambda: bool(watch.died), timeout=10)
        terminator.join(10)
        return watch

    watch = run_fresh(scenario())
    assert len(watch.died) == 1


def run_fresh(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def ipykernel_manager() -> Iterator[AsyncKernelManager]:
    km = AsyncKernelManager(kernel_name="python3")
    yield km
    if km.has_kernel:
        asyncio.run(km.shutdown_kernel(now=True))


async def start_and_wait(km: AsyncKernelManager) -> str:
    """Start the kernel and wait until its heart answers; return the heartbeat url."""
    await km.start_kernel()
    target = read_connection_file(km.connection_file)
    end = time.monotonic() + 60
    while ping(target.url, timeout=0.5) is None:
        assert time.monotonic() < end, "ipykernel's heart never answered"
        await asyncio.sleep(0.1)
    return target.url


def test_monitor_reports_a_frozen_real_ipykernel_dead_within_the_bound(
    ipykernel_manager: AsyncKernelManager,
) -> None:
    km = ipykernel_manager

    async def scenario() -> tuple[Watch, float]:
        url = await start_and_wait(km)
        watch = Watch(url, time_to_dead=1.0, first_beat=1.0)
        watch.start()
        assert await watch.until(lambda: len(watch.beats()) >= 3, timeout=60)
        pid = km.provisioner.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            assert await watch.until(lambda: bool(watch.died), timeout=30)
        finally:
            os.kill(pid, signal.SIGCONT)
        return watch, frozen

    watch, frozen = run_fresh(scenario())
    last_beat = watch.beats()[-1][0]
    assert last_beat <= frozen + 0.1
    assert 1.0 - 0.01 <= watch.died[0] - last_beat <= 1.5 + SLACK


def test_monitor_reads_a_real_connection_file_and_beats_with_a_real_ipykernel(
    ipykernel_manager: AsyncKernelManager,
) -> None:
    km = ipykernel_manager

    async def scenario() -> Watch:
        # Watch from launch, as a kernel manager does: the slow start is inside first_beat.
        await km.start_kernel()
        target = read_connection_file(km.connection_file)
        watch = Watch(target.url, time_to_dead=0.5, first_beat=30.0)
        watch.start()
        assert await watch.until(lambda: len(watch.beats()) >= 5, timeout=60)
        watch.monitor.stop()
        return watch

    watch = run_fresh(scenario())
    assert watch.died == [] and watch.monitor.stats.count >= 5


class RecordingHBChannel(HBChannel):
    """jupyter_client's HBChannel, unchanged but for recording its heart-failure calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures: list[float] = []

    def call_handlers(self, since_last_heartbeat: float) -> None:
        self.failures.append(since_last_heartbeat)


def test_jupyter_clients_hbchannel_beats_against_our_heart_and_sees_it_stop() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    heart = Heart(context=ctx)
    heart.start()
    hb = RecordingHBChannel(ctx, address=heart.url)
    hb.time_to_dead = 0.3
    hb.start()
    try:
        assert wait_for(lambda: hb.is_beating(), 5)
        time.sleep(1.5)  # five HBChannel cycles: each must find its reply
        assert hb.failures == [] and hb.is_beating()
        heart.stop()
        assert wait_for(lambda: bool(hb.failures), 5)
        assert not hb.is_beating()
    finally:
        hb.stop()
        heart.stop()
        ctx.term()


def test_jupyter_clients_hbchannel_beats_while_our_kernel_holds_the_gil(kernel: Kernel) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    hb = RecordingHBChannel(ctx, address=kernel.url)
    hb.time_to_dead = 0.3
    hb.start()
    try:
        assert wait_for(lambda: hb.is_beating(), 5)
        kernel.command("gil 3")
        assert kernel.read(timeout=15) == {"gil": 3.0}
        assert hb.failures == []
    finally:
        hb.stop()
        ctx.term()


def test_monitor_and_hbchannel_share_one_heart() -> None:
    with Heart() as heart:
        hb = RecordingHBChannel(zmq.Context.instance(), address=heart.url)
        hb.time_to_dead = 0.3
        hb.start()
        try:

            async def scenario() -> HeartMonitor:
                monitor = HeartMonitor(heart.url, time_to_dead=0.3, first_beat=0)
                monitor.start()
                await asyncio.sleep(1.5)
                monitor.stop()
                return monitor

            monitor = run_fresh(scenario())
            assert monitor.stats.count >= 5 and hb.failures == []
        finally:
            hb.stop()
