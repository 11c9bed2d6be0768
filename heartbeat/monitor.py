"""The manager side: a REQ socket on tornado's IOLoop, judged by the pure core."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio
from tornado.ioloop import IOLoop
from zmq.eventloop.zmqstream import ZMQStream

from heartbeat import _validate
from heartbeat._judge import Beat, Dead, Event, Judge, Ping, State
from heartbeat._stats import RttStats, RttWindow
from heartbeat.probe import curve_client

log = logging.getLogger("heartbeat")

_TOKEN_BYTES = 8
_NONCE_BYTES = 8


def _call_safely(what: str, fn: Callable[..., object], *args: object) -> None:
    """Run a user callback; an exception is logged, never propagated into the loop."""
    try:
        fn(*args)
    except Exception:
        log.exception("heartbeat %s %r raised", what, fn)


class HeartMonitor:
    """Watches one heart and calls back, at most once, when it is dead.

    Create and start it on the thread that runs the IOLoop (from a coroutine or a callback)::

        monitor = HeartMonitor("tcp://127.0.0.1:5555", time_to_dead=3.0, first_beat=5.0)
        monitor.start(on_dead)

    ``on_dead()`` is called on the loop when the heart has been silent for ``time_to_dead``
    seconds after the ``first_beat`` grace; the monitor then stops itself. ``stop()`` guarantees
    the callback is not called afterwards. ``start()`` again watches afresh (a restarted kernel).

    Parameters
    ----------
    url:
        The heart's endpoint: ``tcp://host:port``, ``ipc://path`` or ``inproc://name``.
    time_to_dead:
        Seconds of silence, after the grace, that mean death.
    first_beat:
        Seconds of grace after ``start()`` for the kernel to come up; 0 for none.
    interval:
        Seconds between pings; default and maximum ``time_to_dead / 2``.
    context:
        The zmq context for the socket; default ``zmq.Context.instance()``.
    io_loop:
        The tornado IOLoop; default ``IOLoop.current()`` when ``start()`` is called.
    on_event:
        Called on the loop with every event of the timing core (``Ping``, ``Beat``,
        ``Stall``, ``StateChanged``, ``Dead``), for logging and live displays.
    curve_serverkey:
        The heart's CURVE public key (Z85); the monitor then connects as a CURVE client with
        an ephemeral key pair.
    """

    def __init__(
        self,
        url: str,
        *,
        time_to_dead: float = 3.0,
        first_beat: float = 5.0,
        interval: float | None = None,
        context: zmq.Context[Any] | None = None,
        io_loop: IOLoop | None = None,
        on_event: Callable[[Event], object] | None = None,
        curve_serverkey: bytes | str | None = None,
    ) -> None:
        self._endpoint = _validate.endpoint(url, bind=False)
        self._curve_serverkey = (
            None
            if curve_serverkey is None
            else _validate.curve_key("curve_serverkey", curve_serverkey)
        )
        self._judge = Judge(time_to_dead, first_beat, interval)
        if context is not None and not isinstance(context, zmq.Context):
            raise TypeError(f"context must be a zmq.Context or None, got {context!r}")
        if io_loop is not None and not isinstance(io_loop, IOLoop):
            raise TypeError(f"io_loop must be a tornado IOLoop or None, got {io_loop!r}")
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be callable or None, got {on_event!r}")
        self._url = url
        self._context = context
        self._io_loop = io_loop
        self._on_event = on_event
        self._loop: IOLoop | None = None
        self._stream: ZMQStream | None = None
        self._timer: object | None = None
        self._callback: Callable[[], object] | None = None
        self._nonce = b""
        self._fd = -1
        self._rtts = RttWindow()
        self._started_at: float | None = None
        #: Round-trip time of the last beat, in seconds (None before any).
        self.last_rtt: float | None = None

    # -- configuration ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The heart's endpoint; settable while the monitor is not running."""
        return self._url

    @url.setter
    def url(self, url: str) -> None:
        if self.running:
            raise RuntimeError(f"cannot change url of a running monitor (watching {self._url})")
        self._endpoint = _validate.endpoint(url, bind=False)
        self._url = url

    @property
    def time_to_dead(self) -> float:
        """Seconds of silence, after the grace, that mean death."""
        return self._judge.time_to_dead

    @property
    def first_beat(self) -> float:
        """Seconds of grace after ``start()``."""
        return self._judge.first_beat

    @property
    def interval(self) -> float:
        """Seconds between pings."""
        return self._judge.interval

    # -- status ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """idle, starting, beating, late, dead or stopped."""
        return self._judge.state

    @property
    def running(self) -> bool:
        """True from ``start()`` until ``stop()`` or death."""
        return self._stream is not None

    @property
    def stats(self) -> RttStats:
        """Round-trip statistics of the current (or last) run."""
        return self._rtts.summary()

    @property
    def stalls(self) -> int:
        """How often this run forgave the monitor's own stalled loop."""
        return self._judge.stalls

    @property
    def uptime(self) -> float | None:
        """Seconds since ``start()``, None if never started."""
        return None if self._started_at is None else time.monotonic() - self._started_at

    def is_beating(self) -> bool:
        """True when the last judgement found the heart answering in time."""
        return self._judge.state is State.BEATING

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, callback: Callable[[], object] | None = None) -> None:
        """Start watching; ``callback()`` is called on the loop, at most once, on death.

        Raises RuntimeError if already running, ValueError if the url cannot be connected.
        """
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {callback!r}")
        if self.running:
            raise RuntimeError(f"monitor of {self._url} is already running; stop() it first")
        loop = self._io_loop if self._io_loop is not None else IOLoop.current()
        context = self._context if self._context is not None else zmq.Context.instance()
        socket = self._open_socket(context)
        self._fd = socket.FD
        self._loop = loop
        self._stream = ZMQStream(socket, loop)
        self._stream.on_recv(self._on_recv)
        self._callback = callback
        # A fresh nonce per run: replies to an earlier run's pings can never count in this one.
        self._nonce = os.urandom(_NONCE_BYTES)
        self._rtts.clear()
        self.last_rtt = None
        now = time.monotonic()
        self._started_at = now
        self._dispatch(self._judge.start(now))
        self._schedule()

    def stop(self) -> None:
        """Stop watching and close the socket; the callback will not be called. Idempotent."""
        self._callback = None
        self._shutdown()
        self._dispatch(self._judge.stop())

    # -- internals -------------------------------------------------------------------------

    def _open_socket(self, context: zmq.Context[Any]) -> zmq.Socket[Any]:
        if isinstance(context, zmq.asyncio.Context):
            # An asyncio (or other) context, as jupyter_client's async clients hold: ZMQStream
            # needs plain sockets, so use a plain view of the same libzmq context.
            context = zmq.Context.shadow(context.underlying)
        try:
            socket: zmq.Socket[Any] = context.socket(zmq.REQ)
        except zmq.ZMQError as exc:
            raise _validate.socket_error(
                exc, context, f"cannot open a socket for {self._url}"
            ) from None
        try:
            socket.linger = 0
            # Relaxed: a lost reply never wedges the socket; the next ping simply goes out.
            # Not correlated: our own tokens match replies to pings, so a reply that comes
            # after the next ping was sent still proves life (see _judge).
            socket.setsockopt(zmq.REQ_RELAXED, 1)
            # Reconnect quickly: a kernel that binds late must get the queued ping at once.
            ivl = int(min(100.0, max(10.0, self._judge.interval * 250)))
            socket.setsockopt(zmq.RECONNECT_IVL, ivl)
            if self._endpoint.is_ipv6:
                socket.setsockopt(zmq.IPV6, 1)
            if self._curve_serverkey is not None:
                curve_client(socket, self._curve_serverkey)
            socket.connect(self._url)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise ValueError(
                f"cannot connect to {self._url!r}: {exc.strerror}; expected a reachable "
                "'tcp://host:port', 'ipc://path' or 'inproc://name'"
            ) from None
        return socket

    def _shutdown(self) -> None:
        if self._timer is not None and self._loop is not None:
            self._loop.remove_timeout(self._timer)
        self._timer = None
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close(linger=0)
            except zmq.ZMQError:
                # Its context was terminated: zmq can no longer name the descriptor, so the
                # loop forgets it by number, and the socket is closed directly.
                if self._loop is not None:
                    self._loop.remove_handler(self._fd)
                stream.socket.close(linger=0)

    def _schedule(self) -> None:
        deadline = self._judge.next_deadline
        if self._loop is None or self._stream is None or deadline is None:
            return
        # The judge's clock is time.monotonic(); a relative delay needs no shared clock.
        delay = max(0.0, deadline - time.monotonic())
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._stream is None:
            return
        try:
            # Flush before judging: a reply already in the socket is read before any verdict.
            self._stream.flush(zmq.POLLIN)
        except zmq.ZMQError as exc:
            self._fail(exc)
            return
        if self._stream is None:
            return
        self._dispatch(self._judge.on_timer(time.monotonic()))
        self._schedule()

    def _fail(self, exc: zmq.ZMQError) -> None:
        # The socket is unusable (most often: its context was terminated). The heart's fate is
        # unknown, so this is no death; it is said loudly, and the socket is closed so that a
        # context.term() waiting on it can finish.
        log.error(
            "monitor of %s stopped: its socket failed (%s); the heart was not judged dead",
            self._url,
            exc.strerror,
        )
        self.stop()

    def _on_recv(self, frames: list[bytes]) -> None:
        token = self._decode(frames)
        if token is None:
            log.debug("ignoring a reply that is not one of our pings: %r", frames[:2])
            return
        self._dispatch(self._judge.on_reply(time.monotonic(), token))

    def _decode(self, frames: list[bytes]) -> int | None:
        if len(frames) != 1:
            return None
        payload = frames[0]
        if len(payload) != _NONCE_BYTES + _TOKEN_BYTES or not payload.startswith(self._nonce):
            return None
        return int.from_bytes(payload[_NONCE_BYTES:], "big")

    def _send_ping(self, token: int) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.socket.send(self._nonce + token.to_bytes(_TOKEN_BYTES, "big"), zmq.NOBLOCK)
        except zmq.Again:
            # Queue full: the heart is not reading, and the judge will see the silence.
            log.debug("ping %d to %s not queued: send queue full", token, self._url)
            return
        except zmq.ZMQError as exc:
            self._fail(exc)
            return
        # zmq's descriptor is edge-triggered and our direct send may have consumed the edge of
        # a reply that arrived meanwhile; look once so that reply is not left waiting.
        if int(stream.socket.get(zmq.EVENTS)) & zmq.POLLIN and self._loop is not None:
            self._loop.add_callback(self._drain)

    def _drain(self) -> None:
        if self._stream is not None:
            try:
                self._stream.flush(zmq.POLLIN)
            except zmq.ZMQError as exc:
                self._fail(exc)

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Ping):
                self._send_ping(event.token)
            elif isinstance(event, Beat):
                self._rtts.add(event.rtt, late=event.rtt is not None and event.rtt > self.interval)
                if event.rtt is not None:
                    self.last_rtt = event.rtt
            if self._on_event is not None:
                _call_safely("on_event callback", self._on_event, event)
            if isinstance(event, Dead):
                self._die(event)

    def _die(self, event: Dead) -> None:
        callback, self._callback = self._callback, None
        self._shutdown()
        log.warning(
            "heart at %s is dead: no reply for %.3f s (time_to_dead %g s)",
            self._url,
            event.silent_for,
            self.time_to_dead,
        )
        if callback is not None:
            _call_safely("dead callback", callback)

    def __repr__(self) -> str:
        return f"<HeartMonitor {self._url} {self.state.value}>"
