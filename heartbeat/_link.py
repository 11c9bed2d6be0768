"""How a HeartMonitor reaches its heart: its own REQ socket and timer (``SocketLink``), or a
place in a HeartbeatPool that shares one socket and one timer among many (see pool.py).

A link sends pings, hands every reply's payload to the monitor, and calls the monitor's
``_judge_now()`` when asked to, always after reading every reply already received.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

import zmq
import zmq.asyncio
from tornado.ioloop import IOLoop
from zmq.eventloop.zmqstream import ZMQStream

from heartbeat import _validate
from heartbeat.probe import curve_client

if TYPE_CHECKING:
    from heartbeat.monitor import HeartMonitor


class Link(Protocol):
    """What a HeartMonitor needs from its transport."""

    #: The grid its pings are due on (see ``Judge.start``); None: every interval from start.
    phase: float | None

    def send(self, payload: bytes) -> None: ...

    def wake_at(self, deadline: float) -> None: ...

    def close(self) -> None: ...


def plain_context(context: zmq.Context[Any] | None) -> zmq.Context[Any]:
    """The context to make sync sockets in (an asyncio context gets a plain view of itself)."""
    if context is None:
        return zmq.Context.instance()
    if isinstance(context, zmq.asyncio.Context):
        # jupyter_client's async clients hold one; ZMQStream needs plain sockets.
        return zmq.Context.shadow(context.underlying)
    return context


def close_stream(stream: ZMQStream, loop: IOLoop, fd: int) -> None:
    """Close a stream and its socket, even when the socket's context was terminated."""
    try:
        stream.close(linger=0)
    except zmq.ZMQError:
        # zmq can no longer name the descriptor: the loop forgets it by number.
        loop.remove_handler(fd)
        stream.socket.close(linger=0)


class SocketLink:
    """One REQ socket on the loop, and one timer."""

    def __init__(
        self, monitor: HeartMonitor, loop: IOLoop, context: zmq.Context[Any] | None
    ) -> None:
        self._monitor = monitor
        self._loop = loop
        self.phase: float | None = None  # a lone monitor keeps its own cadence
        socket = self._open(plain_context(context))
        self._fd: int = socket.FD
        self._stream: ZMQStream | None = ZMQStream(socket, loop)
        self._stream.on_recv(self._on_recv)
        self._timer: object | None = None

    def _open(self, context: zmq.Context[Any]) -> zmq.Socket[Any]:
        m = self._monitor
        try:
            socket: zmq.Socket[Any] = context.socket(zmq.REQ)
        except zmq.ZMQError as exc:
            raise _validate.socket_error(
                exc, context, f"cannot open a socket for {m.url}"
            ) from None
        try:
            socket.linger = 0
            # Relaxed: a lost reply never wedges the socket; the next ping simply goes out.
            # Not correlated: our own tokens match replies to pings, so a reply that comes
            # after the next ping was sent still proves life (see _judge).
            socket.setsockopt(zmq.REQ_RELAXED, 1)
            # Reconnect quickly: a kernel that binds late must get the queued ping at once.
            socket.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl(m.interval))
            if m._endpoint.is_ipv6:  # the parsed url, as Heart and ping() use
                socket.setsockopt(zmq.IPV6, 1)
            if m.curve_serverkey is not None:
                curve_client(socket, m.curve_serverkey)
            socket.connect(m.url)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise ValueError(
                f"cannot connect to {m.url!r}: {exc.strerror}; expected a reachable "
                "'tcp://host:port', 'ipc://path' or 'inproc://name'"
            ) from None
        return socket

    def send(self, payload: bytes) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.socket.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            return  # queue full: the heart is not reading, and the judge will see the silence
        except zmq.ZMQError as exc:
            self._monitor._fail(exc)
            return
        # zmq's descriptor is edge-triggered and our direct send may have consumed the edge of
        # a reply that arrived meanwhile; look once so that reply is not left waiting.
        if int(stream.socket.get(zmq.EVENTS)) & zmq.POLLIN:
            self._loop.add_callback(self._flush)

    def wake_at(self, deadline: float) -> None:
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
        # The judge's clock is time.monotonic(); a relative delay needs no shared clock.
        delay = max(0.0, deadline - time.monotonic())
        self._timer = self._loop.call_later(delay, self._on_timer)

    def close(self) -> None:
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None
        stream, self._stream = self._stream, None
        if stream is not None:
            close_stream(stream, self._loop, self._fd)

    def _flush(self) -> bool:
        if self._stream is None:
            return False
        try:
            self._stream.flush(zmq.POLLIN)
        except zmq.ZMQError as exc:
            self._monitor._fail(exc)
            return False
        return self._stream is not None

    def _on_timer(self) -> None:
        self._timer = None
        # Flush before judging: a reply already in the socket is read before any verdict.
        if self._flush():
            self._monitor._judge_now(time.monotonic())

    def _on_recv(self, frames: list[bytes]) -> None:
        if len(frames) == 1:
            self._monitor._on_reply(frames[0], time.monotonic())


def reconnect_ivl(interval: float) -> int:
    """Milliseconds between reconnection attempts: 10 to 100, a quarter of the interval."""
    return int(min(100.0, max(10.0, interval * 250)))
