"""A monitor's own transport: one DEALER socket on the loop, and one timer.

Not a REQ socket: libzmq's REQ keeps only the reply to its newest request (a relaxed REQ drops
a reply that waits when the next ping goes out, and any after the first once one is read), so
a heart answering every ping within time_to_dead could lose exactly the replies that prove it
alive. A DEALER that sends the REQ envelope (an empty frame, then the payload) puts the same
bytes on the wire as a REQ, so no heart can tell, and it keeps every reply.
"""

from __future__ import annotations

import time
from typing import Any

import zmq
from tornado.ioloop import IOLoop

from heartbeat import _sockets
from heartbeat.transport import HeartSpec, Listener

# Plain ints: pyzmq's flag enums cost more to combine than the send itself, once a beat.
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)


def own_socket(context: Any = None, io_loop: Any = None) -> OwnSocket:
    """The monitor's default factory: a DEALER socket and a timer of the monitor's own.

    ``context``: a zmq context (default ``zmq.Context.instance()``); ``io_loop``: a tornado
    IOLoop (default ``IOLoop.current()`` at ``start()``). TypeError for anything else.
    """
    return OwnSocket(context, io_loop)


class OwnSocket:
    """The factory of :class:`SocketTransport` (the monitor's default)."""

    def __init__(self, context: zmq.Context[Any] | None, io_loop: IOLoop | None) -> None:
        if context is not None and not isinstance(context, zmq.Context):
            raise TypeError(f"context must be a zmq.Context or None, got {context!r}")
        if io_loop is not None and not isinstance(io_loop, IOLoop):
            raise TypeError(f"io_loop must be a tornado IOLoop or None, got {io_loop!r}")
        self._context = context
        self._io_loop = io_loop

    def check(self, heart: HeartSpec) -> None:
        """Any heart will do."""

    def open(self, heart: HeartSpec, listener: Listener) -> SocketTransport:
        """A DEALER socket connected to ``heart``, on the given loop or the current one."""
        loop = self._io_loop if self._io_loop is not None else IOLoop.current()
        return SocketTransport(heart, listener, loop, self._context)


class SocketTransport:
    """One DEALER socket speaking REQ's envelope, watched by the loop, and one timer."""

    # A lone monitor keeps its own cadence.
    phase: float | None = None

    def __init__(
        self,
        heart: HeartSpec,
        listener: Listener,
        loop: IOLoop,
        context: zmq.Context[Any] | None,
    ) -> None:
        socket = _sockets.open_socket(
            context,
            zmq.DEALER,
            what=f"cannot open a socket for {heart.url}",
            interval=heart.interval,
            ipv6=heart.endpoint.is_ipv6,
            curve=heart.curve_serverkey is not None,
        )
        try:
            _sockets.connect(socket, heart.url, curve_serverkey=heart.curve_serverkey)
        except ValueError:
            socket.close(linger=0)
            raise
        self._listener = listener
        self._loop = loop
        self._socket: zmq.Socket[Any] | None = socket
        self._fd: int = socket.FD
        self._timer: object | None = None
        loop.add_handler(self._fd, self._on_readable, IOLoop.READ)

    def send(self, payload: bytes) -> None:
        """Send one ping; a full queue (the heart is not reading) drops it."""
        socket = self._socket
        if socket is None:
            return
        try:
            # The REQ envelope: whole or not at all (libzmq refuses a message on its first
            # frame, never halfway).
            socket.send(b"", _MORE)
            socket.send(payload, _NOBLOCK)
        except zmq.Again:
            return  # the Judge will see the silence
        except zmq.ZMQError as exc:
            self._failed(exc)
            return
        _sockets.read_soon_if_waiting(socket, self._loop, self._read)

    def wake_at(self, deadline: float) -> None:
        """Set the one timer for ``deadline``."""
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
        # The Judge's clock is time.monotonic(); a relative delay needs no shared clock.
        delay = max(0.0, deadline - time.monotonic())
        self._timer = self._loop.call_later(delay, self._on_timer)

    def close(self) -> None:
        """Cancel the timer and close the socket. Idempotent."""
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None
        socket, self._socket = self._socket, None
        if socket is not None:
            _sockets.close_watched(socket, self._loop, self._fd)

    def _read(self) -> bool:
        """Hand every reply waiting to the listener; False if the socket is gone."""
        socket = self._socket
        if socket is None:
            return False
        try:
            while True:
                frames = socket.recv_multipart(_NOBLOCK)
                # An echo of our envelope; anything else is no reply to a ping of ours.
                if len(frames) == 2 and not frames[0]:
                    self._listener.payload_received(time.monotonic(), frames[1])
                if self._socket is None:
                    return False  # the listener stopped (a death, or stop()) meanwhile
        except zmq.Again:
            return True
        except zmq.ZMQError as exc:
            self._failed(exc)
            return False
        return True

    def _on_readable(self, fd: int, events: int) -> None:
        self._read()

    def _on_timer(self) -> None:
        self._timer = None
        # Flush before judging: a reply already in the socket is read before any verdict.
        if self._read():
            self._listener.timer_due(time.monotonic())

    def _failed(self, exc: zmq.ZMQError) -> None:
        self.close()  # so that a context.term() waiting on this socket can finish
        self._listener.transport_failed(exc.strerror)
