"""Every socket the manager side opens is opened and configured here: a monitor's DEALER, a
pool's ROUTERs, the probe's REQ. CURVE, IPv6, reconnection, queue limits, one wording for each
error, and zmq's edge-triggered descriptor, handled once.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import resource
import sys
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio
from tornado.ioloop import IOLoop

from heartbeat._validate import EXPECTED_URL

# Names of the inproc endpoints that socket monitors send their events to: unique in a process.
_monitors = itertools.count(1)


def plain_context(context: zmq.Context[Any] | None) -> zmq.Context[Any]:
    """The context to make sync sockets in (an asyncio context gets a plain view of itself)."""
    if context is None:
        return zmq.Context.instance()
    if isinstance(context, zmq.asyncio.Context):
        # jupyter_client's async clients hold one; the loop's handlers need plain sockets.
        return zmq.Context.shadow(context.underlying)
    return context


def socket_error(exc: zmq.ZMQError, context: zmq.Context[Any], what: str) -> Exception:
    """The error to raise when zmq cannot open a socket: name the limit that was hit."""
    if exc.errno != errno.EMFILE:
        return RuntimeError(f"{what}: {exc.strerror}")
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        max_sockets = str(context.get(zmq.MAX_SOCKETS))
    except zmq.ZMQError:
        max_sockets = "a limited number of"
    return OSError(
        errno.EMFILE,
        f"{what}: too many open files. This process may open {soft} file descriptors "
        f"(the RLIMIT_NOFILE soft limit, 'ulimit -n') and its zmq context {max_sockets} "
        "sockets (zmq.MAX_SOCKETS); raise the limit, or watch many hearts with one "
        "HeartbeatPool socket",
    )


def paths_named(what: str, paths: int) -> str:
    """``what`` a socket is for, saying how many connections its heart is reached by (so that
    the error for a process out of descriptors tells where they went)."""
    return what if paths == 1 else f"{what} (one of its {paths} paths)"


def reconnect_ivl(interval: float) -> int:
    """Milliseconds between reconnection attempts: 10 to 100, a quarter of the interval."""
    return int(min(100.0, max(10.0, interval * 250)))


def reconnect_ivl_max(interval: float) -> int:
    """Milliseconds between reconnection attempts at most, once they keep failing: libzmq
    doubles the wait after each failed attempt up to this, half the interval (an address that
    refuses or does not answer is not tried 10 to 100 times a second for ever; a heart that
    comes back is reached again within half a ping interval)."""
    # At most a minute: zmq takes a C int of milliseconds, and a heart pinged once a day (a
    # huge time_to_dead) is still looked for again within a minute.
    return max(reconnect_ivl(interval), int(min(interval * 500, 60_000.0)))


def open_socket(
    context: zmq.Context[Any] | None,
    kind: int,
    *,
    what: str,
    interval: float,
    ipv6: bool,
    curve: bool = False,
    hwm: int | None = None,
) -> zmq.Socket[Any]:
    """A socket of ``kind`` that pings every ``interval`` seconds, ready to connect.

    Linger 0 (a stopped watcher has nothing worth delivering); reconnection within a quarter
    of the interval (a kernel that binds late gets the queued ping at once); a REQ (the probe's
    one ping) is relaxed, so a lost reply never wedges it; ``curve``: a CURVE client with an
    ephemeral key pair, each server key set at its ``connect()``. ``what`` names the socket in
    the error raised when the process is out of sockets or file descriptors.
    """
    ctx = plain_context(context)
    try:
        socket: zmq.Socket[Any] = ctx.socket(kind)
    except zmq.ZMQError as exc:
        raise socket_error(exc, ctx, what) from None
    try:
        socket.linger = 0
        socket.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl(interval))
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_ivl_max(interval))
        if ipv6:
            socket.setsockopt(zmq.IPV6, 1)
        if kind == zmq.REQ:
            socket.setsockopt(zmq.REQ_RELAXED, 1)
        if hwm is not None:
            socket.sndhwm = socket.rcvhwm = hwm
        if curve:
            public, secret = zmq.curve_keypair()  # the server authenticates itself only
            socket.curve_secretkey = secret
            socket.curve_publickey = public
    except BaseException:
        socket.close(linger=0)  # an option refused: nothing is left open behind the error
        raise
    return socket


def connect(
    socket: zmq.Socket[Any],
    url: str,
    *,
    curve_serverkey: bytes | None = None,
    routing_id: bytes | None = None,
    interval: float | None = None,
) -> None:
    """Connect to a heart; ValueError if zmq refuses the url (the socket stays open).

    ``url``'s host must be an address, never a name (heartbeat/_resolve.py finds the address
    of one, off the loop). ``interval``: the heart's ping interval, for the backoff of this
    connection's reconnection attempts (libzmq takes a socket's options as they stand at each
    ``connect()``, so one pool socket backs off each heart at its own pace).
    """
    try:
        if "://[" in url:
            socket.setsockopt(zmq.IPV6, 1)  # an IPv6 address: zmq refuses it otherwise
        if interval is not None:
            socket.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_ivl_max(interval))
        if routing_id is not None:
            socket.setsockopt(zmq.CONNECT_ROUTING_ID, routing_id)
        if curve_serverkey is not None:
            socket.curve_serverkey = curve_serverkey  # taken as it stands at connect()
        socket.connect(url)
    except zmq.ZMQError as exc:
        raise ValueError(
            f"cannot connect to {url!r}: {exc.strerror}; expected a reachable {EXPECTED_URL}"
        ) from None


def check_loop(loop: IOLoop, what: str) -> None:
    """RuntimeError, before any socket is opened, if ``loop`` can run nothing: its asyncio
    loop is closed (a finished ``asyncio.run()``, say). Handlers added to it would fail after
    the sockets were made, and timers would never fire."""
    asyncio_loop = getattr(loop, "asyncio_loop", None)
    if asyncio_loop is not None and asyncio_loop.is_closed():
        raise RuntimeError(f"{what}: its event loop is closed; start it on a running loop")


def read_soon_if_waiting(socket: zmq.Socket[Any], loop: IOLoop, read: Callable[[], object]) -> None:
    """Have ``read`` called on the loop's next turn if replies wait unread.

    zmq's descriptor is edge-triggered: a direct send, or a read that stops before the socket is
    empty, can consume the edge of replies that arrived meanwhile, and the loop is not told of
    them again. Whoever does either calls this afterwards.
    """
    if int(socket.get(zmq.EVENTS)) & zmq.POLLIN:
        loop.add_callback(read)


def close_watched(socket: zmq.Socket[Any], loop: IOLoop, fd: int) -> None:
    """Stop the loop watching ``fd`` and close ``socket``, even if its context was terminated."""
    try:
        loop.remove_handler(fd)  # by number: zmq may no longer be able to name it
    finally:
        socket.close(linger=0)


def watch_disconnections(socket: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """A PAIR socket told of every connection of ``socket`` that ended (zmq's socket monitor,
    limited to EVENT_DISCONNECTED: nothing is sent while connections stand). Read it with
    ``disconnections``; stop it with ``stop_watching``.

    The pool learns this way that a heart refuses its ROUTER: libzmq ends a connection whose
    peer's socket type it may not talk to (a REP heart) right after the handshake, with no
    handshake-failure event under the NULL mechanism (libzmq 4.3), and under NULL never makes
    it again, so that one event must not be lost: the PAIR takes any number of events (libzmq
    drops an event its monitor's pipe has no room for, and a thousand REP hearts that ended the
    connection first, each retried every reconnect interval until it is read, fill the 2,000
    places of the default limits in a fraction of a second).
    """
    address = f"inproc://heartbeat-monitor-{next(_monitors)}"
    context = socket.context
    try:
        socket.monitor(address, zmq.EVENT_DISCONNECTED)
        monitor: zmq.Socket[Any] = context.socket(zmq.PAIR)
    except zmq.ZMQError as exc:
        with contextlib.suppress(zmq.ZMQError):
            socket.monitor(None, 0)
        raise socket_error(exc, context, "cannot watch the pool's socket") from None
    monitor.linger = 0
    monitor.rcvhwm = 0  # no limit (taken at connect: an inproc pipe's room is both ends')
    monitor.connect(address)
    # One read of the empty socket: until a read finds it empty, libzmq signals no new event on
    # its descriptor (edge-triggered), and a loop watching it would never be woken. ``socket``
    # has no connection yet, so no event is lost.
    disconnections(monitor)
    return monitor


def disconnections(monitor: zmq.Socket[Any]) -> list[str]:
    """The endpoints (as given to ``connect``) of the disconnections waiting on ``monitor``,
    every one of them: its descriptor is edge-triggered too."""
    endpoints: list[str] = []
    while True:
        try:
            frames = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return endpoints
        # Frame 0: the event (16 bits, native order) and its value; frame 1: the endpoint.
        if len(frames) == 2 and len(frames[0]) == 6:
            event = int.from_bytes(frames[0][:2], sys.byteorder)
            if event == zmq.EVENT_DISCONNECTED:
                endpoints.append(frames[1].decode(errors="replace"))


def stop_watching(socket: zmq.Socket[Any], monitor: zmq.Socket[Any]) -> None:
    """End ``watch_disconnections`` on ``socket`` and close its PAIR socket."""
    # ZMQError: the socket, or its context, is already gone, and so is its monitor.
    with contextlib.suppress(zmq.ZMQError):
        socket.monitor(None, 0)
    monitor.close(linger=0)
