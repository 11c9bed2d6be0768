"""What a monitor and its transport promise each other: typing only, no zmq and no loop.

A :class:`~heartbeat.monitor.HeartMonitor` owns no socket and no timer. It is given a
:class:`TransportFactory`, which it asks to :meth:`~TransportFactory.check` the heart when the
monitor is made (bad settings fail before anything starts) and to
:meth:`~TransportFactory.open` a :class:`Transport` at ``start()``; it closes the transport at
``stop()`` or death. The transport calls the monitor back through :class:`Listener`, on the
loop. Two factories ship: a socket and timer of the monitor's own (the default) and
:class:`~heartbeat.pool.HeartbeatPool` (one socket and one timer for many monitors). Tests give a
monitor a fake factory through the same door. Typing only: this module imports no transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from heartbeat._validate import Endpoint


@dataclass(frozen=True)
class HeartSpec:
    """The heart a transport is to reach, and how often the monitor pings it."""

    url: str
    endpoint: Endpoint
    #: The heart's CURVE public key (40 Z85 bytes), or None for a plain connection.
    curve_serverkey: bytes | None
    time_to_dead: float
    interval: float
    #: How late a timer may fire before the monitor counts it as its own stall.
    stall_after: float
    #: How many connections to make to the heart; the pings are spread across them, and a
    #: reply on any of them is life.
    paths: int = 1


class Listener(Protocol):
    """What a transport calls on its monitor, always on the loop."""

    def timer_due(self, now: float) -> None:
        """The deadline asked for with ``wake_at`` has come; every reply already received
        has been handed over first (flush before judging)."""

    def payload_received(self, now: float, payload: bytes) -> None:
        """A reply arrived, read at ``now``; ``payload`` is what the ping carried."""

    def transport_failed(self, reason: str) -> None:
        """The transport can no longer send or receive (its socket failed, most often because
        its context was terminated) and has closed itself."""

    def transport_closed(self) -> None:
        """The transport was closed by its owner (a pool closed): stop watching, no verdict."""


class Transport(Protocol):
    """What a monitor needs from its way to the heart."""

    @property
    def phase(self) -> float | None:
        """The grid its pings are due on (see ``Judge.start``); None: every interval from
        start."""

    def send(self, payload: bytes) -> None:
        """Send a ping carrying ``payload`` now; a ping that cannot go out is dropped."""

    def wake_at(self, deadline: float) -> None:
        """Call ``Listener.timer_due`` at ``deadline`` (monotonic seconds) or a little later;
        replaces the deadline asked before."""

    def close(self) -> None:
        """Stop: no call back after this. Idempotent."""


@runtime_checkable
class TransportFactory(Protocol):
    """Makes a monitor's transport."""

    def check(self, heart: HeartSpec) -> None:
        """Raise ValueError if this factory cannot serve ``heart``; called when the monitor is
        made, before anything starts."""

    def open(self, heart: HeartSpec, listener: Listener) -> Transport:
        """Start reaching ``heart`` for ``listener``; ValueError if the url cannot be
        connected, OSError if the process is out of sockets or file descriptors."""
