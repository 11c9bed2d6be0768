"""A monitor's own transport: one DEALER socket on the loop, and one timer.

Not a REQ socket: libzmq's REQ keeps only the reply to its newest request (a relaxed REQ drops
a reply that waits when the next ping goes out, and any after the first once one is read), so
a heart answering every ping within time_to_dead could lose exactly the replies that prove it
alive. A DEALER that sends the REQ envelope (an empty frame, then the payload) puts the same
bytes on the wire as a REQ, so no heart can tell, and it keeps every reply.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import zmq
from tornado.ioloop import IOLoop

from heartbeat import _resolve, _sockets
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
        _sockets.check_loop(loop, f"cannot watch {heart.url}")  # before any socket is made
        return SocketTransport(heart, listener, loop, self._context)


class SocketTransport:
    """DEALER sockets speaking REQ's envelope, one for each path to the heart, watched by the
    loop, and one timer. Pings take turns on the paths; every reply on any of them is read."""

    # A lone monitor keeps its own cadence.
    phase: float | None = None

    def __init__(
        self,
        heart: HeartSpec,
        listener: Listener,
        loop: IOLoop,
        context: zmq.Context[Any] | None,
    ) -> None:
        # One socket a path: libzmq makes one connection per endpoint on a DEALER socket.
        sockets: list[zmq.Socket[Any]] = []
        try:
            for _ in range(heart.paths):
                socket = _sockets.open_socket(
                    context,
                    zmq.DEALER,
                    what=_sockets.paths_named(f"cannot open a socket for {heart.url}", heart.paths),
                    interval=heart.interval,
                    ipv6=heart.endpoint.is_ipv6,
                    curve=heart.curve_serverkey is not None,
                )
                sockets.append(socket)
                if not heart.endpoint.is_name:  # an address: connected at once, as always
                    _sockets.connect(
                        socket,
                        heart.url,
                        curve_serverkey=heart.curve_serverkey,
                        interval=heart.interval,
                    )
        except (ValueError, OSError, RuntimeError):
            for socket in sockets:
                socket.close(linger=0)
            raise
        self._listener = listener
        self._heart = heart
        self._connected: str | None = None  # the address a host name's paths are connected to
        self._loop = loop
        self._sockets: list[zmq.Socket[Any]] = sockets
        self._fds: list[int] = [socket.FD for socket in sockets]
        self._turn = 0
        self._timer: object | None = None
        for fd in self._fds:
            loop.add_handler(fd, self._on_readable, IOLoop.READ)
        # A host name: its address is found off the loop; until then pings go nowhere.
        self._target = (
            _resolve.Target(heart.endpoint, heart.time_to_dead, loop, self._connect)
            if heart.endpoint.is_name
            else None
        )

    def send(self, payload: bytes) -> None:
        """Send one ping on the next path that takes it; if none does (no path is connected,
        or every queue is full) it is dropped, and the Judge sees the silence."""
        sockets = self._sockets
        for i in range(len(sockets)):
            socket = sockets[(self._turn + i) % len(sockets)]
            try:
                # The REQ envelope: whole or not at all (libzmq refuses a message on its first
                # frame, never halfway).
                socket.send(b"", _MORE)
                socket.send(payload, _NOBLOCK)
            except zmq.Again:
                continue
            except zmq.ZMQError as exc:
                self._failed(exc)
                return
            self._turn = (self._turn + i + 1) % len(sockets)
            _sockets.read_soon_if_waiting(socket, self._loop, self.read)
            return

    def wake_at(self, deadline: float) -> None:
        """Set the one timer for ``deadline``."""
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
        # The Judge's clock is time.monotonic(); a relative delay needs no shared clock.
        delay = max(0.0, deadline - time.monotonic())
        self._timer = self._loop.call_later(delay, self._on_timer)

    def close(self) -> None:
        """Cancel the timer and close the sockets. Idempotent."""
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None
        if self._target is not None:
            self._target.close()
        sockets, self._sockets = self._sockets, []
        fds, self._fds = self._fds, []
        for socket, fd in zip(sockets, fds, strict=True):
            _sockets.close_watched(socket, self._loop, fd)

    def read(self) -> bool:
        """Hand every reply waiting on any path to the listener; False if the sockets are
        gone. (A pool that reaches a heart through this transport reads it before judging.)"""
        for socket in self._sockets:
            try:
                while True:
                    frames = socket.recv_multipart(_NOBLOCK)
                    # An echo of our envelope; anything else is no reply to a ping of ours.
                    if len(frames) == 2 and not frames[0]:
                        if self._target is not None:
                            self._target.heard = True
                        self._listener.payload_received(time.monotonic(), frames[1])
                    if not self._sockets:
                        return False  # the listener stopped (a death, or stop()) meanwhile
            except zmq.Again:
                continue
            except zmq.ZMQError as exc:
                self._failed(exc)
                return False
        return bool(self._sockets)

    def _connect(self, url: str) -> None:
        """Move every path to ``url``, an address of the heart's host name (the first, or one
        the heart is now reached at)."""
        heart = self._heart
        for socket in self._sockets:
            if self._connected is not None:
                with contextlib.suppress(zmq.ZMQError):  # the context was terminated
                    socket.disconnect(self._connected)
            try:
                _sockets.connect(
                    socket, url, curve_serverkey=heart.curve_serverkey, interval=heart.interval
                )
            except ValueError:
                continue  # zmq refused an address: that path stays silent, as a lost heart
        self._connected = url

    def _on_readable(self, fd: int, events: int) -> None:
        self.read()

    def _on_timer(self) -> None:
        self._timer = None
        # Flush before judging: a reply already in a socket is read before any verdict.
        if self.read():
            self._listener.timer_due(time.monotonic())

    def _failed(self, exc: zmq.ZMQError) -> None:
        self.close()  # so that a context.term() waiting on these sockets can finish
        self._listener.transport_failed(exc.strerror)
