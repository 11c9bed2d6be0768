"""Hearts that refuse the pool's ROUTER: found out, and reached by DEALERs of their own.

A heart that refuses a ROUTER peer (a REP socket, as IRkernel's: ZMTP lets REP talk only to REQ
and DEALER) is reached another way. libzmq ends such a connection right after the handshake and,
under the NULL mechanism, never makes it again; the pool watches its sockets' disconnections
(zmq's socket monitor, told of nothing else: :func:`connections_ended`), and a url whose
connection ended before it ever answered is from then on reached by DEALER sockets, one a path
for each of its members (:func:`move_to_dealers`), that send the REQ envelope as a lone
monitor's do (a REP heart answers one ping at a time, in order; a DEALER never waits for a
reply, so a lost one wedges nothing). The pool reads them before judging, and its one timer
still judges those members; the ping that went unanswered is sent again at once. libzmq may also
drop such a connection with no event (a few hearts in a thousand, under load): a url nobody was
answered through half an interval on is connected afresh (:func:`retry`), and the refusal is
told then. A DEALER reaches every kind of heart, so a ROUTER heart whose connection ends before
its first reply (it died starting) is moved too: that costs a socket, never a verdict.
"""

from __future__ import annotations

import contextlib
import time

import zmq
from tornado.ioloop import IOLoop

from heartbeat import _sockets
from heartbeat._pool_urls import Channel, Connections, Member, Url
from heartbeat.monitor import Log


def connections_ended(
    connections: Connections,
    channel: Channel,
    endpoints: list[str],
    loop: IOLoop | None,
    log: Log,
) -> None:
    """``channel``'s connections to ``endpoints`` ended: the urls none of whose members was
    ever answered are moved to DEALERs (on ``loop``)."""
    for endpoint in endpoints:
        if not channel.open:
            return  # its last member stopped meanwhile: closed
        url = channel.urls.get(endpoint)
        # A connection that ended after the heart answered through it: the heart died
        # or restarts, and libzmq connects again. One that never carried a reply: the
        # heart refused the ROUTER (or died before answering: a DEALER will do too).
        never_answered = url is not None and not any(m.answered for m in url.members)
        if url is not None and not url.dealers and never_answered:
            move_to_dealers(connections, channel, endpoint, url, loop, log)


def move_to_dealers(
    connections: Connections,
    channel: Channel,
    endpoint: str,
    url: Url,
    loop: IOLoop | None,
    log: Log,
) -> None:
    """From now on, reach ``url``'s members by DEALERs of their own."""
    url.dealers = True
    url.idle.clear()
    # Whatever connection is left (libzmq retries one a CURVE REP heart ended) goes.
    with contextlib.suppress(zmq.ZMQError):
        channel.socket.disconnect(endpoint)
    log.debug(
        "heartbeat pool: %s ended its connection before any reply (a REP heart refuses a "
        "ROUTER): reached by a DEALER socket of its own",
        endpoint,
    )
    for member in list(url.members):
        if member.closed or member.dealer is not None:
            continue
        try:
            connections.use_dealers(member, loop)
        except (ValueError, OSError, RuntimeError) as exc:
            member.listener.transport_failed(str(exc))
            continue
        if member.last:
            # The ping that went to the ROUTER was lost: a heart bound late answers it now,
            # as a lone monitor's DEALER delivers the ping it queued.
            member.send(member.last)


def retry(connections: Connections, member: Member) -> None:
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
    if not channel.open or url is None or url.dealers:
        return
    assert url_string is not None  # a url entry is found by its string
    if any(other.answered for other in url.members):
        return
    with contextlib.suppress(zmq.ZMQError):
        channel.socket.disconnect(url_string)
    url.idle.clear()
    for other in url.members:
        for i, old in enumerate(other.rids):
            rid = connections.new_rid()
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
            connections.members.pop(old, None)
            connections.members[rid] = other
            other.rids[i] = rid
