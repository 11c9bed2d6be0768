"""Several TCP connections to one heart (``paths``): pings take turns on them, a reply on any is
life, and each is closed with the monitor."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from typing import Any

import pytest
import zmq

from heartbeat import HeartbeatPool, HeartMonitor, State
from heartbeat._validate import REMOTE_PATHS


class CountingHeart:
    """A ROUTER echo in a thread that counts the pings each connection brings."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.pings: collections.Counter[bytes] = collections.Counter()
        self.running = True
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            if self.sock.poll(10):
                frames = self.sock.recv_multipart()
                self.pings[frames[0]] += 1
                self.sock.send_multipart(frames)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()
        self.ctx.term()


def connections_to(port: int) -> int:
    """Established TCP connections to ``port`` (the pool's IPv6 socket reaches IPv4 hearts as
    mapped addresses, listed in tcp6)."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name, encoding="ascii") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if int(fields[2].rpartition(":")[2], 16) == port and fields[3] == "01":
                    count += 1
    return count


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tcp://127.0.0.1:5555", 1),
        ("tcp://localhost:5555", 1),
        ("ipc:///tmp/heart", 1),
        ("inproc://heart", 1),
        ("tcp://192.0.2.1:5555", REMOTE_PATHS),
        ("tcp://kernel-host.example:5555", REMOTE_PATHS),
    ],
)
def test_one_path_on_this_machine_and_several_beyond_it_by_default(url: str, expected: int) -> None:
    assert HeartMonitor(url).paths == expected
    assert HeartbeatPool().watch(url).paths == expected
    assert HeartMonitor(url, paths=3).paths == 3


def test_over_several_paths_each_connection_is_pinged_every_half_ttd_by_default() -> None:
    assert HeartMonitor("tcp://127.0.0.1:5555", time_to_dead=3.0).interval == 1.5
    assert HeartMonitor("tcp://127.0.0.1:5555", time_to_dead=3.0, paths=3).interval == 0.5
    assert HeartMonitor("tcp://192.0.2.1:5555", time_to_dead=2.0).interval == 1 / REMOTE_PATHS
    given = HeartMonitor("tcp://192.0.2.1:5555", time_to_dead=2.0, interval=0.7)
    assert given.interval == 0.7
    moved = HeartMonitor("tcp://192.0.2.1:5555", time_to_dead=2.0)
    moved.url = "tcp://127.0.0.1:5555"  # a heart on this machine: one path, the usual pace
    assert (moved.paths, moved.interval) == (1, 1.0)


@pytest.mark.parametrize(
    ("paths", "error"), [(0, ValueError), (9, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_a_bad_number_of_paths_is_named(paths: Any, error: type) -> None:
    with pytest.raises(error, match=rf"paths must be an int from 1 to 8 .* got {paths!r}"):
        HeartMonitor("tcp://127.0.0.1:5555", paths=paths)


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc/net/tcp")
@pytest.mark.parametrize("pooled", [False, True], ids=["lone", "pool member"])
def test_pings_take_turns_on_each_connection_and_every_reply_counts(pooled: bool) -> None:
    heart = CountingHeart()
    port = heart.port

    async def scenario() -> tuple[int, int, HeartMonitor]:
        pool = HeartbeatPool() if pooled else None
        monitor = HeartMonitor(
            heart.url, time_to_dead=0.4, first_beat=0.0, interval=0.02, paths=3, pool=pool
        )
        monitor.start()
        while monitor.stats.count < 30:
            await asyncio.sleep(0.01)
        during = connections_to(port)
        monitor.stop()
        for _ in range(500):  # zmq closes connections in its I/O thread, soon after
            if connections_to(port) == 0:
                break
            await asyncio.sleep(0.01)
        return during, connections_to(port), monitor

    try:
        during, after, monitor = asyncio.run(scenario())
    finally:
        heart.close()
    assert during == 3 and after == 0
    assert monitor.stats.count >= 30 and monitor.stats.late == 0
    per_path = sorted(heart.pings.values())
    assert len(per_path) == 3 and per_path[-1] - per_path[0] <= 2, heart.pings


def test_the_jupyter_classes_take_paths_as_configuration() -> None:
    from traitlets import TraitError
    from traitlets.config import Config

    from heartbeat.jupyter import HeartbeatKernelManager
    from heartbeat.jupyter.kernel import HeartbeatSettings

    config = Config()
    config.HeartbeatKernelManager.paths = 3
    km = HeartbeatKernelManager(config=config)
    assert km.paths == 3
    log = logging.getLogger("tests")
    settings = HeartbeatSettings(paths=2, shared_pool=False)
    watched = settings.watch("tcp://127.0.0.1:5555", curve_serverkey=None, context=None, log=log)
    assert watched.paths == 2
    default = HeartbeatSettings(shared_pool=False)
    remote = default.watch("tcp://192.0.2.1:5555", curve_serverkey=None, context=None, log=log)
    assert remote.paths == REMOTE_PATHS
    with pytest.raises(TraitError, match="paths must be an int from 1 to 8"):
        HeartbeatSettings(paths=0)


def test_a_transport_whose_context_failed_closes_once_and_quietly_after() -> None:
    # A failed socket closes the transport, then the monitor's stop() closes it again: the
    # second close has nothing left to do (its descriptors went with the first).
    import zmq

    context: zmq.Context[Any] = zmq.Context()
    heart = CountingHeart()
    try:

        async def scenario() -> HeartMonitor:
            monitor = HeartMonitor(
                heart.url, time_to_dead=1.0, first_beat=0.0, paths=2, context=context
            )
            monitor.start()
            while monitor.stats.count < 2:
                await asyncio.sleep(0.01)
            await asyncio.get_running_loop().run_in_executor(None, context.term)
            return monitor

        monitor = asyncio.run(scenario())
        assert not monitor.running and monitor.state is State.STOPPED
    finally:
        heart.close()
