"""A transport factory and transport that only record, for tests that drive a monitor by hand
through its front door: ``HeartMonitor(url, transport=FakeFactory())``, then the monitor's own
Listener methods (``timer_due``, ``payload_received``) play the transport's part."""

from __future__ import annotations

from dataclasses import dataclass, field

from heartbeat.transport import HeartSpec, Listener


@dataclass
class FakeTransport:
    """Records what the monitor asks of it."""

    listener: Listener
    phase: float | None = None
    sent: list[bytes] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)
    closed: bool = False

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)

    def wake_at(self, deadline: float) -> None:
        self.wakes.append(deadline)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeFactory:
    """Opens FakeTransports; ``opened[-1]`` is the current one."""

    checked: list[HeartSpec] = field(default_factory=list)
    opened: list[FakeTransport] = field(default_factory=list)

    def check(self, heart: HeartSpec) -> None:
        self.checked.append(heart)

    def open(self, heart: HeartSpec, listener: Listener) -> FakeTransport:
        transport = FakeTransport(listener)
        self.opened.append(transport)
        return transport
