"""The probe of a dead heart's port (``heartbeat.jupyter._proc.probe_heart``), on real sockets:
a closed port is refused, a listening one that never answers is silent, a port behind a
blackhole or an ICMP host-unreachable (nftables, in a network namespace made for the test)
is unreachable, and none of them holds the event loop up; and the death line that waits for
it (``KernelLog``'s hold)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from benchmarks import lossy_net
from heartbeat._cause import Connection, Death
from heartbeat._judge import Dead
from heartbeat.jupyter._proc import HeartProbe, probe_heart
from heartbeat.jupyter.kernel import _DECIDED, KernelLog


@contextmanager
def listening(family: int = socket.AF_INET, address: Any = ("127.0.0.1", 0)) -> Iterator[Any]:
    """A socket that listens and never accepts: the system completes connects to it (its
    backlog), and nothing ever answers them, as a stopped kernel's heart."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind(address)
        sock.listen(8)
        yield sock.getsockname()


def closed_port() -> int:
    with listening() as (_, port):
        pass
    return int(port)  # nothing listens there any more


def probe(url: str, timeout: float = 1.0) -> Connection | None:
    async def answer() -> Connection | None:
        return await probe_heart(url, timeout)

    return asyncio.run(answer())


def test_a_closed_port_is_refused_and_a_listening_one_that_never_answers_silent() -> None:
    with listening() as (_, port):
        assert probe(f"tcp://127.0.0.1:{port}") is Connection.SILENT
    assert probe(f"tcp://127.0.0.1:{port}") is Connection.REFUSED


def test_a_port_that_accepted_then_was_reset_before_the_loop_saw_it_is_silent() -> None:
    # What a kill through a provisioner just after the probe began does: the system had
    # completed the connect (loopback does so within connect()), then the listener closed.
    async def scenario() -> Connection | None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        probe = probe_heart(f"tcp://127.0.0.1:{port}")  # its connect begun, as it returns
        listener.close()  # what the kill does next
        return await probe

    assert asyncio.run(scenario()) is Connection.SILENT


def test_a_host_name_is_resolved_then_probed() -> None:
    with listening() as (_, port):
        assert probe(f"tcp://localhost:{port}") is Connection.SILENT
    assert probe(f"tcp://localhost:{closed_port()}") is Connection.REFUSED


def test_an_ipv6_heart_is_probed_at_its_bracketed_address() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        context = listening(socket.AF_INET6, ("::1", 0))
        host, port, *_ = context.__enter__()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert probe(f"tcp://[{host}]:{port}") is Connection.SILENT
    finally:
        context.__exit__(None, None, None)
    assert probe(f"tcp://[::1]:{port}") is Connection.REFUSED


def test_an_ipc_heart_is_probed_at_its_socket_file(tmp_path: Path) -> None:
    path = str(tmp_path / "kernel-hb-5")
    with listening(socket.AF_UNIX, path):
        assert probe(f"ipc://{path}") is Connection.SILENT
    assert Path(path).exists()  # its file is left, nothing listens at it
    assert probe(f"ipc://{path}") is Connection.REFUSED
    os.unlink(path)
    assert probe(f"ipc://{path}") is Connection.REFUSED  # gone: nothing listens there either


def test_an_inproc_heart_has_no_port_and_a_bad_url_is_an_error() -> None:
    assert probe("inproc://heart") is None
    with pytest.raises(ValueError, match="port"):
        probe("tcp://127.0.0.1:0")
    with pytest.raises(ValueError, match="timeout"):
        probe("tcp://127.0.0.1:5555", timeout=0)
    with pytest.raises(ValueError, match="host"):
        HeartProbe("tcp://:5555")


def test_a_heart_probe_is_made_once_and_answers_afterwards() -> None:
    async def scenario() -> tuple[Connection | None, bool, Connection | None]:
        with listening() as (_, port):
            heart = HeartProbe(f"tcp://127.0.0.1:{port}")
            before = heart.connection
            first = heart.start()
            same = heart.start() is first
            await first
            return before, same, heart.connection

    assert asyncio.run(scenario()) == (None, True, Connection.SILENT)


