"""Whether a kernel whose heart beats still answers, decided from plain data (sans-IO, as
``heartbeat._judge``).

A heart says the kernel's process is there; it does not say the kernel answers: ipykernel's
heart is a C thread that echoes pings while the kernel's Python is stuck. So the caller asks the
kernel something cheap on its control channel (``kernel_info_request``) and tells
:class:`Responsiveness` what happened and when (monotonic seconds): each reply, each tick with
the process's CPU time and its main thread's state. It answers with plain events: send a
probe, the kernel is unresponsive (once an episode), it answers again.

The rules (``after`` = ``unresponsive_after``):

- One probe is outstanding at a time: the next goes out ``probe_every`` after a reply (at most
  after / 4, so that a kernel that stops answering is asked within a quarter of the bound), and
  an unanswered one is sent again every ``after`` (a probe lost to a reconnect must not leave the
  kernel unasked). A reply to *any* probe is an answer at the moment it is read.
- The silence is measured from the *first unanswered ask*, not from the last answer: a kernel is
  unresponsive once a probe has waited ``after`` without any reply. It is reported once; when a
  reply comes, :class:`Answering` says for how long it was unresponsive.
- What it is doing decides the kind: its process gained CPU time over the silence at a rate of
  at least ``busy_share`` of one core: ``native`` (its main thread computing in a native call that
  holds the GIL: ipykernel's control thread cannot run either), measured from its first reading
  while the ask waited (``needs_process``: a kernel that answers is not read); less: ``hung``
  (waiting on something that never comes); its CPU time not known (not ours): ``silent``.
- A kernel whose control is answered from its main loop (not from a thread of its own) is silent
  while a cell runs, rightly: it is judged only while it is known to be idle (``running``
  False; unknown is not idle), its silence counted from the later of the ask and the moment it
  was first seen idle (a reply may trail the idle status).
- A kernel that has never answered on its control channel (``answers_from`` None) is not judged
  at all: some never do (IRkernel does not answer ``kernel_info_request`` there), and silence
  from a kernel that never spoke says nothing.
- With ``give_up_after`` (a setting; None: never), a kernel still unresponsive that long (its
  silence counted as above, never less than ``after``) is given up on, once: :class:`GiveUp`.
- A tick that comes more than ``stall_after`` after the last means the caller's loop stalled:
  a reply may be waiting unread, so that tick only starts a fresh probe's clock (the time the
  caller could not see is not the kernel's fault, as the Judge forgives its own stalls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from heartbeat import _validate

Kind = Literal["hung", "native", "silent"]
AnswersFrom = Literal["own-thread", "main-loop"]

#: CPU seconds a second (of one core) from which a silent kernel counts as computing.
BUSY_SHARE = 0.2


@dataclass(frozen=True)
class Probe:
    """Send a probe (a ``kernel_info_request`` on the control channel) now."""


@dataclass(frozen=True)
class Unresponsive:
    """The kernel has not answered for ``silent_for`` seconds: reported once an episode."""

    silent_for: float
    kind: Kind
    cpu_share: float | None  # CPU seconds a second over the silence; None: not known
    main_state: str | None  # the main thread's state letter (R, S, D...) now; None: not known

    def describe(self) -> str:
        """What it is doing, in words, to follow "it has not answered for N s:"."""
        cpu = "" if self.cpu_share is None else f"CPU {self.cpu_share:.0%} of a core"
        state = (
            ""
            if self.main_state is None
            else f"main thread {_STATES.get(self.main_state, self.main_state)}"
        )
        facts = ", ".join(part for part in (cpu, state) if part)
        facts = f" ({facts})" if facts else ""
        if self.kind == "native":
            return (
                f"busy in native code{facts}: a call holding the GIL, which an interrupt may "
                "not stop until it returns"
            )
        if self.kind == "silent":
            return f"not answering{facts} (what it is doing cannot be read from here)"
        return f"hung{facts}: not computing, waiting on something that does not come"


@dataclass(frozen=True)
class GiveUp:
    """It has not answered for ``silent_for`` seconds, past ``give_up_after``: end it (asked
    for by a setting; once an episode, after its :class:`Unresponsive`)."""

    silent_for: float
    report: Unresponsive


@dataclass(frozen=True)
class Answering:
    """The kernel answers again, after ``silent_for`` seconds of silence."""

    silent_for: float


Event = Probe | Unresponsive | GiveUp | Answering

_STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "in uninterruptible wait",
    "T": "stopped",
    "t": "stopped by a debugger",
    "Z": "gone",
}


def probe_every(unresponsive_after: float) -> float:
    """Seconds between probes for a bound: a quarter of it, within 0.25 to 5 s."""
    return min(5.0, max(0.25, unresponsive_after / 4))


class Responsiveness:
    """The decision for one run of one kernel (see the module's rules). ``wake_at`` says when
    the caller should call :meth:`tick` next."""

    def __init__(
        self,
        unresponsive_after: float,
        *,
        give_up_after: float | None = None,
        busy_share: float = BUSY_SHARE,
    ) -> None:
        self.after = _validate.number("unresponsive_after", unresponsive_after)
        self.give_up_after = None
        if give_up_after is not None:
            self.give_up_after = max(self.after, _validate.number("give_up_after", give_up_after))
        self._given_up = False
        self.busy_share = _validate.number("busy_share", busy_share)
        self.every = probe_every(self.after)
        # Twice the ticking period and a second more: later than this, the caller stalled.
        self.stall_after = 2 * self.every + 1.0
        self.answers_from: AnswersFrom | None = None
        self._last_tick: float | None = None
        self._asked: float | None = None  # the first unanswered ask's time
        # The process's CPU seconds, and when they were read, first read while an ask waits.
        self._cpu_at: tuple[float, float] | None = None
        self._last_sent: float | None = None
        self._next_probe = 0.0
        self._idle_since: float | None = None  # seen idle since (for a main-loop kernel)
        self.reported: Unresponsive | None = None

    @property
    def wake_at(self) -> float:
        """When to tick next (monotonic seconds)."""
        due = self._next_probe
        if self._asked is not None and self.reported is None:
            due = min(due, self._asked + self.after)
        if self._last_tick is not None:
            due = min(due, self._last_tick + self.every)
        return due

    def start(self, now: float, answers_from: AnswersFrom | None = None) -> list[Event]:
        """Begin: probe at once. ``answers_from``: what the kernel is known to be already
        (from an earlier run of it), else learned from its replies (:meth:`answered`)."""
        self.answers_from = answers_from
        self._last_tick = now
        return self._probe(now, None)

    def answered(self, now: float, answers_from: AnswersFrom | None = None) -> list[Event]:
        """A reply to one of the probes was read at ``now``. ``answers_from``, when the reply
        (or when it came) tells where the kernel's control is answered."""
        if answers_from is not None and self.answers_from != "own-thread":
            self.answers_from = answers_from  # once seen answering from its own thread, it does
        reported, asked = self.reported, self._asked
        self.reported = None
        self._given_up = False
        self._asked = self._cpu_at = None
        self._next_probe = now + self.every
        if reported is not None and asked is not None:
            return [Answering(now - asked)]
        return []

    def tick(
        self,
        now: float,
        cpu: float | None = None,
        main_state: str | None = None,
        *,
        running: bool | None = None,
    ) -> list[Event]:
        """The caller's tick, having read every reply already received: the process's CPU
        seconds so far (``cpu``) and its main thread's state letter now, and whether a cell is
        known to run (``running``; None: not known)."""
        last, self._last_tick = self._last_tick, now
        if running is False:
            if self._idle_since is None:
                self._idle_since = now
        else:
            self._idle_since = None
        if last is not None and now - last > self.stall_after:
            # Our stall: whatever was asked before it may be answered and unread. Ask afresh.
            self._asked = self._cpu_at = None
            self.reported = None
            return self._probe(now, cpu)
        events: list[Event] = []
        if self._asked is None:
            if now >= self._next_probe:
                events += self._probe(now, cpu)
            return events
        if self._cpu_at is None and cpu is not None:
            self._cpu_at = (now, cpu)  # not read when asked: counted from now on
        silent = now - self._asked
        if self.reported is None and self._judged(now) >= self.after:
            gained = None
            if cpu is not None and self._cpu_at is not None and now > self._cpu_at[0]:
                gained = max(0.0, cpu - self._cpu_at[1]) / (now - self._cpu_at[0])
            kind: Kind = (
                "silent" if gained is None else "native" if gained >= self.busy_share else "hung"
            )
            self.reported = Unresponsive(silent, kind, gained, main_state)
            events.append(self.reported)
        give_up = self.give_up_after
        if (
            self.reported is not None
            and give_up is not None
            and not self._given_up
            and self._judged(now) >= give_up
        ):
            self._given_up = True
            events.append(GiveUp(silent, self.reported))
        if self._last_sent is not None and now - self._last_sent >= self.after:
            events.append(Probe())  # sent again; the silence still counts from the first
            self._last_sent = now
        return events

    def _judged(self, now: float) -> float:
        # For how long its silence counts (an ask is outstanding).
        assert self._asked is not None
        if self.answers_from == "own-thread":
            return now - self._asked
        if self.answers_from is None:
            return 0.0  # it never answered here: its silence says nothing
        # Its control waits for its main loop: silent while a cell runs, rightly.
        if self._idle_since is None:
            return 0.0
        return now - max(self._asked, self._idle_since)

    @property
    def needs_process(self) -> bool:
        """Whether the next tick needs the process's CPU time and state: only while an ask
        waits (a kernel that answers costs no read of its process)."""
        return self._asked is not None

    def _probe(self, now: float, cpu: float | None) -> list[Event]:
        self._asked = self._last_sent = now
        self._cpu_at = None if cpu is None else (now, cpu)
        self._next_probe = now + self.every
        return [Probe()]


def stat_cpu(text: str, ticks_per_second: float) -> float:
    """CPU seconds (user and system) in the text of ``/proc/<pid>/stat`` (or a thread's)."""
    if not isinstance(text, str):
        raise TypeError(f"stat text must be a str, not {type(text).__name__}")
    head, paren, rest = text.rpartition(")")
    fields = rest.split()
    # After the command: state (field 3) ... utime (14), stime (15).
    if not paren or "(" not in head or len(fields) < 13:
        raise ValueError(f"not the text of /proc/<pid>/stat: {text[:80]!r}")
    return (int(fields[11]) + int(fields[12])) / ticks_per_second
