"""Watching many hearts from one process: one ROUTER socket and one timer for all of them.

Each heart is still watched by its own :class:`~heartbeat.monitor.HeartMonitor` and judged by
the same pure core, with the same timing contract; only the transport is shared::

    pool = HeartbeatPool()
    monitors = [pool.watch(url, time_to_dead=3.0, first_beat=5.0) for url in urls]
    for m in monitors:
        m.start(on_dead)

One socket means no per-kernel socket (zmq allows 1023 a context by default), no per-kernel
timer, and replies read in batches. Each tcp heart still needs one file descriptor for its
connection: past the process limit, ``start()`` raises an OSError that names it.

Members that use CURVE share a second socket: libzmq takes a socket's CURVE options as they
stand at each ``connect()``, so one socket reaches many CURVE hearts, each with its own server
key, but a socket cannot go back to plain once it is a CURVE client.

The pool is a :class:`~heartbeat.transport.TransportFactory`; which member is judged when is
decided by the pure :class:`~heartbeat._schedule.PoolSchedule`. This module does the socket work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import resource
import time
import weakref
from typing import Any

import zmq
from tornado.ioloop import IOLoop

from heartbeat import _resolve, _sockets, _validate
from heartbeat._schedule import PoolSchedule
from heartbeat.monitor import HeartMonitor, Log, default_log
from heartbeat.transport import HeartSpec, Listener

# File descriptors left for everything else the process does.
_FD_MARGIN = 64
# Replies read per wake-up at most, so one flood cannot hold the loop.
_DRAIN_LIMIT = 50_000
# Members judged between two reads of the socket in one long batch (10,000 kernels started
# together take ~150 ms to judge): a reply that arrives meanwhile is read, not judged missing.
_READ_EVERY = 256
# Members that share one ping phase at most: their pings go out in one burst, far cheaper per
# ping than one by one, and judging them holds the loop for ~15 ms (about 15 us a member).
_PHASE_SIZE = 1024
# Plain ints: pyzmq's flag enums cost more to combine than the send itself, once a beat.
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)


class _Url:
    """The connections one channel has made to one url.

    libzmq's ``disconnect(url)`` ends every connection made to that url, so a member that leaves
    while others still watch the same heart cannot disconnect: its connection is kept idle, with
    its routing id, for the next member of that url to take over (replies to the old member's
    pings carry its nonce and are ignored). The url is disconnected when its last member leaves.
    """

    __slots__ = ("idle", "members")

    def __init__(self) -> None:
        self.members = 0
        # (routing id, the CURVE server key it was connected with) of connections nobody uses.
        self.idle: list[tuple[bytes, bytes | None]] = []

    def take_idle(self, curve_serverkey: bytes | None) -> bytes | None:
        """The routing id of an idle connection made with ``curve_serverkey``, if any."""
        for i, (rid, key) in enumerate(self.idle):
            if key == curve_serverkey:
                del self.idle[i]
                return rid
        return None


class _Channel:
    """One of the pool's ROUTER sockets (plain, or CURVE), how many members use it, and the
    connections it has made, by url."""

    __slots__ = ("curve", "fd", "members", "socket", "urls")

    def __init__(self, socket: zmq.Socket[Any], curve: bool) -> None:
        self.socket = socket
        self.fd: int = socket.FD
        self.curve = curve
        self.members = 0
        self.urls: dict[str, _Url] = {}


class _Member:
    """A member's transport: its routing id and socket in the pool (a ``Transport``)."""

    __slots__ = (
        "channel",
        "closed",
        "curve_serverkey",
        "listener",
        "phase",
        "pool",
        "rids",
        "target",
        "turn",
        "url",
    )

    def __init__(
        self,
        pool: HeartbeatPool,
        listener: Listener,
        heart: HeartSpec,
        rids: list[bytes],
        channel: _Channel,
    ) -> None:
        self.pool = pool
        self.listener = listener
        # The url its connections are made to: the heart's, or an address of its host name
        # (None until that is found).
        self.url: str | None = None if heart.endpoint.is_name else heart.url
        self.target: _resolve.Target | None = None  # finds that address, for a host name
        self.curve_serverkey = heart.curve_serverkey
        self.rids = rids  # one routing id a path: one connection each
        self.turn = 0  # the path the next ping takes
        self.channel = channel
        self.phase: float | None = None  # the pool sets it once the member has joined
        self.closed = False

    def send(self, payload: bytes) -> None:
        """Send one ping through the pool's socket."""
        self.pool.send(self, payload)

    def wake_at(self, deadline: float) -> None:
        """Be judged at ``deadline``, in the pool's batch for it."""
        self.pool.wake_at(self, deadline)

    def close(self) -> None:
        """Leave the pool. Idempotent."""
        if not self.closed:
            self.closed = True
            self.pool.leave(self)


