"""The pure timing core: every rule about time lives here, and nothing else does.

The Judge owns no socket and no timer. The caller tells it what happened and when (monotonic
seconds), and it answers with plain events saying what to do: send a ping, report a beat, report
its own stall, declare death. ``next_deadline`` says when the caller should call ``on_timer``.

The rules (ttd = time_to_dead, fb = first_beat):

- Pings go out every ``interval`` (at most ttd / 2), whether or not the last one was answered,
  each with a new token: the first at start, the next ones on the cadence it set, or on a grid
  ``phase + k * interval`` when the caller gives a phase (a pool lines its members up so that
  many ping in one burst; the second ping then comes up to an interval early). A reply to *any*
  ping of the current run proves the heart alive at the moment it is read, so a reply that was
  delayed past the next ping still counts as life; its round trip is measured against its own
  ping, never the newest one (``Beat.stale`` says which it answered).
- ``since`` is the last sign of life the heart cannot be blamed for missing: the latest of the
  last reply, the end of the grace (start + fb) and the end of the monitor's own last stall.
  Death is a *ping* left unanswered, not a gap between replies: the heart is dead when the
  first ping sent at or after ``since`` has waited ttd for an answer, and the second one
  ttd - interval (the time it would have waited had it gone out on time). Hence a heart whose
  every reply comes within ttd of its ping is never dead, whatever its round trips do; one
  lost ping is no death while the next is answered within ttd - interval; no death comes
  before since + ttd, and a silent heart is dead at most ttd + interval after ``since``, plus
  the caller's scheduling delay.
- Late: the first ping since ``since`` has waited half of ttd (halfway to death); only a reply
  clears it.
- A timer that fires more than ``stall_after`` after the time the Judge asked for means the
  caller's loop (or process) stalled; a call before it does nothing. The time it could not
  observe is not the heart's fault: ``since`` moves to now and a fresh ping goes out, so the
  heart gets a full ttd.
  ``stall_after`` is (ttd - interval) / 2 (see docs/how-it-decides.md for why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from heartbeat import _validate

# How many sent pings keep their send time for round-trip measurement. A reply to an older
# ping still proves life; it only goes without an RTT.
_RTT_WINDOW = 64


class State(str, Enum):
    """Where a monitored heart stands."""

    IDLE = "idle"
    STARTING = "starting"
    BEATING = "beating"
    LATE = "late"
    DEAD = "dead"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Ping:
    """Send a ping carrying ``token`` now."""

    token: int


@dataclass(frozen=True)
class Beat:
    """A reply arrived. ``rtt`` is None when its ping is too old to remember."""

    token: int
    rtt: float | None
    stale: bool


@dataclass(frozen=True)
class Stall:
    """The caller woke ``late_by`` seconds after the time asked: that time was not counted."""

    late_by: float


@dataclass(frozen=True)
class Dead:
    """The heart is dead: nothing was heard from it for ``silent_for`` seconds."""

    silent_for: float


@dataclass(frozen=True)
class StateChanged:
    """The state went from ``old`` to ``new``."""

    old: State
    new: State


Event = Ping | Beat | Stall | Dead | StateChanged


def on_grid(t: float, step: float, origin: float = 0.0, *, after: bool = False) -> float:
    """The first point ``origin + k * step`` at or after ``t`` (strictly after, with ``after``).

    Never earlier than ``t``, whatever the float rounding of the division.
    """
    point = origin + math.ceil((t - origin) / step) * step
    if point < t or (after and point == t):
        point += step
    return point


_WATCHING = (State.STARTING, State.BEATING, State.LATE)


class Judge:
    """Decides, from times and events alone, whether a heart is alive.

    >>> judge = Judge(time_to_dead=3.0, first_beat=5.0)
    >>> judge.start(100.0)
    [StateChanged(old=<State.IDLE: 'idle'>, new=<State.STARTING: 'starting'>), Ping(token=1)]
    >>> judge.on_reply(100.002, 1)  # doctest: +ELLIPSIS
    [StateChanged(...), Beat(token=1, rtt=0.00..., stale=False)]
    >>> judge.next_deadline
    101.5
    """

    # __slots__: a process watching 10,000 kernels holds 10,000 of these, touched every beat.
    __slots__ = (
        "_first",
        "_first_beat",
        "_grace",
        "_interval",
        "_last_reply",
        "_next_ping",
        "_phase",
        "_second",
        "_sent",
        "_since",
        "_stall_after",
        "_stalls",
        "_started",
        "_state",
        "_time_to_dead",
        "_token",
        "_wake_asked",
    )

    def __init__(
        self, time_to_dead: float = 3.0, first_beat: float = 5.0, interval: float | None = None
    ) -> None:
        self._time_to_dead = _validate.number("time_to_dead", time_to_dead)
        self._first_beat = _validate.number("first_beat", first_beat, allow_zero=True)
        if interval is None:
            self._interval = self._time_to_dead / 2
        else:
            self._interval = _validate.interval(interval, self._time_to_dead)
        self._stall_after = (self._time_to_dead - self._interval) / 2
        self._state = State.IDLE
        self._stalls = 0
        self._started = 0.0
        self._grace = self._first_beat
        self._since = 0.0
        self._last_reply: float | None = None
        # When the first and second pings sent at or after _since went out (None: not yet).
        self._first: float | None = None
        self._second: float | None = None
        self._next_ping = 0.0
        self._phase: float | None = None
        self._wake_asked = 0.0
        self._token = 0
        self._sent: dict[int, float] = {}

    @property
    def time_to_dead(self) -> float:
        """Seconds a ping may wait for its answer (after the grace) before the heart is dead."""
        return self._time_to_dead

    @property
    def first_beat(self) -> float:
        """Seconds of grace after ``start()``."""
        return self._first_beat

    @property
    def interval(self) -> float:
        """Seconds between pings."""
        return self._interval

    @property
    def stall_after(self) -> float:
        """How late a timer may fire before it counts as the caller's own stall."""
        return self._stall_after

    @property
    def state(self) -> State:
        """Where the heart stands."""
        return self._state

    @property
    def stalls(self) -> int:
        """How many times the caller's own stalls were forgiven in this run."""
        return self._stalls

    @property
    def next_deadline(self) -> float | None:
        """When ``on_timer`` should next be called, or None when not watching."""
        if self._state not in _WATCHING:
            return None
        return self._deadline()

    @property
    def last_reply(self) -> float | None:
        """When the last reply of this run was read, or None."""
        return self._last_reply

    def start(
        self, now: float, phase: float | None = None, grace: float | None = None
    ) -> list[Event]:
        """Begin a fresh run (also after a death or a stop): grace starts now.

        ``grace``: seconds of grace for this run instead of ``first_beat`` (0: a heart already
        found silent, watched on, is judged again after ``time_to_dead``).

        The first ping goes out now. With ``phase`` (any time, in the same clock), every later
        ping is due on the grid ``phase + k * interval``, so callers that give many judges one
        phase get their pings in one burst; without it, every ``interval`` from now.
        """
        if phase is not None and not (isinstance(phase, float | int) and math.isfinite(phase)):
            raise TypeError(f"phase must be a finite number of seconds or None, got {phase!r}")
        if grace is not None:
            grace = _validate.number("grace", grace, allow_zero=True)
        self._phase = phase
        self._started = now
        self._grace = self._first_beat if grace is None else grace
        self._last_reply = None
        self._move_since(now + self._grace)
        self._token = 0
        self._sent.clear()
        self._stalls = 0
        self._next_ping = now
        events = self._become(State.STARTING)
        events.append(self._ping(now))
        self._wake_asked = self._deadline()
        return events

    def stop(self) -> list[Event]:
        """End the run; nothing is judged after this."""
        if self._state not in _WATCHING:
            return []  # idle, stopped, or dead: a death stays on the record
        return self._become(State.STOPPED)

    def on_reply(self, now: float, token: int) -> list[Event]:
        """A reply carrying ``token`` was read at ``now``. Unknown tokens are ignored."""
        if self._state not in _WATCHING or not 1 <= token <= self._token:
            return []
        sent = self._sent.pop(token, None)
        self._last_reply = now
        if now >= self._since:  # a reply inside the grace leaves the grace as it is
            self._move_since(now)
        events = self._become(State.BEATING)
        # next_deadline is unchanged: the next ping is never due after the late or dead time
        # of a ping already sent, so a reply only pushes back times that were not the earliest.
        rtt = None if sent is None else max(0.0, now - sent)
        events.append(Beat(token, rtt, stale=token != self._token))
        return events

    def on_timer(self, now: float) -> list[Event]:
        """The caller's timer fired; call it after reading every reply already received.

        A call before ``next_deadline`` (a timer set before a reply moved it) does nothing.
        """
        if self._state not in _WATCHING or now < self._wake_asked:
            return []
        events: list[Event] = []
        late_by = now - self._wake_asked
        if late_by > self._stall_after:
            # The caller could not observe the heart, nor ping it, for late_by seconds.
            self._stalls += 1
            if now >= self._since:
                self._move_since(now)
            self._next_ping = now
            events.append(Stall(late_by))
        elif now >= self._dead_at():
            silent_for = now - (self._started if self._last_reply is None else self._last_reply)
            events += self._become(State.DEAD)
            events.append(Dead(silent_for))
            return events
        if now >= self._next_ping:
            events.append(self._ping(now))
        events += self._become(self._judged_state(now))
        self._wake_asked = self._deadline()
        return events

    def _judged_state(self, now: float) -> State:
        if self._last_reply is None:
            return State.STARTING if now < self._started + self._grace else State.LATE
        if self._state is State.LATE:
            return State.LATE  # only a reply clears it: a forgiven stall is no sign of life
        # Counted from the same ping as death, so the monitor's own stall never makes it late.
        return State.LATE if now >= self._late_at() else State.BEATING

    def _move_since(self, t: float) -> None:
        # Pings sent before the new ``since`` no longer decide anything: the heart has been
        # heard from (or forgiven) since they went out.
        self._since = t
        self._first = self._second = None

    def _dead_at(self) -> float:
        """When the pings sent since ``since`` have waited long enough to mean death."""
        if self._first is None:
            return math.inf  # no ping has gone out since: nothing is overdue yet
        dead_at = self._first + self._time_to_dead
        if self._second is not None:
            # Had the second ping gone out on time, one interval after the first, it would
            # have had ttd - interval by the first one's deadline; a late one gets no less.
            dead_at = max(dead_at, self._second + self._time_to_dead - self._interval)
        return dead_at

    def _late_at(self) -> float:
        return math.inf if self._first is None else self._first + self._time_to_dead / 2

    def _deadline(self) -> float:
        deadline = min(self._next_ping, self._dead_at())
        if self._state is State.BEATING:
            # Wake when the heart turns late too, so the state is never stale for long.
            deadline = min(deadline, self._late_at())
        return deadline

    def _ping(self, now: float) -> Ping:
        if now >= self._since:
            if self._first is None:
                self._first = now
            elif self._second is None:
                self._second = now
        self._token += 1
        self._sent[self._token] = now
        if len(self._sent) > _RTT_WINDOW:
            del self._sent[next(iter(self._sent))]
        if self._phase is None:
            # Keep the cadence when a timer runs a little late, so pings do not drift apart.
            self._next_ping += self._interval
            if self._next_ping <= now:
                self._next_ping = now + self._interval
        else:
            # The first point of the caller's grid after now, however late this ping went out.
            self._next_ping = on_grid(now, self._interval, self._phase, after=True)
        return Ping(self._token)

    def _become(self, new: State) -> list[Event]:
        old, self._state = self._state, new
        return [] if old is new else [StateChanged(old, new)]
