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

A heart that refuses a ROUTER peer (a REP socket, as IRkernel's) is found out from the sockets'
disconnections and reached by DEALER sockets of its members' own, still read and judged by the
pool: ``_pool_rep`` says how, and why. ``_pool_urls`` keeps which connection reaches which member.

The pool is a :class:`~heartbeat.transport.TransportFactory`; which member is judged when is
decided by the pure :class:`~heartbeat._schedule.PoolSchedule`. This module does the socket work.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

import zmq
from tornado.ioloop import IOLoop

from heartbeat import _pool_rep, _sockets, _validate
from heartbeat._pool_urls import Channel, Connections, Member
from heartbeat._schedule import PoolSchedule
from heartbeat.monitor import HeartMonitor, Log, default_log
from heartbeat.transport import HeartSpec, Listener

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
        self._schedule: PoolSchedule[Member] = PoolSchedule(given, _PHASE_SIZE)
        self._context = context
        # Weakly: a pool kept for a loop (``shared_pool``) must not keep a finished loop alive.
        self._io_loop = None if io_loop is None else weakref.ref(io_loop)
        # The loop in use, held only while a socket is open: a pool with nothing to watch
        # takes the current loop again when a member next starts (a new asyncio.run(), say).
        self._loop: IOLoop | None = None
        self._channels: dict[bool, Channel] = {}  # by "uses CURVE"
        # Its members by routing id, and how their connections are made (_pool_urls).
        self._connections = Connections(context)
        self._watching = 0
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
        return len(self._connections.dealt)

    @property
    def wakeups(self) -> int:
        """How many times the pool's timer has fired (one wake-up judges a whole batch)."""
        return self._wakeups

    def watch(self, url: str, **kwargs: Any) -> HeartMonitor:
        """A HeartMonitor of ``url`` in this pool (not started); keywords as HeartMonitor's."""
        return HeartMonitor(url, transport=self, **kwargs)

    def close(self) -> None:
        """Stop every member and close the sockets. Idempotent."""
        for member in dict.fromkeys(self._connections.members.values()):
            member.listener.transport_closed()
        self._close_channels()

    # -- the TransportFactory -----------------------------------------------------------------

    def check(self, heart: HeartSpec) -> None:
        """ValueError if this pool's batch is too coarse for ``heart``."""
        self._schedule.check(heart.url, heart.time_to_dead, heart.interval, heart.stall_after)

    def open(self, heart: HeartSpec, listener: Listener) -> Member:
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
        self._connections.check_room(heart, self._watching)
        channel = self._open_channel(curve=heart.curve_serverkey is not None)
        try:
            member = self._connections.join(self, listener, heart, channel, self._loop)
        except (ValueError, OSError, RuntimeError):
            if not channel.members:
                self._close_channel(channel)
            raise
        channel.members += 1
        self._watching += 1
        member.phase = self._schedule.join(member, heart.interval, time.monotonic())
        for rid in member.rids:
            self._connections.members[rid] = member
        if heart.endpoint.is_name:
            assert self._loop is not None  # set when the channel was opened
            self._connections.find_address(member, self._loop)
        return member

    # -- what members call -----------------------------------------------------------------

    def send(self, member: Member, payload: bytes) -> None:
        """Send ``member``'s ping; one that cannot go out now is dropped, never half-sent."""
        dealer = member.dealer
        if dealer is not None:
            dealer.send(payload)
            return
        member.last = payload
        if not member.answered and time.monotonic() >= member.retry_at:
            _pool_rep.retry(self._connections, member)
        channel = member.channel
        if not channel.open:
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

    def wake_at(self, member: Member, deadline: float) -> None:
        """Judge ``member`` at ``deadline``, in the batch for it."""
        self._schedule.wake_at(member, deadline)
        if not self._judging:  # a wake-up sets the timer once, when it is done
            self._set_timer()

    def leave(self, member: Member) -> None:
        """``member`` stops: its url is disconnected once no member watches it, and a socket
        nobody uses is closed."""
        self._schedule.leave(member)
        self._watching -= 1
        channel = member.channel
        channel.members -= 1
        self._connections.remove(member)
        if channel.open and not channel.members:
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

    def _open_channel(self, curve: bool) -> Channel:
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
        channel = self._channels[curve] = Channel(socket, curve, monitor)
        loop.add_handler(channel.fd, self._on_readable, IOLoop.READ)
        loop.add_handler(channel.monitor_fd, self._on_disconnections, IOLoop.READ)
        return channel

    def _close_channel(self, channel: Channel) -> None:
        if not channel.open:
            return
        del self._channels[channel.curve]
        channel.open = False
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

    def _channel_failed(self, channel: Channel, exc: zmq.ZMQError) -> None:
        self._log.error("heartbeat pool stopped: its socket failed (%s)", exc.strerror)
        for member in dict.fromkeys(self._connections.members.values()):
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
    def _judge(member: Member, now: float) -> None:
        member.listener.timer_due(now)

    def _on_readable(self, fd: int, events: int) -> None:
        self._drain()

    def _drain(self) -> bool:
        """Read every reply waiting on every socket; False if none is left."""
        for channel in list(self._channels.values()):
            self._drain_channel(channel)
        dealt = self._connections.dealt
        if dealt:
            # A copy: a reply's callback may stop a member (its DEALERs closed: a read of them
            # reads nothing).
            for member in list(dealt):
                if member.dealer is not None:
                    member.dealer.read()
        return bool(self._channels)

    def _drain_channel(self, channel: Channel) -> None:
        recv = channel.socket.recv
        members = self._connections.members
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
                    if not channel.open:
                        return  # its last member stopped from the reply's callback: closed

        except zmq.Again:
            return
        except zmq.ZMQError as exc:
            self._channel_failed(channel, exc)
            return
        if self._loop is not None:  # the limit was reached: more may wait
            _sockets.read_soon_if_waiting(channel.socket, self._loop, self._drain)

    # -- hearts that refuse the ROUTER (_pool_rep) -------------------------------------------

    def _on_disconnections(self, fd: int, events: int) -> None:
        for channel in list(self._channels.values()):
            if channel.monitor_fd != fd:
                continue
            try:
                ended = _sockets.disconnections(channel.monitor)
            except zmq.ZMQError as exc:
                self._channel_failed(channel, exc)
                return
            _pool_rep.connections_ended(self._connections, channel, ended, self._loop, self._log)
