"""What a kernel's silent heart means, from plain data (sans-IO, as ``heartbeat._judge``).

The Judge says when a heart has been silent too long; whether that silence is a *death* depends
on the kernel. ipykernel and xeus answer their heart from a thread of its own, so a silent heart
is a kernel that cannot run at all (stopped, swapped out, deadlocked below the interpreter).
IRkernel answers its heart from the same R loop that runs its cells, so its heart is silent for
as long as a cell runs: that silence is no death. A kernel of unknown kind gets the stock
verdict: silence alone kills nothing; a process that is gone or stopped still is a death.

Nothing here reads a socket, a clock or ``/proc``: the caller says what it knows (the kind of
heart, whether the heart has answered since the kernel started, whether the kernel is its own,
its process's state) and when, and :class:`Silence` answers with a :class:`Decision`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Heart(str, enum.Enum):
    """Whether a kernel's heart answers while the kernel is busy."""

    THREADED = "threaded"  # a thread of its own (ipykernel, xeus): silence is a death
    MAIN_LOOP = "main-loop"  # the kernel's main loop (IRkernel): silent while a cell runs
    UNKNOWN = "unknown"  # not learned (yet): silence alone is no death

    def __str__(self) -> str:
        return self.value


class Process(str, enum.Enum):
    """What is known of the kernel's process when its heart is found silent."""

    RUNNING = "running"  # our local child: not exited, not stopped
    STOPPED = "stopped"  # our local child, stopped (SIGSTOP, a debugger)
    GONE = "gone"  # our local child has exited
    REFUSED = "refused"  # not our child: nothing listens at its heart's port
    UNKNOWN = "unknown"  # not our child, and its port told nothing more

    def __str__(self) -> str:
        return self.value


class Verdict(str, enum.Enum):
    """What a silence is."""

    DEATH = "death"  # the kernel is dead: killed (if ours) and restarted (if so configured)
    STARTING = "starting"  # its heart has never answered and it may still be coming up
    SILENT = "silent"  # silent, but nothing says it is dead: watched on

    def __str__(self) -> str:
        return self.value


#: ``kernel_info_reply``'s ``implementation`` of kernels whose heart is a thread of its own.
#: ipykernel says "ipython"; every xeus kernel (xeus-python, xeus-cling, xeus-r...) runs its
#: heart on a thread of xeus' server, and names itself "xeus-<language>".
_THREADED_NAMES = ("ipython",)
_THREADED_PREFIXES = ("xeus",)
#: Those whose heart is answered from their main loop (IRkernel polls its heart, shell and
#: control sockets in one R loop: its issue #164, "need a separate heartbeat thread?", won't
#: fix).
_MAIN_LOOP_NAMES = ("irkernel",)


def heart_of(implementation: object) -> Heart:
    """The kind of heart a kernel whose ``kernel_info_reply`` names this ``implementation`` has;
    anything not known here (or not a string) is ``UNKNOWN``."""
    if not isinstance(implementation, str):
        return Heart.UNKNOWN
    name = implementation.strip().lower()
    if name in _THREADED_NAMES or name.startswith(_THREADED_PREFIXES):
        return Heart.THREADED
    if name in _MAIN_LOOP_NAMES:
        return Heart.MAIN_LOOP
    return Heart.UNKNOWN


def declared(answers_while_busy: bool | None) -> Heart | None:
    """The kind a setting declares: True, threaded; False, main loop; None: to be learned."""
    if answers_while_busy is None:
        return None
    if not isinstance(answers_while_busy, bool):
        raise TypeError(
            f"answers_while_busy must be True, False or None, not {answers_while_busy!r}"
        )
    return Heart.THREADED if answers_while_busy else Heart.MAIN_LOOP


def verdict(heart: Heart, *, answered: bool, process: Process, owned: bool = True) -> Verdict:
    """What one silence is, the rules in order:

    1. a local process that is gone or stopped: death (whatever the kernel);
    2. a port that refuses, of a kernel whose process is not our child: death (gone), if its
       heart had answered, or if this manager did not start it (it was there before it was
       watched: its death is only told, and undone when it answers);
    3. a heart that has never answered since the kernel started: starting (a slow start, a
       container pulled, a remote kernel scheduled, whose port refuses until it binds);
    4. a heart that answers while its kernel is busy: death (nothing else silences it);
    5. anything else: silent, not dead (a main-loop heart under a long cell, or one not known).
    """
    if process in (Process.GONE, Process.STOPPED):
        return Verdict.DEATH
    if process is Process.REFUSED and (answered or not owned):
        return Verdict.DEATH
    if not answered:
        return Verdict.STARTING
    if heart is Heart.THREADED:
        return Verdict.DEATH
    return Verdict.SILENT


@dataclass(frozen=True)
class Decision:
    """What to do about one silence.

    ``verdict``: what it is. ``new``: the first such verdict since the heart last answered (a
    death to act on and count, a silence to log), rather than the same one again.
    ``watch_on``: go on watching the heart (a new run of its monitor): every verdict but the
    death of a kernel this manager owns (it is killed and restarted or ended; a kernel not ours
    is not, and may answer again). ``silence``: seconds since the heart last answered (or, if it
    never did, since the kernel started).
    """

    verdict: Verdict
    new: bool
    watch_on: bool
    silence: float


class Silence:
    """One kernel's silences, from its start (``now``, monotonic seconds) until it ends.

    ``heart``: its kind, ``UNKNOWN`` until learned (settable); ``owned``: whether this manager
    started it (one it did not is never killed nor restarted, and is alive again once its
    heart answers again).
    """

    def __init__(self, heart: Heart, *, owned: bool, now: float) -> None:
        if not isinstance(heart, Heart):
            raise TypeError(f"heart must be a Heart, not {heart!r}")
        self.heart = heart
        self.owned = bool(owned)
        self.answered = False
        self._since = now  # the last answer, or the start
        self._state: Verdict | None = None  # the verdict of the silence under way

    @property
    def state(self) -> Verdict | None:
        """The verdict of the silence under way, None while the heart answers."""
        return self._state

    def silent(self, now: float, process: Process) -> Decision:
        """The heart was found silent at ``now`` (the Judge's ``Dead``); ``process`` is what is
        known of the kernel's process now."""
        if not isinstance(process, Process):
            raise TypeError(f"process must be a Process, not {process!r}")
        found = verdict(self.heart, answered=self.answered, process=process, owned=self.owned)
        if self._state is Verdict.DEATH:
            found = Verdict.DEATH  # dead until it answers again: one death, told once
        new = found is not self._state
        self._state = found
        watch_on = found is not Verdict.DEATH or not self.owned
        return Decision(found, new, watch_on, max(0.0, now - self._since))

    def wants_port(self) -> bool:
        """For a kernel whose process is not ours: whether what its heart's port says now
        (``REFUSED`` or not) could change the verdict of its silence (rule 2), so that it is
        worth waiting for before :meth:`silent`."""
        if self._state is Verdict.DEATH:
            return False
        if self.answered:
            return self.heart is not Heart.THREADED  # a threaded heart's silence is its death
        return not self.owned  # an owned kernel that never answered is starting, refused or not

    def answered_now(self, now: float) -> tuple[Verdict | None, float]:
        """The heart answered at ``now``: the verdict of the silence it ends (None: there was
        none; ``DEATH``: a kernel not ours, alive again) and how long that silence lasted."""
        ended, self._state = self._state, None
        silence = max(0.0, now - self._since)
        self.answered = True
        self._since = now
        return ended, silence
