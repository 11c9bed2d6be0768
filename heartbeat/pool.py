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

A heart that refuses a ROUTER peer (a REP socket, as IRkernel's: ZMTP lets REP talk only to REQ
and DEALER) is reached another way. libzmq ends such a connection right after the handshake and,
under the NULL mechanism, never makes it again; the pool watches its sockets' disconnections
(zmq's socket monitor, told of nothing else), and a url whose connection ended before it ever
answered is from then on reached by DEALER sockets, one a path for each of its members, that
send the REQ envelope as a lone monitor's do (a REP heart answers one ping at a time, in order;
a DEALER never waits for a reply, so a lost one wedges nothing). The pool reads them before
judging, and its one timer still judges those members; the ping that went unanswered is sent
again at once. libzmq may also drop such a connection with no event (a few hearts in a
thousand, under load): a url nobody was answered through half an interval on is connected
afresh, and the refusal is told then. A DEALER reaches every kind of heart, so a ROUTER heart
whose connection ends before its first reply (it died starting) is moved too: that costs a
socket, never a verdict.

The pool is a :class:`~heartbeat.transport.TransportFactory`; which member is judged when is
decided by the pure :class:`~heartbeat._schedule.PoolSchedule`. This module does the socket work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import resource
import time
import weakref
from typing import Any

import zmq
from tornado.ioloop import IOLoop

from heartbeat import _resolve, _sockets, _validate
from heartbeat._own_socket import SocketTransport
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

    __slots__ = ("dealers", "idle", "members")

    def __init__(self) -> None:
        self.members: set[_Member] = set()
        # (routing id, the CURVE server key it was connected with) of connections nobody uses.
        self.idle: list[tuple[bytes, bytes | None]] = []
        # The heart refused the ROUTER: its members are reached by DEALERs of their own.
        self.dealers = False

    def take_idle(self, curve_serverkey: bytes | None) -> bytes | None:
        """The routing id of an idle connection made with ``curve_serverkey``, if any."""
        for i, (rid, key) in enumerate(self.idle):
            if key == curve_serverkey:
                del self.idle[i]
                return rid
        return None


class _Channel:
    """One of the pool's ROUTER sockets (plain, or CURVE), how many members use it, the
    connections it has made, by url, and the PAIR socket told of its disconnections."""

    __slots__ = ("curve", "fd", "members", "monitor", "monitor_fd", "socket", "urls")

    def __init__(self, socket: zmq.Socket[Any], curve: bool, monitor: zmq.Socket[Any]) -> None:
        self.socket = socket
        self.fd: int = socket.FD
        self.curve = curve
        self.members = 0
        self.urls: dict[str, _Url] = {}
        self.monitor = monitor
        self.monitor_fd: int = monitor.FD


