"""The manager side: one heart watched through a transport, judged by the pure core.

``HeartMonitor`` turns the Judge's events into pings and verdicts and the transport's calls into
Judge inputs. It imports no transport: it is given a factory (``transport=``, or ``pool=``; by
default a socket of its own), see ``heartbeat/transport.py``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from heartbeat import _validate
from heartbeat._judge import Beat, Dead, Event, Judge, Ping, Stall, State, StateChanged
from heartbeat._local import on_this_machine

# The default transport is named here, where it is used; the monitor reaches any other only
# through the interfaces of heartbeat.transport.
from heartbeat._own_socket import own_socket
from heartbeat._stats import RttStats, RttWindow
from heartbeat._tally import Tally
from heartbeat.transport import HeartSpec, Transport, TransportFactory

if TYPE_CHECKING:
    import zmq
    from tornado.ioloop import IOLoop

#: Where the library's lines go unless a ``log`` is given.
default_log = logging.getLogger("heartbeat")

#: A logger, or an adapter that adds context (a kernel id, say) to every line. A string:
#: ``LoggerAdapter`` can be subscripted at run time only from Python 3.11.
Log: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"

_TOKEN_BYTES = 8
_NONCE_BYTES = 8


def _call_safely(log: Log, what: str, fn: Callable[..., object], *args: object) -> None:
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
        The heart's endpoint: ``tcp://host:port``, ``ipc://path`` or ``inproc://name``. A host
        name is resolved off the loop to every address it has, both families, and the heart
        reached at the one that accepts (docs/beyond-one-machine.md); until then it is silent.
    time_to_dead:
        Seconds of silence, after the grace, that mean death.
    first_beat:
        Seconds of grace after ``start()`` for the kernel to come up; 0 for none.
    interval:
        Seconds between pings; at most ``time_to_dead / 2``. Default ``time_to_dead / 2``
        over one path, ``time_to_dead / (2 * paths)`` over several (each connection still
        carries a ping every ``time_to_dead / 2``).
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
    pool:
        A :class:`~heartbeat.pool.HeartbeatPool` whose one socket and one timer this monitor
        shares with the pool's other members (for watching many hearts); same rules.
        ``pool.watch(url)`` makes such a monitor.
    transport:
        Any other :class:`~heartbeat.transport.TransportFactory` (a test's fake, say); default
        a socket and a timer of the monitor's own, made with ``context`` and ``io_loop``.
    paths:
        How many TCP connections to make to the heart; pings take turns on them and a reply on
        any is life, so a ping is not held up behind a retransmission on another connection (a
        lossy link: docs/lossy-links.md). Default: 1 to a heart on this machine (loopback,
        ipc, inproc), ``REMOTE_PATHS`` beyond it. At most 8.
    log:
        Where this monitor's lines go (its death, a failed socket, a raising callback): a
        ``logging.Logger``, or a ``LoggerAdapter`` that adds context such as a kernel id.
        Default: the ``heartbeat`` logger. The death line carries its ``Dead`` event as
        ``heartbeat_event`` in the record's ``extra``, for adapters and structured handlers.
    tally:
        A :class:`~heartbeat.Tally` that this monitor adds its beats' round trips, its stalls
        and whether it is watching (and late) to, for metrics; many monitors may share one.
        Default None: nothing is counted, at no cost.
    """

    # __slots__: a pool may hold 10,000 monitors, each touched every beat.
    __slots__ = (
        "__weakref__",
        "_callback",
        "_curve_serverkey",
        "_endpoint",
        "_factory",
        "_interval",
        "_judge",
        "_log",
        "_nonce",
        "_on_event",
        "_paths",
        "_rtts",
        "_run",
        "_started_at",
        "_tallied",
        "_tally",
        "_transport",
        "_url",
        "last_rtt",
        "verdict",
    )

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
        pool: TransportFactory | None = None,
        log: Log | None = None,
        transport: TransportFactory | None = None,
        paths: int | None = None,
        tally: Tally | None = None,
    ) -> None:
        self._endpoint = _validate.endpoint(url, bind=False)
        _validate.paths(paths, self._endpoint, here=on_this_machine(self._endpoint))
        self._paths = paths  # as asked: the default depends on the url, which may change
        self._curve_serverkey = (
            None
            if curve_serverkey is None
            else _validate.curve_key("curve_serverkey", curve_serverkey)
        )
        self._interval = interval  # as asked: the default depends on the paths
        # What a real loop can time; the pure Judge takes any positive number (a fake clock).
        _validate.time_to_dead(time_to_dead)
        self._judge = self._new_judge(time_to_dead, first_beat)
        # Checked whether used or not, so a wrong one is always named.
        own = own_socket(context, io_loop)
        if pool is not None and not isinstance(pool, TransportFactory):
            raise TypeError(f"pool must be a HeartbeatPool or None, got {pool!r}")
        if transport is not None and not isinstance(transport, TransportFactory):
            raise TypeError(f"transport must be a TransportFactory or None, got {transport!r}")
        if pool is not None and transport is not None:
            raise TypeError("give a monitor a pool or a transport, not both")
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be callable or None, got {on_event!r}")
        if log is not None and not isinstance(log, logging.Logger | logging.LoggerAdapter):
            raise TypeError(f"log must be a logging.Logger or LoggerAdapter or None, got {log!r}")
        if tally is not None and not isinstance(tally, Tally):
            raise TypeError(f"tally must be a heartbeat.Tally or None, got {tally!r}")
        self._tally = tally
        # The state the tally counts this monitor in: its gauges move from it, not from an
        # event's ``old``, so they stay exact when a callback's stop() leaves events undispatched.
        self._tallied = State.IDLE
        self._log: Log = default_log if log is None else log
        self._url = url
        # Not "pool or ...": an empty pool has len() 0.
        chosen = pool if pool is not None else transport
        self._factory: TransportFactory = chosen if chosen is not None else own
        self._factory.check(self._spec())
        self._on_event = on_event
        self._transport: Transport | None = None
        self._callback: Callable[[], object] | None = None
        self._nonce = b""
        self._rtts = RttWindow()
        self._started_at: float | None = None
        # Counts start() and stop(): events of a run that a callback ended are not dispatched.
        self._run = 0
        #: Round-trip time of the last beat, in seconds (None before any).
        self.last_rtt: float | None = None
        #: The ``Dead`` event of the current (or last) run, if it ended in death; else None.
        self.verdict: Dead | None = None

    # -- configuration ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The heart's endpoint; settable while the monitor is not running."""
        return self._url

    @url.setter
    def url(self, url: str) -> None:
        if self.running:
            raise RuntimeError(f"cannot change url of a running monitor (watching {self._url})")
        endpoint = _validate.endpoint(url, bind=False)
        before = (self._endpoint, self._url, self._judge)
        paths = self.paths
        self._endpoint = endpoint
        self._url = url
        if self.paths != paths and self._interval is None:
            self._judge = self._new_judge(self.time_to_dead, self.first_beat)
        try:
            # The new url's paths may mean a finer interval than the pool's batch allows.
            self._factory.check(self._spec())
        except Exception:
            self._endpoint, self._url, self._judge = before
            raise

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

    @property
    def paths(self) -> int:
        """How many connections this monitor makes to its heart."""
        return _validate.paths(self._paths, self._endpoint, here=on_this_machine(self._endpoint))

    @property
    def stall_after(self) -> float:
        """How late (s) this monitor's own timer may fire before that counts as its stall."""
        return self._judge.stall_after

    # -- status ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """idle, starting, beating, late, dead or stopped."""
        return self._judge.state

    @property
    def running(self) -> bool:
        """True from ``start()`` until ``stop()`` or death."""
        return self._transport is not None

    @property
    def curve_serverkey(self) -> bytes | None:
        """The heart's CURVE public key (Z85), or None."""
        return self._curve_serverkey

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

    def start(
        self, callback: Callable[[], object] | None = None, *, grace: float | None = None
    ) -> None:
        """Start watching; ``callback()`` is called on the loop, at most once, on death.
        ``grace``: seconds of grace for this run instead of ``first_beat`` (0: watching on a
        heart already found silent).

        Raises RuntimeError if already running, ValueError if the url cannot be connected,
        OSError if the process is out of file descriptors or zmq sockets.
        """
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {callback!r}")
        if grace is not None:
            _validate.number("grace", grace, allow_zero=True)  # before anything is opened
        if self.running:
            raise RuntimeError(f"monitor of {self._url} is already running; stop() it first")
        self._transport = transport = self._factory.open(self._spec(), self)
        self._run += 1
        self._callback = callback
        # A fresh nonce per run: replies to an earlier run's pings can never count in this one.
        self._nonce = os.urandom(_NONCE_BYTES)
        self._rtts.clear()
        self.last_rtt = None
        self.verdict = None
        now = time.monotonic()
        self._started_at = now
        self._dispatch(self._judge.start(now, phase=transport.phase, grace=grace))
        self._wake()

    def stop(self) -> None:
        """Stop watching and close the transport; the callback will not be called. Idempotent."""
        self._callback = None
        self._run += 1
        self._shutdown()
        self._dispatch(self._judge.stop())

    # -- what the transport calls (the Listener protocol) ------------------------------------

    def timer_due(self, now: float) -> None:
        """Judge now; the transport has handed over every reply already received."""
        if self._transport is None:
            return
        self._dispatch(self._judge.on_timer(now))
        self._wake()

    def payload_received(self, now: float, payload: bytes) -> None:
        """A reply read at ``now``; one that carries no ping of this run is ignored."""
        if len(payload) != _NONCE_BYTES + _TOKEN_BYTES or not payload.startswith(self._nonce):
            self._log.debug("ignoring a reply that is not one of our pings: %r", payload[:32])
            return
        token = int.from_bytes(payload[_NONCE_BYTES:], "big")
        self._dispatch(self._judge.on_reply(now, token))

    def transport_failed(self, reason: str) -> None:
        """The transport is unusable (most often: its context was terminated). The heart's
        fate is unknown, so this is no death; it is said loudly, and watching stops."""
        self._log.error(
            "monitor of %s stopped: its socket failed (%s); the heart was not judged dead",
            self._url,
            reason,
        )
        self.stop()

    def transport_closed(self) -> None:
        """The transport's owner closed it (a pool was closed): watching stops, no verdict."""
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _new_judge(self, time_to_dead: float, first_beat: float) -> Judge:
        judge = Judge(time_to_dead, first_beat, self._interval)  # checks the numbers
        paths = self.paths
        if self._interval is None and paths > 1:
            judge = Judge(time_to_dead, first_beat, judge.time_to_dead / (2 * paths))
        return judge

    def _spec(self) -> HeartSpec:
        return HeartSpec(
            url=self._url,
            endpoint=self._endpoint,
            curve_serverkey=self._curve_serverkey,
            time_to_dead=self.time_to_dead,
            interval=self.interval,
            stall_after=self.stall_after,
            paths=self.paths,
        )

    def _wake(self) -> None:
        deadline = self._judge.next_deadline
        if self._transport is not None and deadline is not None:
            self._transport.wake_at(deadline)

    def _shutdown(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Dead):
                # On the record before anyone is told: a stop() from on_event (at the death's
                # state change or at Dead) ends the run, not the fact that the Judge declared
                # the heart dead; state stays "dead", and so must the verdict.
                self.verdict = event
        run = self._run
        tally = self._tally
        for event in events:
            if self._run != run:
                return  # a callback stopped (or restarted) the monitor: that run is over
            if isinstance(event, Ping):
                if self._transport is not None:
                    self._transport.send(self._nonce + event.token.to_bytes(_TOKEN_BYTES, "big"))
            elif isinstance(event, Beat):
                self._rtts.add(event.rtt, late=event.rtt is not None and event.rtt > self.interval)
                if event.rtt is not None:
                    self.last_rtt = event.rtt
                    if tally is not None:
                        tally.observe_rtt(event.rtt)
            elif tally is not None:
                if isinstance(event, StateChanged):
                    tally.moved(self._tallied, event.new)
                    self._tallied = event.new
                elif isinstance(event, Stall):
                    tally.stalled()
            if self._on_event is not None:
                _call_safely(self._log, "on_event callback", self._on_event, event)
            if isinstance(event, Dead) and self._run == run:
                self._die(event)

    def _die(self, event: Dead) -> None:
        callback, self._callback = self._callback, None
        self.verdict = event
        self._shutdown()
        self._log.warning(
            "heart at %s is dead: no reply for %.3f s (time_to_dead %g s)",
            self._url,
            event.silent_for,
            self.time_to_dead,
            extra={"heartbeat_event": event},
        )
        if callback is not None:
            _call_safely(self._log, "dead callback", callback)

    def __repr__(self) -> str:
        return f"<HeartMonitor {self._url} {self.state.value}>"
