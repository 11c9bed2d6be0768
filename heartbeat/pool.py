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
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import resource
import time
from typing import Any

import zmq
from tornado.ioloop import IOLoop

from heartbeat import _validate
from heartbeat._link import plain_context, reconnect_ivl
from heartbeat._slots import Phases, Slots
from heartbeat.monitor import HeartMonitor, Log, default_log
from heartbeat.probe import curve_client

# File descriptors left for everything else the process does.
_FD_MARGIN = 64
# Replies read per wake-up at most, so one flood cannot hold the loop.
_DRAIN_LIMIT = 50_000
# Members judged between two reads of the socket in one long batch (10,000 kernels started
# together take ~150 ms to judge): a reply that arrives meanwhile is read, not judged missing.
_FLUSH_EVERY = 256
# Members that share one ping phase at most: their pings go out in one burst, far cheaper per
# ping than one by one, and judging them holds the loop for ~15 ms (about 15 us a member).
_PHASE_SIZE = 1024
# Plain ints: pyzmq's flag enums cost more to combine than the send itself, once a beat.
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)


class _Channel:
    """One of the pool's ROUTER sockets (plain, or CURVE) and how many members use it."""

    __slots__ = ("curve", "fd", "members", "socket")

    def __init__(self, socket: zmq.Socket[Any], curve: bool) -> None:
        self.socket = socket
        self.fd: int = socket.FD
        self.curve = curve
        self.members = 0


class _PoolLink:
    """A member's place in the pool: its routing id, its socket, and the slot it waits in."""

    __slots__ = ("channel", "closed", "monitor", "phase", "pool", "rid", "slot")

    def __init__(
        self, pool: HeartbeatPool, monitor: HeartMonitor, rid: bytes, channel: _Channel
    ) -> None:
        self.pool = pool
        self.monitor = monitor
        self.rid = rid
        self.channel = channel
        self.slot: float | None = None
        self.phase: float | None = None
        self.closed = False

    def send(self, payload: bytes) -> None:
        self.pool._send(self, payload)

    def wake_at(self, deadline: float) -> None:
        pool = self.pool
        pool._unslot(self)
        self.slot = slot = pool._slots.add(self, deadline, pool._slack)
        if not pool._judging and slot < pool._timer_at:
            pool._schedule()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._leave(self)


