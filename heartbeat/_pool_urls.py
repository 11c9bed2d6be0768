"""The pool's connections, by url: which routing id of which ROUTER socket reaches which heart.

A pool member reaches its heart over one connection a path, each known to the pool's ROUTER
by a routing id of its own. Its connections are made to a url: its heart's, or an address of
its heart's host name once one is found off the loop (``_resolve.Target`` calls
:meth:`Connections.move` with each new one). Members of one url share what libzmq allows them
to share (see :class:`Url`); a url whose heart refuses the ROUTER (a REP heart: ``_pool_rep``
finds that out) has its members reached by DEALER sockets of their own instead.

:class:`~heartbeat.pool.HeartbeatPool` owns the sockets, the loop and the timer; this module
keeps the book of who is connected where, and connects, releases and moves members.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import resource
import time
from typing import Any, Protocol

import zmq
from tornado.ioloop import IOLoop

from heartbeat import _resolve, _sockets, _validate
from heartbeat._own_socket import SocketTransport
from heartbeat.transport import HeartSpec, Listener

# File descriptors left for everything else the process does.
_FD_MARGIN = 64


class Owner(Protocol):
    """What a member asks of its pool (:class:`~heartbeat.pool.HeartbeatPool`)."""

    def send(self, member: Member, payload: bytes) -> None: ...

    def wake_at(self, member: Member, deadline: float) -> None: ...

    def leave(self, member: Member) -> None: ...


class Url:
    """The connections one channel has made to one url.

    libzmq's ``disconnect(url)`` ends every connection made to that url, so a member that leaves
    while others still watch the same heart cannot disconnect: its connection is kept idle, with
    its routing id, for the next member of that url to take over (replies to the old member's
    pings carry its nonce and are ignored). The url is disconnected when its last member leaves.
    """

    __slots__ = ("dealers", "idle", "members")

    def __init__(self) -> None:
        self.members: set[Member] = set()
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


class Channel:
    """One of the pool's ROUTER sockets (plain, or CURVE), how many members use it, the
    connections it has made, by url, and the PAIR socket told of its disconnections."""

    __slots__ = ("curve", "fd", "members", "monitor", "monitor_fd", "open", "socket", "urls")

    def __init__(self, socket: zmq.Socket[Any], curve: bool, monitor: zmq.Socket[Any]) -> None:
        self.socket = socket
        self.fd: int = socket.FD
        self.curve = curve
        self.members = 0
        self.urls: dict[str, Url] = {}
        self.monitor = monitor
        self.monitor_fd: int = monitor.FD
        # Until the pool closes it (a closed channel is never opened again: a new one is made).
        self.open = True


class Member:
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
        pool: Owner,
        listener: Listener,
        heart: HeartSpec,
        rids: list[bytes],
        channel: Channel,
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
        # Unanswered by then, the url is connected afresh (_pool_rep.retry): half an
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


class Connections:
    """A pool's members by routing id, those reached by DEALERs of their own, and how each
    member's connections are made, kept idle, ended and moved."""

    __slots__ = ("_context", "_ids", "dealt", "members")

    def __init__(self, context: zmq.Context[Any] | None) -> None:
        self._context = context
        self.members: dict[bytes, Member] = {}  # by routing id: a member has one a path
        self.dealt: set[Member] = set()  # members reached by DEALERs of their own
        self._ids = itertools.count(1)

    def check_room(self, heart: HeartSpec, watching: int) -> None:
        """OSError if ``heart``'s connections would leave the process too few file descriptors
        (``watching``: how many members the pool has, for the message)."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        connections = len(self.members)
        if heart.endpoint.transport != "inproc" and connections + heart.paths + _FD_MARGIN > soft:
            raise OSError(
                f"cannot watch {heart.url} over {heart.paths} paths: {watching} hearts "
                f"are watched over {connections} connections, and each connection needs a "
                f"file descriptor; this process may open {soft} (the RLIMIT_NOFILE soft limit, "
                "'ulimit -n'): raise it, or watch with fewer paths"
            )

    def join(
        self,
        pool: Owner,
        listener: Listener,
        heart: HeartSpec,
        channel: Channel,
        loop: IOLoop | None,
    ) -> Member:
        """A new member of ``pool`` on ``channel``, connected to its heart's url (raises as
        :meth:`attach`), or, for a host name, with routing ids that go nowhere yet. The pool
        registers its routing ids once it has joined."""
        member = Member(pool, listener, heart, [], channel)
        if member.url is None:
            # Connected once an address of the name is found, off the loop: until then the
            # pings to these routing ids go nowhere, and the Judge sees a silent heart.
            member.rids = [self.new_rid() for _ in range(heart.paths)]
        else:
            self.attach(member, member.url, loop)
        return member

    def find_address(self, member: Member, loop: IOLoop) -> None:
        """For a member watching a host name: look for an address of it, off the loop, and
        :meth:`move` the member there with each new one found."""
        member.target = _resolve.Target(
            member.heart.endpoint,
            member.heart.time_to_dead,
            loop,
            # ``loop`` is the pool's for as long as the member's channel is open (the pool
            # takes another loop only once every channel is closed), and move does nothing
            # once it is closed.
            lambda url: self.move(member, url, loop),
        )

    def remove(self, member: Member) -> None:
        """``member`` left the pool: no more lookups of its name; its routing ids forgotten and
        its connections released."""
        if member.target is not None:
            member.target.close()
        for rid in member.rids:
            self.members.pop(rid, None)
        self.release(member)

    def new_rid(self) -> bytes:
        """A routing id no connection of this pool has had."""
        return b"hb" + next(self._ids).to_bytes(8, "big")

    def attach(self, member: Member, url: str, loop: IOLoop | None) -> None:
        """Connect ``member`` to ``url`` (its heart's, or an address of its host name): idle
        connections of that url first, then new ones; by DEALERs of its own (on ``loop``) where
        the heart at ``url`` is known to refuse the ROUTER. Sets its routing ids and url."""
        channel, heart = member.channel, member.heart
        entry = channel.urls.get(url)
        if entry is None:
            entry = channel.urls[url] = Url()
        rids: list[bytes] = []
        try:
            for _ in range(heart.paths):
                rid = entry.take_idle(heart.curve_serverkey)
                if rid is None:
                    rid = self.new_rid()
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
                self.use_dealers(member, loop)
        except (ValueError, OSError, RuntimeError):
            if entry.members:
                if not entry.dealers:
                    entry.idle += [(rid, heart.curve_serverkey) for rid in rids]
            else:
                del channel.urls[url]
            raise
        entry.members.add(member)

    def release(self, member: Member) -> None:
        """``member``'s connections are no longer its own: its DEALERs closed; its ROUTER
        connections kept idle for another member of its url, or the url disconnected if none
        watches it."""
        if member.dealer is not None:
            member.dealer.close()
            member.dealer = None
        self.dealt.discard(member)
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
        if channel.open and not entry.dealers:
            # ZMQError: already gone, or the context was terminated.
            with contextlib.suppress(zmq.ZMQError):
                channel.socket.disconnect(url)

    def move(self, member: Member, url: str, loop: IOLoop | None) -> None:
        """Connect a member watching a host name to ``url``, an address of it (the first
        found, or one its heart is now reached at)."""
        channel = member.channel
        if member.closed or not channel.open:
            return
        for rid in member.rids:
            self.members.pop(rid, None)
        self.release(member)
        # A new address: whether the heart there takes a ROUTER is learned afresh.
        member.answered = False
        member.backoff = member.heart.interval / 2
        member.retry_at = time.monotonic() + member.backoff
        try:
            self.attach(member, url, loop)
        except ValueError:  # zmq refused an address: silent, as a heart not reached
            member.rids, member.url = [self.new_rid() for _ in range(member.heart.paths)], None
        except (OSError, RuntimeError) as exc:  # its DEALERs could not be opened
            member.rids, member.url = [self.new_rid() for _ in range(member.heart.paths)], None
            member.listener.transport_failed(str(exc))
        member.turn = 0
        for rid in member.rids:
            self.members[rid] = member

    def use_dealers(self, member: Member, loop: IOLoop | None) -> None:
        """Give ``member`` DEALERs of its own on ``loop`` (raises as a lone monitor's ``open``
        does)."""
        assert loop is not None  # the member's channel is open
        heart = member.heart
        if member.url is not None and member.url != heart.url:
            # A host name's address, found already: the DEALERs go there, not to the name.
            where = _validate.endpoint(member.url, bind=False)
            heart = dataclasses.replace(heart, url=member.url, endpoint=where)
        member.dealer = SocketTransport(heart, member.listener, loop, self._context)
        self.dealt.add(member)
