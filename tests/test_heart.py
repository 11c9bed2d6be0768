"""The kernel side: echo, GIL independence, clean stop, bad addresses."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from heartbeat import Heart, HeartMonitor
from tests.conftest import Kernel, free_port


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def ask(ctx: zmq.Context[Any], url: str, frames: list[bytes], kind: int = zmq.REQ) -> list[bytes]:
    with ctx.socket(kind) as sock:
        sock.linger = 0
        sock.rcvtimeo = 5000
        sock.connect(url)
        if kind == zmq.DEALER:
            frames = [b"", *frames]
        sock.send_multipart(frames)
        reply = sock.recv_multipart()
        return reply[1:] if kind == zmq.DEALER else reply


@pytest.mark.parametrize("kind", [zmq.REQ, zmq.DEALER])
@pytest.mark.parametrize("frames", [[b"ping"], [b""], [b"a", b"b", b"c"], [os.urandom(4000)]])
def test_any_frames_come_back_unchanged(
    ctx: zmq.Context[Any], kind: int, frames: list[bytes]
) -> None:
    with Heart(context=ctx) as heart:
        assert ask(ctx, heart.url, frames, kind) == frames


def test_url_and_port_are_real_after_start_and_cleared_after_stop(ctx: zmq.Context[Any]) -> None:
    heart = Heart("tcp://127.0.0.1:0", context=ctx)
    assert heart.port is None and not heart.running
    heart.start()
    assert heart.running and heart.port is not None and heart.port > 0
    assert heart.url == f"tcp://127.0.0.1:{heart.port}"
    heart.stop()
    assert not heart.running and heart.port is None


def test_a_fixed_port_is_used(ctx: zmq.Context[Any]) -> None:
    port = free_port()
    with Heart(f"tcp://127.0.0.1:{port}", context=ctx) as heart:
        assert heart.port == port
        assert ask(ctx, f"tcp://127.0.0.1:{port}", [b"x"]) == [b"x"]


@pytest.mark.parametrize("url", ["ipc://{tmp}/hb.sock", "inproc://heart-{n}"])
def test_ipc_and_inproc(ctx: zmq.Context[Any], tmp_path: Any, url: str) -> None:
    url = url.format(tmp=tmp_path, n=os.getpid())
    with Heart(url, context=ctx) as heart:
        assert heart.url == url and heart.port is None
        assert ask(ctx, url, [b"ping"]) == [b"ping"]


def test_ipv6_loopback(ctx: zmq.Context[Any]) -> None:
    with Heart("tcp://[::1]:0", context=ctx) as heart, ctx.socket(zmq.REQ) as sock:
        sock.ipv6 = True
        sock.linger = 0
        sock.rcvtimeo = 5000
        sock.connect(heart.url)
        sock.send(b"six")
        assert sock.recv() == b"six"


def test_stop_is_idempotent_ends_the_thread_and_spares_the_users_context(
    ctx: zmq.Context[Any],
) -> None:
    heart = Heart(context=ctx)
    heart.start()
    heart.start()  # idempotent too
    assert [t.name for t in threading.enumerate()].count("heartbeat-heart") == 1
    url = heart.url
    heart.stop()
    heart.stop()
    assert "heartbeat-heart" not in [t.name for t in threading.enumerate()]
    assert not ctx.closed
    with ctx.socket(zmq.REQ) as sock:  # the context still works, the port is free
        sock.linger = 0
        sock.rcvtimeo = 300
        sock.connect(url)
        sock.send(b"ping")
        with pytest.raises(zmq.Again):
            sock.recv()


def test_restart_after_stop(ctx: zmq.Context[Any]) -> None:
    port = free_port()
    heart = Heart(f"tcp://127.0.0.1:{port}", context=ctx)
    for _ in range(3):
        heart.start()
        assert ask(ctx, heart.url, [b"again"]) == [b"again"]
        heart.stop()


def test_the_default_context_is_the_shared_instance_and_is_not_terminated() -> None:
    with Heart() as heart:
        assert ask(zmq.Context.instance(), heart.url, [b"p"]) == [b"p"]
    assert not zmq.Context.instance().closed


def test_a_context_terminated_under_the_heart_ends_its_thread() -> None:
    context: zmq.Context[Any] = zmq.Context()
    heart = Heart(context=context)
    heart.start()
    done = threading.Event()
    terminator = threading.Thread(target=lambda: (context.term(), done.set()))
    terminator.start()
    assert done.wait(10), "context.term() hung on the heart's sockets"
    terminator.join()
    heart.stop()  # still fine, and idempotent
    assert "heartbeat-heart" not in [t.name for t in threading.enumerate()]


def test_many_pings_in_parallel_from_many_clients(ctx: zmq.Context[Any]) -> None:
    with Heart(context=ctx) as heart:
        socks = [ctx.socket(zmq.DEALER) for _ in range(50)]
        try:
            for i, s in enumerate(socks):
                s.linger = 0
                s.rcvtimeo = 5000
                s.connect(heart.url)
                s.send_multipart([b"", str(i).encode()])
            assert [s.recv_multipart()[1] for s in socks] == [str(i).encode() for i in range(50)]
        finally:
            for s in socks:
                s.close()


def test_a_huge_message_disconnects_its_sender_and_others_keep_their_answers(
    ctx: zmq.Context[Any],
) -> None:
    with Heart(context=ctx, max_message_size=8192) as heart:
        with ctx.socket(zmq.DEALER) as flood:
            flood.linger = 0
            flood.connect(heart.url)
            flood.send_multipart([b"", b"x" * (1 << 20)])
            flood.rcvtimeo = 500
            with pytest.raises(zmq.Again):
                flood.recv_multipart()
        assert ask(ctx, heart.url, [b"still here"]) == [b"still here"]


# -- GIL independence: a real kernel process ----------------------------------------------------


def test_pings_are_answered_while_the_kernels_main_thread_holds_the_gil(
    kernel: Kernel, ctx: zmq.Context[Any]
) -> None:
    with ctx.socket(zmq.REQ) as sock:
        sock.linger = 0
        sock.rcvtimeo = 5000
        sock.connect(kernel.url)
        sock.send(b"warm")
        assert sock.recv() == b"warm"
        kernel.command("gil 3")
        time.sleep(0.3)  # let the kernel enter the C call; the count below proves it did
        rtts = []
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            t0 = time.monotonic()
            sock.send(b"p")
            assert sock.recv() == b"p"  # rcvtimeo turns a stuck heart into a failure
            rtts.append(time.monotonic() - t0)
            time.sleep(0.05)
        # The kernel was still inside the GIL-holding call for every one of those pings.
        assert kernel.read(timeout=10) == {"gil": 3.0}
    assert len(rtts) >= 10
    assert max(rtts) < 1.0  # a GIL-bound echo would have waited for the 3 s call to end


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "error", "words"),
    [
        ("127.0.0.1:5555", ValueError, "not a zmq endpoint"),
        ("http://127.0.0.1:5555", ValueError, "not a zmq endpoint"),
        ("tcp://127.0.0.1", ValueError, "no valid host"),
        ("tcp://127.0.0.1:65536", ValueError, "expected a number from 0 to 65535"),
        ("tcp://127.0.0.1:-1", ValueError, "expected a number from 0 to 65535"),
        ("tcp://127.0.0.1:http", ValueError, "port 'http'"),
        ("tcp://:5555", ValueError, "no valid host"),
        ("ipc://", ValueError, "no ipc name"),
        (5555, TypeError, "url must be a str"),
        (None, TypeError, "url must be a str"),
    ],
)
def test_malformed_urls_are_refused_before_anything_starts(
    url: object, error: type, words: str
) -> None:
    with pytest.raises(error, match=words):
        Heart(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "error"),
    [(0, ValueError), (10, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)],
)
def test_bad_max_message_size(size: object, error: type) -> None:
    with pytest.raises(error, match="max_message_size"):
        Heart(max_message_size=size)  # type: ignore[arg-type]


def test_bad_context_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"context must be a zmq\.Context"):
        Heart(context="ctx")  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["tcp://192.0.2.1:0", "tcp://no-such-host.invalid:0"])
def test_an_address_that_cannot_be_bound_is_a_value_error_and_leaves_nothing(
    ctx: zmq.Context[Any], url: str
) -> None:
    heart = Heart(url, context=ctx)
    with pytest.raises(ValueError, match="cannot bind heart to") as info:
        heart.start()
    assert url in str(info.value)
    assert not heart.running
    assert "heartbeat-heart" not in [t.name for t in threading.enumerate()]
    assert not [s for s in ctx._sockets if not s.closed]


def test_a_port_in_use_is_a_value_error(ctx: zmq.Context[Any]) -> None:
    with Heart(context=ctx) as first:
        with pytest.raises(ValueError, match="Address already in use"):
            Heart(first.url, context=ctx).start()
        assert ask(ctx, first.url, [b"ok"]) == [b"ok"]


def heart_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "heartbeat-heart" and t.is_alive()]


def test_a_heart_holds_the_echo_and_its_stop_socket_only(ctx: zmq.Context[Any]) -> None:
    with Heart(context=ctx) as heart:
        open_ = sorted(s.type for s in ctx._sockets if not s.closed)
        assert ask(ctx, heart.url, [b"ok"]) == [b"ok"]
    assert open_ == sorted([zmq.ROUTER, zmq.PAIR])  # no capture socket nobody reads
    assert not [s for s in ctx._sockets if not s.closed]


@pytest.mark.parametrize("calls", [("start", "start"), ("stop", "stop"), ("start", "stop")])
def test_start_and_stop_from_two_threads_leave_one_echo_thread_or_none(
    ctx: zmq.Context[Any], calls: tuple[str, str]
) -> None:
    for _ in range(20):
        heart = Heart(context=ctx)
        if "stop" in calls and calls[0] != "start":
            heart.start()
        together = threading.Barrier(2)

        def call(name: str, heart: Heart = heart, together: threading.Barrier = together) -> None:
            together.wait()
            getattr(heart, name)()

        threads = [threading.Thread(target=call, args=(name,)) for name in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(heart_threads()) == (1 if heart.running else 0)
        heart.stop()
        assert heart_threads() == []


def test_a_monitor_watches_an_ipv6_heart_at_the_url_jupyter_client_writes() -> None:
    # jupyter_client's KernelManager with ip "::1" makes "tcp://::1:<port>", no brackets.
    async def scenario() -> tuple[HeartMonitor, str]:
        with Heart("tcp://[::1]:0") as heart:
            url = f"tcp://::1:{heart.port}"
            monitor = HeartMonitor(url, time_to_dead=1.0, first_beat=1.0)
            monitor.start()
            try:
                end = time.monotonic() + 30
                while not monitor.stats.count:
                    assert time.monotonic() < end, "the heart never answered"
                    await asyncio.sleep(0.01)
            finally:
                monitor.stop()
            return monitor, url

    monitor, url = asyncio.run(scenario())
    assert monitor.url == url and monitor.stats.count >= 1