class _Member:
    """A member's transport: its routing id and socket in the pool (a ``Transport``)."""

    __slots__ = (
        "answered",
        "backoff",
        "channel",
        "closed",
        "curve_serverkey",
        "dealer",
        "heart",
        "last",
        "listener",
        "phase",
        "pool",
        "retry_at",
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
        self.heart = heart
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
        self.answered = False  # a reply came through the ROUTER: the heart takes a ROUTER
        # Unanswered by then, the url is connected afresh (HeartbeatPool._retry): half an
        # interval, so that the ping after it does it, well within time_to_dead of the first.
        self.backoff = heart.interval / 2
        self.retry_at = time.monotonic() + self.backoff
        self.last = b""  # the last ping, sent again if the heart turns out to refuse the ROUTER
        # DEALERs of the member's own, once its heart refused the ROUTER (a REP heart).
        self.dealer: SocketTransport | None = None

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

    A heart that refuses a ROUTER peer (a REP socket, as IRkernel's) is reached by DEALER
    sockets of its member's own, still judged on the pool's timer: one socket a path for each
    such member, within zmq's sockets a context (``zmq.MAX_SOCKETS``, 1,023 by default).

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
        self._dealt: set[_Member] = set()  # members reached by DEALERs of their own
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
        """How many ROUTER sockets the pool holds open: 0 while nothing is watched, 1, or 2 when
        CURVE and plain members are watched together. Each has a PAIR socket that its
        socket monitor tells of disconnections; members whose heart refuses a ROUTER have
        DEALERs of their own besides (``dealers``)."""
        return len(self._channels)

    @property
    def dealers(self) -> int:
        """How many members are reached by DEALER sockets of their own, not the pool's ROUTER:
        those whose heart refused a ROUTER peer (a REP heart, such as IRkernel's)."""
        return len(self._dealt)

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
        member = _Member(self, listener, heart, [], channel)
        if member.url is None:
            # Connected once an address of the name is found, off the loop: until then the
            # pings to these routing ids go nowhere, and the Judge sees a silent heart.
            member.rids = [self._new_rid() for _ in range(heart.paths)]
        else:
            try:
                self._attach(member, member.url)
            except (ValueError, OSError, RuntimeError):
                if not channel.members:
                    self._close_channel(channel)
                raise
        channel.members += 1
        self._watching += 1
        member.phase = self._schedule.join(member, heart.interval, time.monotonic())
        for rid in member.rids:
            self._members[rid] = member
        if heart.endpoint.is_name:
            assert self._loop is not None  # set when the channel was opened
            member.target = _resolve.Target(
                heart.endpoint,
                heart.time_to_dead,
                self._loop,
                lambda url: self._move(member, url),
            )
        return member

    def _new_rid(self) -> bytes:
        return b"hb" + next(self._ids).to_bytes(8, "big")

    def _attach(self, member: _Member, url: str) -> None:
        """Connect ``member`` to ``url`` (its heart's, or an address of its host name): idle
        connections of that url first, then new ones; by DEALERs of its own where the heart at
        ``url`` is known to refuse the ROUTER. Sets its routing ids and url."""
        channel, heart = member.channel, member.heart
        entry = channel.urls.get(url)
        if entry is None:
            entry = channel.urls[url] = _Url()
        rids: list[bytes] = []
        try:
            for _ in range(heart.paths):
                rid = entry.take_idle(heart.curve_serverkey)
                if rid is None:
                    rid = self._new_rid()
                    if not entry.dealers:
                        _sockets.connect(
                            channel.socket,
                            url,
                            curve_serverkey=heart.curve_serverkey,
                            routing_id=rid,
                            interval=heart.interval,
                        )
                rids.append(rid)
            member.rids, member.url = rids, url
            if entry.dealers:  # the heart is known to refuse the ROUTER
                self._use_dealers(member)
        except (ValueError, OSError, RuntimeError):
            if entry.members:
                if not entry.dealers:
                    entry.idle += [(rid, heart.curve_serverkey) for rid in rids]
            else:
                del channel.urls[url]
            raise
        entry.members.add(member)

    def _release(self, member: _Member) -> None:
        """``member``'s connections are no longer its own: its DEALERs closed; its ROUTER
        connections kept idle for another member of its url, or the url disconnected if none
        watches it."""
        if member.dealer is not None:
            member.dealer.close()
            member.dealer = None
        self._dealt.discard(member)
        channel, url = member.channel, member.url
        entry = None if url is None else channel.urls.get(url)
        if url is None or entry is None:
            return
        entry.members.discard(member)
        if entry.members:
            if not entry.dealers:  # a url reached by DEALERs has no connection on the ROUTER
                entry.idle += [(rid, member.curve_serverkey) for rid in member.rids]
            return
        del channel.urls[url]
        if self._channels.get(channel.curve) is channel and not entry.dealers:
            # ZMQError: already gone, or the context was terminated.
            with contextlib.suppress(zmq.ZMQError):
                channel.socket.disconnect(url)

    def _move(self, member: _Member, url: str) -> None:
        """Connect a member watching a host name to ``url``, an address of it (the first
        found, or one its heart is now reached at)."""
        channel = member.channel
        if member.closed or self._channels.get(channel.curve) is not channel:
            return
        for rid in member.rids:
            self._members.pop(rid, None)
        self._release(member)
        # A new address: whether the heart there takes a ROUTER is learned afresh.
        member.answered = False
        member.backoff = member.heart.interval / 2
        member.retry_at = time.monotonic() + member.backoff
        try:
            self._attach(member, url)
        except ValueError:  # zmq refused an address: silent, as a heart not reached
            member.rids, member.url = [self._new_rid() for _ in range(member.heart.paths)], None
        except (OSError, RuntimeError) as exc:  # its DEALERs could not be opened
            member.rids, member.url = [self._new_rid() for _ in range(member.heart.paths)], None
            member.listener.transport_failed(str(exc))
        member.turn = 0
        for rid in member.rids:
            self._members[rid] = member

    # -- what members call -----------------------------------------------------------------

    def send(self, member: _Member, payload: bytes) -> None:
        """Send ``member``'s ping; one that cannot go out now is dropped, never half-sent."""
        dealer = member.dealer
        if dealer is not None:
            dealer.send(payload)
            return
        member.last = payload
        if not member.answered and time.monotonic() >= member.retry_at:
            self._retry(member)
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
        self._release(member)
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
        try:
            monitor = _sockets.watch_disconnections(socket)
        except (OSError, RuntimeError):
            socket.close(linger=0)
            raise
        loop = self._loop = self._members_loop()
        channel = self._channels[curve] = _Channel(socket, curve, monitor)
        loop.add_handler(channel.fd, self._on_readable, IOLoop.READ)
        loop.add_handler(channel.monitor_fd, self._on_disconnections, IOLoop.READ)
        return channel

    def _close_channel(self, channel: _Channel) -> None:
        if self._channels.get(channel.curve) is not channel:
            return
        del self._channels[channel.curve]
        assert self._loop is not None  # set when the channel was opened
        try:
            self._loop.remove_handler(channel.monitor_fd)
            _sockets.stop_watching(channel.socket, channel.monitor)
        finally:
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
        if self._dealt:
            # A copy: a reply's callback may stop a member (its DEALERs closed: a read of them
            # reads nothing).
            for member in list(self._dealt):
                if member.dealer is not None:
                    member.dealer.read()
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
                    member.answered = True
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

    # -- hearts that refuse the ROUTER ---------------------------------------------------------

    def _on_disconnections(self, fd: int, events: int) -> None:
        for channel in list(self._channels.values()):
            if channel.monitor_fd != fd:
                continue
            try:
                ended = _sockets.disconnections(channel.monitor)
            except zmq.ZMQError as exc:
                self._channel_failed(channel, exc)
                return
            for endpoint in ended:
                if self._channels.get(channel.curve) is not channel:
                    return  # its last member stopped meanwhile: closed
                url = channel.urls.get(endpoint)
                # A connection that ended after the heart answered through it: the heart died
                # or restarts, and libzmq connects again. One that never carried a reply: the
                # heart refused the ROUTER (or died before answering: a DEALER will do too).
                never_answered = url is not None and not any(m.answered for m in url.members)
                if url is not None and not url.dealers and never_answered:
                    self._move_to_dealers(channel, endpoint, url)

    def _move_to_dealers(self, channel: _Channel, endpoint: str, url: _Url) -> None:
        """From now on, reach ``url``'s members by DEALERs of their own."""
        url.dealers = True
        url.idle.clear()
        # Whatever connection is left (libzmq retries one a CURVE REP heart ended) goes.
        with contextlib.suppress(zmq.ZMQError):
            channel.socket.disconnect(endpoint)
        self._log.debug(
            "heartbeat pool: %s ended its connection before any reply (a REP heart refuses a "
            "ROUTER): reached by a DEALER socket of its own",
            endpoint,
        )
        for member in list(url.members):
            if member.closed or member.dealer is not None:
                continue
            try:
                self._use_dealers(member)
            except (ValueError, OSError, RuntimeError) as exc:
                member.listener.transport_failed(str(exc))
                continue
            if member.last:
                # The ping that went to the ROUTER was lost: a heart bound late answers it now,
                # as a lone monitor's DEALER delivers the ping it queued.
                member.send(member.last)

    def _retry(self, member: _Member) -> None:
        """Connect ``member``'s url afresh, with new routing ids, if no member of it was ever
        answered; again after half of time_to_dead, and after twice as long each time.

        libzmq has been seen (a few hearts in a thousand REP hearts watched at once, under
        load) to drop a connection a REP heart refused with no event on the monitor at all, and
        never to try again: a fresh connection is refused again, and told. A heart not bound
        yet costs nothing more than a connect; a slow link gets a longer wait each time.
        """
        member.backoff = max(2 * member.backoff, member.heart.time_to_dead / 2)
        member.retry_at = time.monotonic() + member.backoff
        channel = member.channel
        url_string = member.url
        url = None if url_string is None else channel.urls.get(url_string)
        if self._channels.get(channel.curve) is not channel or url is None or url.dealers:
            return
        assert url_string is not None  # a url entry is found by its string
        if any(other.answered for other in url.members):
            return
        with contextlib.suppress(zmq.ZMQError):
            channel.socket.disconnect(url_string)
        url.idle.clear()
        for other in url.members:
            for i, old in enumerate(other.rids):
                rid = b"hb" + next(self._ids).to_bytes(8, "big")
                try:
                    _sockets.connect(
                        channel.socket,
                        url_string,
                        curve_serverkey=other.curve_serverkey,
                        routing_id=rid,
                        interval=other.heart.interval,
                    )
                except ValueError:
                    continue  # it was taken before: not now, for a reason zmq named; retry later
                self._members.pop(old, None)
                self._members[rid] = other
                other.rids[i] = rid

    def _use_dealers(self, member: _Member) -> None:
        """Give ``member`` DEALERs of its own (raises as a lone monitor's ``open`` does)."""
        assert self._loop is not None  # the member's channel is open
        heart = member.heart
        if member.url is not None and member.url != heart.url:
            # A host name's address, found already: the DEALERs go there, not to the name.
            where = _validate.endpoint(member.url, bind=False)
            heart = dataclasses.replace(heart, url=member.url, endpoint=where)
        member.dealer = SocketTransport(heart, member.listener, self._loop, self._context)
        self._dealt.add(member)