class HeartbeatPool:
    """One ROUTER socket and one timer shared by many HeartMonitors.

    Members with the same interval share a ping phase, in groups of up to 1,024: from its
    second ping on, a member pings in one burst with its group (docs/scale.md says why).

    Parameters
    ----------
    context:
        The zmq context; default ``zmq.Context.instance()``.
    io_loop:
        The tornado IOLoop; default ``IOLoop.current()`` when the first member starts.
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
        self._batch = None if batch is None else _validate.number("batch", batch, allow_zero=True)
        # The batch in force: the one asked for, or a tenth of the shortest member interval.
        self._slack = float("inf") if self._batch is None else self._batch
        self._context = context
        self._io_loop = io_loop
        self._loop: IOLoop | None = None
        self._channels: dict[bool, _Channel] = {}  # by "uses CURVE"
        self._members: dict[bytes, _PoolLink] = {}
        self._slots: Slots[_PoolLink] = Slots()
        self._phases: Phases[_PoolLink] = Phases(_PHASE_SIZE)
        self._ids = itertools.count(1)
        self._timer: object | None = None
        self._timer_at = float("inf")
        self._judging = False

    def __len__(self) -> int:
        """How many members are watching now."""
        return len(self._members)

    @property
    def batch(self) -> float | None:
        """The batch in force (s): as given, or a tenth of the shortest member interval.

        None while the default is asked for and no member has joined.
        """
        return None if self._slack == float("inf") else self._slack

    @property
    def sockets(self) -> int:
        """How many sockets the pool holds open: 0 while nothing is watched, 1, or 2 when
        CURVE and plain members are watched together."""
        return len(self._channels)

    def watch(self, url: str, **kwargs: Any) -> HeartMonitor:
        """A HeartMonitor of ``url`` in this pool (not started); keywords as HeartMonitor's."""
        return HeartMonitor(url, pool=self, **kwargs)

    def close(self) -> None:
        """Stop every member and close the socket. Idempotent."""
        for link in list(self._members.values()):
            link.monitor.stop()
        self._close_channels()

    # -- what members call -----------------------------------------------------------------

    def _check_member(self, monitor: HeartMonitor) -> None:
        most = monitor.stall_after / 2
        if self._batch is not None and self._batch > most:
            raise ValueError(
                f"this pool's batch of {self._batch:g} s is too coarse for {monitor.url} "
                f"(time_to_dead {monitor.time_to_dead:g} s, interval {monitor.interval:g} s): "
                f"at most {most:g} s, half its stall threshold; use a pool with a finer batch"
            )

    def _join(self, monitor: HeartMonitor) -> _PoolLink:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if not monitor.url.startswith("inproc://") and len(self._members) + _FD_MARGIN >= soft:
            raise OSError(
                f"cannot watch {monitor.url}: {len(self._members)} hearts are watched and each "
                f"needs a file descriptor; this process may open {soft} (the RLIMIT_NOFILE soft "
                "limit, 'ulimit -n'): raise it"
            )
        key = monitor.curve_serverkey
        channel = self._open_channel(curve=key is not None)
        rid = b"hb" + next(self._ids).to_bytes(8, "big")
        try:
            channel.socket.setsockopt(zmq.CONNECT_ROUTING_ID, rid)
            if key is not None:
                # Taken as it stands at connect(): each heart gets its own server key.
                channel.socket.curve_serverkey = key
            channel.socket.connect(monitor.url)
        except zmq.ZMQError as exc:
            if not channel.members:
                self._close_channel(channel)
            raise ValueError(f"cannot connect to {monitor.url!r}: {exc.strerror}") from None
        channel.members += 1
        link = _PoolLink(self, monitor, rid, channel)
        link.phase = self._phases.join(link, monitor.interval, time.monotonic())
        self._members[rid] = link
        if self._batch is None:
            # Never coarser than a fifth of any member's stall threshold (interval / 10 <=
            # (time_to_dead - interval) / 10, as interval <= time_to_dead / 2).
            self._slack = min(self._slack, monitor.interval / 10)
        return link

    def _leave(self, link: _PoolLink) -> None:
        self._unslot(link)
        self._phases.leave(link)
        self._members.pop(link.rid, None)
        channel = link.channel
        channel.members -= 1
        if self._channels.get(channel.curve) is channel:
            # ZMQError: already gone, or the context was terminated.
            with contextlib.suppress(zmq.ZMQError):
                channel.socket.disconnect(link.monitor.url)
            if not channel.members:
                self._close_channel(channel)  # nothing is held while nothing is watched

    def _send(self, link: _PoolLink, payload: bytes) -> None:
        channel = link.channel
        if self._channels.get(channel.curve) is not channel:
            return
        rid = link.rid
        send = channel.socket.send
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
            self._fail(channel, exc)
            return
        if not self._judging and self._loop is not None:
            # A send can swallow the descriptor's edge for replies already waiting.
            self._loop.add_callback(self._drain)

    def _unslot(self, link: _PoolLink) -> None:
        slot, link.slot = link.slot, None
        if slot is not None and self._slots.remove(link, slot) and slot == self._timer_at:
            # Every member the timer was set for has re-armed or left: no wake-up for nobody.
            self._cancel_timer()
            self._schedule()

    # -- internals -------------------------------------------------------------------------

    def _open_channel(self, curve: bool) -> _Channel:
        channel = self._channels.get(curve)
        if channel is not None:
            return channel
        context = plain_context(self._context)
        try:
            socket: zmq.Socket[Any] = context.socket(zmq.ROUTER)
        except zmq.ZMQError as exc:
            raise _validate.socket_error(exc, context, "cannot open the pool's socket") from None
        socket.linger = 0
        socket.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl(0.1))
        socket.setsockopt(zmq.IPV6, 1)
        # Hearts answer at the speed they are pinged; deep queues only hide a dead peer.
        socket.sndhwm = socket.rcvhwm = 100_000
        if curve:
            curve_client(socket, None)  # one ephemeral key pair; server keys per connect()
        if self._loop is None:
            self._loop = self._io_loop if self._io_loop is not None else IOLoop.current()
        channel = self._channels[curve] = _Channel(socket, curve)
        self._loop.add_handler(channel.fd, self._on_readable, IOLoop.READ)
        return channel

    def _close_channel(self, channel: _Channel) -> None:
        if self._channels.get(channel.curve) is not channel:
            return
        del self._channels[channel.curve]
        if self._loop is not None:
            self._loop.remove_handler(channel.fd)
        channel.socket.close(linger=0)
        if not self._channels:
            self._cancel_timer()
            self._slots.clear()
            self._phases.clear()
            if self._batch is None:
                self._slack = float("inf")  # the next members set it afresh

    def _close_channels(self) -> None:
        for channel in list(self._channels.values()):
            self._close_channel(channel)

    def _fail(self, channel: _Channel, exc: zmq.ZMQError) -> None:
        self._log.error("heartbeat pool stopped: its socket failed (%s)", exc.strerror)
        for link in list(self._members.values()):
            if link.channel is channel:
                link.monitor._fail(exc)
        self._close_channel(channel)

    def _cancel_timer(self) -> None:
        if self._loop is not None and self._timer is not None:
            self._loop.remove_timeout(self._timer)
        self._timer = None
        self._timer_at = float("inf")

    def _schedule(self) -> None:
        due = self._slots.first()
        if due is None or self._loop is None or due >= self._timer_at:
            return
        self._cancel_timer()
        self._timer_at = due
        self._timer = self._loop.call_later(max(0.0, due - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        # Members re-armed from here on are scheduled once, after the loop: a timer set for
        # a slot while this one is judged would wake again for a fraction of the batch.
        self._judging = True
        try:
            # Flush before judging: every reply already in the socket is read first.
            if not self._drain():
                return
            now = time.monotonic()
            judged = 0
            while members := self._slots.pop_due(now):
                for link in members:
                    link.slot = None
                todo = iter(members)
                try:
                    for link in todo:
                        if link.closed or link.slot is not None:
                            continue  # it left, or a reply read meanwhile re-armed it
                        link.monitor._judge_now(now)
                        judged += 1
                        if judged % _FLUSH_EVERY == 0:
                            if not self._drain():
                                return
                            now = time.monotonic()
                except BaseException:
                    # A member raised: it and the rest of its slot wait for the next batch
                    # (nobody is left unwatched), and the error goes on to the loop's log.
                    for rest in (link, *todo):
                        if not rest.closed and rest.slot is None:
                            rest.wake_at(now)
                    raise
        finally:
            # Even if a member raised: the clock of every other member keeps running.
            self._judging = False
            self._drain()
            self._schedule()

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
                link = members.get(frames[0])
                if link is not None and len(frames) == 3 and not frames[1]:
                    link.monitor._on_reply(frames[2], time.monotonic())
        except zmq.Again:
            return
        except zmq.ZMQError as exc:
            self._fail(channel, exc)
            return
        # Limit reached: more may wait, and the edge-triggered descriptor will not say so.
        if self._loop is not None:
            self._loop.add_callback(self._drain)
