"""A discrete-event world for the Judge: a heart with chosen round trips and a loop with stalls.

It plays the adapter's part exactly as HeartMonitor does: replies are read when they arrive
unless the loop is stalled, and every timer first reads what has arrived (flush before judging).
Between the heart and the Judge sits a model of the transport's socket, which may lose replies
the way a real socket would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from heartbeat import Dead, Judge, Ping


class KeepsEveryReply:
    """A DEALER (the lone monitor's socket) or a ROUTER (the pool's): every reply is read."""

    def sent(self) -> None:
        """A ping went out."""

    def keeps(self) -> bool:
        """Whether the reply that has just arrived reaches the Judge."""
        return True


class RelaxedReq:
    """libzmq's relaxed REQ (the lone monitor's socket before): of the replies that arrive
    between two pings only the first can be read; the others wait until the next ping goes
    out, which throws them away."""

    def __init__(self) -> None:
        self._awaiting = False

    def sent(self) -> None:
        self._awaiting = True

    def keeps(self) -> bool:
        kept, self._awaiting = self._awaiting, False
        return kept


@dataclass
class World:
    judge: Judge
    rtt: Callable[[int], float]  # round trip of the n-th ping
    bind_at: float = 0.0  # the heart answers pings that reach it from here on
    kill_at: float = float("inf")  # ... until here
    lost: Callable[[int], bool] = lambda n: False  # the n-th ping, or its reply, is lost
    lateness: Callable[[int], float] = lambda n: 0.0  # extra delay of the n-th timer
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (start, end): loop frozen
    start_at: float = 0.0
    phase: float | None = None  # the caller's ping grid, as a pool gives it
    socket: KeepsEveryReply | RelaxedReq = field(default_factory=KeepsEveryReply)
    dead_at: float | None = None
    replies_read: list[float] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    _pending: list[tuple[float, int]] = field(default_factory=list)

    def _free(self, t: float) -> float:
        """The first moment at or after t when the loop runs."""
        for start, end in self.stalls:
            if start <= t < end:
                return end
        return t

    def _handle(self, now: float, events: list[object]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, Ping):
                self.socket.sent()
                reaches = max(now, self.bind_at)
                if reaches < self.kill_at and not self.lost(event.token):
                    self._pending.append((reaches + self.rtt(event.token), event.token))
            elif isinstance(event, Dead):
                self.dead_at = now

    def _read_until(self, t: float) -> None:
        self._pending.sort()
        while self._pending and self._free(self._pending[0][0]) <= t:
            arrival, token = self._pending.pop(0)
            if not self.socket.keeps():
                continue
            seen = self._free(arrival)
            self.replies_read.append(seen)
            self._handle(seen, self.judge.on_reply(seen, token))

    def run(self, until: float) -> None:
        self._handle(self.start_at, self.judge.start(self.start_at, phase=self.phase))
        n = 0
        while self.dead_at is None:
            deadline = self.judge.next_deadline
            assert deadline is not None
            n += 1
            fire = self._free(deadline + self.lateness(n))
            if fire > until:
                self._read_until(until)
                return
            self._read_until(fire)  # replies handled as they arrive, then the flush
            self._handle(fire, self.judge.on_timer(fire))