class HeartbeatPool:
    """One ROUTER socket and one timer shared by many HeartMonitors.

    Members with the same interval share a ping phase, in groups of up to 1,024: from its
    second ping on, a member pings in one burst with its group (docs/scale.md says why).

    Parameters
    ----------
    context:
        The zmq context; default ``zmq.Context.instance()``.
    io_loop:
        The tornado IOLoop; default ``IOLoop.current()`` when a member starts while the pool
        watches nothing. Members start on the loop the pool is using (RuntimeError otherwise).
    batch:
        Seconds by which the shared timer may wake late so that members due close together
        are judged in one wake-up. Default None: a tenth of the shortest ping interval among
        the members (0.1 s for ``time_to_dead`` 2 s). It may be at most half
        of every member's stall threshold ``(time_to_dead - interval) / 2``, so that batching
        never counts as the monitor's own stall; a member that needs a finer one is refused
        with a ValueError.
    log:
        Where the pool's own lines go (a failed socket); default the ``heartbeat`` logger.
        Each member logs on its own ``log``.
    """

    def __init__(
        self,
        *,
        context: zmq.Context[Any] | None = None,
        io_loop: IOLoop | None = None,
        batch: float | None = None,
        log: Log | None = None,
    ) -> None:
        if context is not None and not isinstance(context, zmq.Context):
            raise TypeError(f"context must be a zmq.Context or None, got {context!r}")
        if io_loop is not None and not isinstance(io_loop, IOLoop):
            raise TypeError(f"io_loop must be a tornado IOLoop or None, got {io_loop!r}")
        if log is not None and not isinstance(log, logging.Logger | logging.LoggerAdapter):
            raise TypeError(f"log must be a logging.Logger or LoggerAdapter or None, got {log!r}")
        self._log: Log = default_log if log is None else log
        given = None if batch is None else _validate.number("batch", batch, allow_zero=True)
        self._schedule: PoolSchedule[_Member] = PoolSchedule(given, _PHASE_SIZE)
        self._context = context
        # Weakly: a pool kept for a loop (``shared_pool``) must not keep a finished loop alive.
        self._io_loop = None if io_loop is None else weakref.ref(io_loop)
        # The loop in use, held only while a socket is open: a pool with nothing to watch
        # takes the current loop again when a member next starts (a new asyncio.run(), say).
        self._loop: IOLoop | None = None
        self._channels: dict[bool, _Channel] = {}  # by "uses CURVE"
        self._members: dict[bytes, _Member] = {}  # by routing id: a member has one a path
        self._watching = 0
        self._ids = itertools.count(1)
        self._timer: object | None = None
        self._timer_at: float | None = None
        self._judging = False
        self._wakeups = 0

    def __len__(self) -> int:
        """How many members are watching now."""
        return self._watching

    @property
    def batch(self) -> float | None:
        """The batch in force (s): as given, or a tenth of the shortest member interval.

        None while the default is asked for and no member has joined.
        """
        return self._schedule.batch

    @property
    def sockets(self) -> int:
        """How many sockets the pool holds open: 0 while nothing is watched, 1, or 2 when
        CURVE and plain members are watched together."""
        return len(self._channels)

    @property
    def wakeups(self) -> int:
        """How many times the pool's timer has fired (one wake-up judges a whole batch)."""
        return self._wakeups

    def watch(self, url: str, **kwargs: Any) -> HeartMonitor:
        """A HeartMonitor of ``url`` in this pool (not started); keywords as HeartMonitor's."""
        return HeartMonitor(url, transport=self, **kwargs)

    def close(self) -> None:
        """Stop every member and close the sockets. Idempotent."""
        for member in dict.fromkeys(self._members.values()):
            member.listener.transport_closed()
        self._close_channels()

    # -- the TransportFactory -----------------------------------------------------------------

    def check(self, heart: HeartSpec) -> None:
        """ValueError if this pool's batch is too coarse for ``heart``."""
        self._schedule.check(heart.url, heart.time_to_dead, heart.interval, heart.stall_after)

    def open(self, heart: HeartSpec, listener: Listener) -> _Member:
        """Connect to ``heart`` through the pool's socket (its CURVE socket, with a key)."""
        loop = self._members_loop()
        if not self._runs_on(loop):
            raise RuntimeError(
                f"cannot watch {heart.url} from this event loop: the pool is watching "
                f"{self._watching} hearts on another loop (or was given one); start it "
                "there, or use a pool of this loop's own"
            )
        # Before anything is opened or counted: a member whose start() raised is not running.
        _sockets.check_loop(loop, f"cannot watch {heart.url}")
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        connections = len(self._members)
        if heart.endpoint.transport != "inproc" and connections + heart.paths + _FD_MARGIN > soft:
            raise OSError(
                f"cannot watch {heart.url} over {heart.paths} paths: {self._watching} hearts "
                f"are watched over {connections} connections, and each connection needs a "
                f"file descriptor; this process may open {soft} (the RLIMIT_NOFILE soft limit, "
                "'ulimit -n'): raise it, or watch with fewer paths"
            )
        channel = self._open_channel(curve=heart.curve_serverkey is not None)
        if heart.endpoint.is_name:
            # Connected once an address of the name is found, off the loop: until then the
            # pings to these routing ids go nowhere, and the Judge sees a silent heart.
            rids = [self._new_rid() for _ in range(heart.paths)]
        else:
            try:
                rids = self._connect(channel, heart.url, heart)
            except ValueError:
                if not channel.members:
                    self._close_channel(channel)
                raise
        channel.members += 1
        self._watching += 1
        member = _Member(self, listener, heart, rids, channel)
        member.phase = self._schedule.join(member, heart.interval, time.monotonic())
        for rid in rids:
            self._members[rid] = member
        if heart.endpoint.is_name:
            assert self._loop is not None  # set when the channel was opened
            member.target = _resolve.Target(
                heart.endpoint,
                heart.time_to_dead,
                self._loop,
                lambda url: self._move(member, heart, url),
            )
        return member

    def _new_rid(self) -> bytes:
        return b"hb" + next(self._ids).to_bytes(8, "big")

    def _connect(self, channel: _Channel, url: str, heart: HeartSpec) -> list[bytes]:
        """The routing ids of ``heart.paths`` connections to ``url``: idle ones of that url
        first, then new ones."""
        entry = channel.urls.get(url)
        if entry is None:
            entry = channel.urls[url] = _Url()
        rids: list[bytes] = []
        try:
            for _ in range(heart.paths):
                rid = entry.take_idle(heart.curve_serverkey)
                if rid is None:
                    rid = self._new_rid()
                    _sockets.connect(
                        channel.socket,
                        url,
                        curve_serverkey=heart.curve_serverkey,
                        routing_id=rid,
                        interval=heart.interval,
                    )
                rids.append(rid)
        except ValueError:
            if entry.members:
                entry.idle += [(rid, heart.curve_serverkey) for rid in rids]
            else:
                del channel.urls[url]
            raise
        entry.members += 1
        return rids

    def _release(self, channel: _Channel, url: str, rids: list[bytes], key: bytes | None) -> None:
        """A member's connections to ``url`` are no longer its own: kept idle for another
        member of that url, or the url is disconnected if none watches it."""
        entry = channel.urls[url]
        entry.members -= 1
        if entry.members:
            entry.idle += [(rid, key) for rid in rids]
            return
        del channel.urls[url]
        if self._channels.get(channel.curve) is channel:
            # ZMQError: already gone, or the context was terminated.
            with contextlib.suppress(zmq.ZMQError):
                channel.socket.disconnect(url)

    def _move(self, member: _Member, heart: HeartSpec, url: str) -> None:
        """Connect a member watching a host name to ``url``, an address of it (the first
        found, or one its heart is now reached at)."""
        channel = member.channel
        if member.closed or self._channels.get(channel.curve) is not channel:
            return
        for rid in member.rids:
            self._members.pop(rid, None)
        if member.url is not None:
            self._release(channel, member.url, member.rids, member.curve_serverkey)
        try:
            member.rids, member.url = self._connect(channel, url, heart), url
        except ValueError:  # zmq refused an address: silent, as a heart not reached
            member.rids, member.url = [self._new_rid() for _ in range(heart.paths)], None
        member.turn = 0
        for rid in member.rids:
            self._members[rid] = member

    # -- what members call -----------------------------------------------------------------

    def send(self, member: _Member, payload: bytes) -> None:
        """Send ``member``'s ping; one that cannot go out now is dropped, never half-sent."""
        channel = member.channel
        if self._channels.get(channel.curve) is not channel:
            return
        send = channel.socket.send
        rids = member.rids
        rid = rids[member.turn]
        member.turn = (member.turn + 1) % len(rids)  # the next ping takes the next path
        try:
            # The empty frame makes it a REQ-style envelope, which every heart echoes back.
            # A ROUTER drops a whole message to a peer it cannot reach now (not connected,
            # queue full) and never blocks, so no partial message is left behind.
            send(rid, _MORE)
            send(b"", _MORE)
            send(payload, _NOBLOCK)
        except zmq.Again:
            return  # not connected yet, or its queue is full: the judge sees the silence
        except zmq.ZMQError as exc:
            self._channel_failed(channel, exc)
            return
        if not self._judging and self._loop is not None:
            _sockets.read_soon_if_waiting(channel.socket, self._loop, self._drain)

    def wake_at(self, member: _Member, deadline: float) -> None:
        """Judge ``member`` at ``deadline``, in the batch for it."""
        self._schedule.wake_at(member, deadline)
        if not self._judging:  # a wake-up sets the timer once, when it is done
            self._set_timer()

    def leave(self, member: _Member) -> None:
        """``member`` stops: its url is disconnected once no member watches it, and a socket
        nobody uses is closed."""
        self._schedule.leave(member)
        if member.target is not None:
            member.target.close()
        for rid in member.rids:
            self._members.pop(rid, None)
        self._watching -= 1
        channel = member.channel
        channel.members -= 1
        if member.url is not None:
            self._release(channel, member.url, member.rids, member.curve_serverkey)
        if self._channels.get(channel.curve) is channel and not channel.members:
            self._close_channel(channel)  # nothing is held while nothing is watched
        if not self._judging:
            self._set_timer()

    # -- sockets ---------------------------------------------------------------------------

    def _members_loop(self) -> IOLoop:
        """The loop members run on: the one in use, else the one given, else the current."""
        if self._loop is not None:
            return self._loop
        given = None if self._io_loop is None else self._io_loop()
        return given if given is not None else IOLoop.current()

    @staticmethod
    def _runs_on(loop: IOLoop) -> bool:
        """Whether the caller runs on ``loop`` (or on no running loop)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return True  # not from a coroutine or a callback: the monitor's contract says who
        return running is getattr(loop, "asyncio_loop", running)

    def _open_channel(self, curve: bool) -> _Channel:
        channel = self._channels.get(curve)
        if channel is not None:
            return channel
        socket = _sockets.open_socket(
            self._context,
            zmq.ROUTER,
            what="cannot open the pool's socket",
            interval=0.1,
            ipv6=True,  # one socket reaches hearts of both families
            curve=curve,
            # Hearts answer at the speed they are pinged; deep queues only hide a dead peer.
            hwm=100_000,
        )
        loop = self._loop = self._members_loop()
        channel = self._channels[curve] = _Channel(socket, curve)
        loop.add_handler(channel.fd, self._on_readable, IOLoop.READ)
        return channel

    def _close_channel(self, channel: _Channel) -> None:
        if self._channels.get(channel.curve) is not channel:
            return
        del self._channels[channel.curve]
        assert self._loop is not None  # set when the channel was opened
        _sockets.close_watched(channel.socket, self._loop, channel.fd)
        if not self._channels:
            self._schedule.clear()
            self._set_timer()
            self._loop = None

    def _close_channels(self) -> None:
        for channel in list(self._channels.values()):
            self._close_channel(channel)

    def _channel_failed(self, channel: _Channel, exc: zmq.ZMQError) -> None:
        self._log.error("heartbeat pool stopped: its socket failed (%s)", exc.strerror)
        for member in dict.fromkeys(self._members.values()):
            if member.channel is channel:
                member.listener.transport_failed(exc.strerror)
        self._close_channel(channel)

    # -- the one timer ---------------------------------------------------------------------

    def _set_timer(self) -> None:
        """Keep the one timer at the schedule's next wake-up."""
        due = self._schedule.next_wake
        if due == self._timer_at or self._loop is None:
            return
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None
        self._timer_at = due
        if due is not None:
            self._timer = self._loop.call_later(max(0.0, due - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._wakeups += 1
        self._judging = True
        try:
            self._schedule.wake(time.monotonic, self._drain, self._judge, _READ_EVERY)
        finally:
            # Even if a member raised: the clock of every other member keeps running.
            self._judging = False
            self._drain()
            self._set_timer()

    @staticmethod
    def _judge(member: _Member, now: float) -> None:
        member.listener.timer_due(now)

    def _on_readable(self, fd: int, events: int) -> None:
        self._drain()

    def _drain(self) -> bool:
        """Read every reply waiting on every socket; False if none is left."""
        for channel in list(self._channels.values()):
            self._drain_channel(channel)
        return bool(self._channels)

    def _drain_channel(self, channel: _Channel) -> None:
        recv = channel.socket.recv
        members = self._members
        try:
            for _ in range(_DRAIN_LIMIT):
                # Frames (copy=False) carry their own "more" flag: reading it is much cheaper
                # than asking the socket for RCVMORE after each frame, as recv_multipart does.
                frame = recv(_NOBLOCK, copy=False)
                frames = [frame.bytes]
                while frame.more:
                    frame = recv(_NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                member = members.get(frames[0])
                if member is not None and len(frames) == 3 and not frames[1]:
                    if member.target is not None:
                        member.target.heard = True
                    member.listener.payload_received(time.monotonic(), frames[2])
                    if self._channels.get(channel.curve) is not channel:
                        return  # its last member stopped from the reply's callback: closed

        except zmq.Again:
            return
        except zmq.ZMQError as exc:
            self._channel_failed(channel, exc)
            return
        if self._loop is not None:  # the limit was reached: more may wait
            _sockets.read_soon_if_waiting(channel.socket, self._loop, self._drain)