# -- unreachable: inside a network namespace of the test's own --------------------------------

INSIDE = textwrap.dedent(
    """
    import asyncio, json, socket, sys
    from benchmarks import lossy_net
    from heartbeat.jupyter._proc import probe_heart

    async def timed(url, timeout):
        # The probe, and the longest the loop went without running a 5 ms ticker meanwhile
        # (from the call on: what probe_heart does before it returns counts too).
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        start = loop.time()
        ticks = [start]
        async def tick():
            while not done.is_set():
                await asyncio.sleep(0.005)
                ticks.append(loop.time())
        ticker = asyncio.ensure_future(tick())
        said = await probe_heart(url, timeout)
        took = loop.time() - start
        done.set()
        await ticker
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        return {"said": str(said), "took": took, "longest_gap": max(gaps)}

    async def main():
        out = {}
        with socket.socket() as dropped, socket.socket() as refused:
            for sock in (dropped, refused):
                sock.bind(("127.0.0.1", 0))
                sock.listen(8)
            ports = dropped.getsockname()[1], refused.getsockname()[1]
            urls = [f"tcp://127.0.0.1:{port}" for port in ports]
            out["before"] = [str(await probe_heart(url, 1.0)) for url in urls]
            lossy_net.lose(ports[0], 100)
            lossy_net.unreachable(ports[1])
            out["blackholed"] = await timed(urls[0], 1.0)
            out["host_unreachable"] = await timed(urls[1], 1.0)
        out["no_such_name"] = await timed("tcp://no-such-host.invalid:5555", 1.0)
        out["dropped_packets"] = lossy_net.dropped()
        json.dump(out, sys.stdout)

    asyncio.run(main())
    """
)


def test_a_port_that_cannot_be_reached_is_unreachable_within_the_timeout_and_never_blocks() -> None:
    reason = lossy_net.namespace_unavailable() or lossy_net.nft_missing()
    if reason:
        pytest.skip(f"no network namespace with nftables here: {reason}")
    done = lossy_net.run_in_namespace([sys.executable, "-c", INSIDE], timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    print(out)
    assert out["before"] == ["silent", "silent"]  # the same ports answered before the rules
    assert out["dropped_packets"] > 0
    blackholed, refused, unnamed = out["blackholed"], out["host_unreachable"], out["no_such_name"]
    for timed in (blackholed, refused, unnamed):
        # A connect blocking the loop would hold it for the whole wait (a second).
        assert timed["longest_gap"] < 0.25, timed
    assert blackholed["said"] == "unreachable" and 0.9 <= blackholed["took"] <= 1.5, blackholed
    assert refused["said"] == "unreachable" and refused["took"] < 0.5, refused  # EHOSTUNREACH
    assert unnamed["said"] == "unreachable" and unnamed["took"] <= 1.5, unnamed


# -- the death line that waits for it ----------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_held_death_line_is_written_once_its_hold_is_done_and_described_then() -> None:
    logger = logging.getLogger("tests.heart_probe.hold")
    logger.propagate = False
    lines = Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    asked: list[str] = []

    async def scenario() -> tuple[int, int, list[str]]:
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        dead = Dead(1.25)

        def describe(event: Dead) -> tuple[str, Death | None]:
            asked.append("answered" if answer.done() else "not yet")
            return "it was likely gone", None

        log = KernelLog(logger, "k1", describe, lambda event: answer if event is dead else None)
        log.info("an ordinary line")  # not a death: never held
        # A silence decided to be a death (heartbeat._silence): the line the manager writes.
        log.warning("heart is dead", extra={"heartbeat_event": dead, _DECIDED: True})
        written_before = len(lines.records)
        await asyncio.sleep(0.05)
        still_held = len(lines.records)
        answer.set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return written_before, still_held, [r.getMessage() for r in lines.records]

    try:
        before, held, messages = asyncio.run(scenario())
    finally:
        logger.removeHandler(lines)
    assert before == 1 and held == 1  # the death line waited
    assert messages == [
        "Kernel k1: an ordinary line",
        "Kernel k1: heart is dead; it was likely gone",
    ]
    assert asked == ["answered"]  # described once, when the answer was there
