"""Why a kernel died, decided from plain data (sans-IO, as ``heartbeat._judge``).

Nothing here reads a file, a clock or a socket. The caller gives what it could learn (the
process's exit status as ``Popen.returncode`` has it, the text of ``/proc/<pid>/stat``, the text
of the kernel's memory cgroup files last read while it lived and at its death, the victims the
kernel log named, what the heart's connection said) and gets a :class:`Cause` back;
``heartbeat.jupyter._proc`` does the reading (``heartbeat._evidence`` parses the rest). What a
cause says in words (``Cause.describe``) is ``heartbeat._cause_words``.
"""

from __future__ import annotations

import dataclasses
import enum
import signal
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from heartbeat import _cause_words, _evidence
from heartbeat._cause_words import signal_name, size
from heartbeat._evidence import Evidence, Memory, memory, memory_cgroup, stat_state

__all__ = [
    "Cause",
    "Connection",
    "Death",
    "Evidence",
    "Memory",
    "decide",
    "memory",
    "memory_cgroup",
    "signal_name",
    "size",
    "stat_state",
]

Kind = Literal[
    "exited",
    "signal",
    "oom",
    "frozen",
    "stopped",
    "remote-refused",
    "remote-silent",
    "remote-unreachable",
    "unresponsive",
    "unknown",
]


class Connection(str, enum.Enum):
    """What a plain TCP connect to a remote heart's port said (the adapter probes; see
    ``heartbeat.jupyter._proc.probe_heart``)."""

    REFUSED = "refused"  # nothing listens there: its process is gone
    SILENT = "silent"  # it connects, yet the heart does not answer
    UNREACHABLE = "unreachable"  # host or network unreachable, or the connect timed out

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Cause:
    """Why a kernel died. ``likely`` is True where this is inferred rather than seen;
    ``evidence`` says what it rests on where more than one thing could (:data:`Evidence`).

    ``never_answered``: its heart had never answered since the kernel started, though it was
    judged (a start slower than the grace, that ended); ``language``: the kernel's language,
    where known (``kernel_info_reply``), so that a frozen R kernel is not said to be stuck
    below Python.
    """

    kind: Kind
    exit_code: int | None = None
    signal: int | None = None
    silence: float | None = None
    memory_limit: int | None = None
    likely: bool = False
    evidence: Evidence | None = None
    never_answered: bool = False
    language: str | None = None
    asked: bool = False  # see asked_for
    # Where a crash happened: the Python frames the kernel's faulthandler wrote, innermost first.
    where: str | None = None
    # For an out-of-memory kill: the most its kernel was seen to use, and how many other
    # processes its memory cgroup held at its death (heartbeat.jupyter._memory_watch).
    memory_peak: int | None = None
    memory_others: int | None = None
    memory_peak_exact: bool = False  # the peak is its own cgroup's, not sampled

    @property
    def asked_for(self) -> bool:
        """True for an end a running kernel made itself, cleanly: exit code 0 after its heart
        had answered (``exit()`` or ``quit()`` in a cell, say; a crash never exits 0). It ended
        as asked: no death. (A kernel that exits 0 before it ever answered failed to start.)"""
        return self.asked

    @property
    def signal_name(self) -> str | None:
        """The signal's name (``SIGKILL``), or None."""
        return None if self.signal is None else signal_name(self.signal)

    def describe(self) -> str:
        """The cause in words, to follow "the kernel" or "it": "was killed by SIGKILL (9)"."""
        return _cause_words.describe(self)


def decide(
    *,
    returncode: int | None,
    state: str | None = None,
    local: bool = True,
    silence: float | None = None,
    memory_before: Memory | None = None,
    memory_now: Memory | None = None,
    shared: bool | None = None,
    pid: int | None = None,
    descendants: Collection[int] = (),
    oom_victims: Collection[int] | None = None,
    descendant_states: Collection[str] = (),
    connection: Connection | None = None,
    answered: bool = False,
    never_answered: bool = False,
    language: str | None = None,
) -> Cause:
    """The cause of a kernel's death, from what could be learned of it.

    ``returncode``: the exit status as ``Popen.returncode`` has it (negative: killed by that
    signal; 128 + N: likely signal N, as a shell or another wrapper that does not ``exec``
    reports one), None when the process has not exited or is not ours. ``state``: the state
    letter of its process (:func:`stat_state`), if read; ``descendant_states``: those of the
    processes under it (the kernel behind a wrapper). ``local``: whether the process is our
    child at all; for one that is not, ``connection`` says what its heart's port answered.
    ``silence``: for a heart death, how long the heart was silent.

    What tells a SIGKILL from the out-of-memory killer's: ``oom_victims``, the pids the kernel
    log named as its victims since the kernel started (None: the log was not read), against
    ``pid``, the kernel's process (behind a wrapper: its ``descendants`` too, seen while it
    lived). The log naming it: the OOM killer, certain (behind a wrapper, whatever its exit
    code); naming others only: not the OOM killer. Else the kernel's memory cgroup's counters
    (:func:`memory`) sampled last while it lived (``memory_before``) and now (``memory_now``),
    with ``shared``: whether other processes were in that cgroup then (None: not known). A
    count risen since is this death only when nothing else could have been the victim (the
    kernel alone there): otherwise it is only likely, as is anything behind a wrapper's exit
    code.
    ``answered``: whether its heart had answered: a running kernel that exits with code 0
    ended itself as asked (``Cause.asked_for``).
    ``never_answered``: its heart never answered since it started; ``language``: the kernel's
    (``kernel_info_reply``'s ``language_info.name``), if known. Both are only carried.
    """
    if language is not None and not isinstance(language, str):
        raise TypeError(f"language must be a str or None, not {language!r}")
    cause = _decide(
        returncode=returncode,
        state=state,
        local=local,
        silence=silence,
        memory_before=memory_before,
        memory_now=memory_now,
        shared=shared,
        pid=pid,
        descendants=descendants,
        oom_victims=oom_victims,
        descendant_states=descendant_states,
        connection=connection,
        answered=answered,
    )
    if never_answered or language is not None:
        return dataclasses.replace(cause, never_answered=bool(never_answered), language=language)
    return cause


def _decide(
    *,
    returncode: int | None,
    state: str | None,
    local: bool,
    silence: float | None,
    memory_before: Memory | None,
    memory_now: Memory | None,
    shared: bool | None,
    pid: int | None,
    descendants: Collection[int],
    oom_victims: Collection[int] | None,
    descendant_states: Collection[str],
    connection: Connection | None,
    answered: bool,
) -> Cause:
    if returncode is not None and (isinstance(returncode, bool) or not isinstance(returncode, int)):
        raise TypeError(f"returncode must be an int or None, not {returncode!r}")
    if silence is not None and not silence >= 0:
        raise ValueError(f"silence must be a number >= 0 or None, not {silence!r}")
    if connection is not None and not isinstance(connection, Connection):
        raise TypeError(f"connection must be a Connection or None, not {connection!r}")
    if shared is not None and not isinstance(shared, bool):
        raise TypeError(f"shared must be a bool or None, not {shared!r}")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
        raise TypeError(f"pid must be an int or None, not {pid!r}")
    descendants = _evidence.pid_set("descendants", descendants)
    victims = None if oom_victims is None else _evidence.pid_set("oom_victims", oom_victims)
    if returncode is not None:
        wrapped = _evidence.wrapped_signal(returncode)
        if returncode >= 0 and wrapped is None:
            if victims and victims & descendants:
                # A wrapper that says nothing of how what it ran ended (a shell script whose
                # last command succeeded): the kernel log names what it ran.
                limit = None if memory_now is None else memory_now.limit
                return Cause(
                    "oom",
                    exit_code=returncode,
                    signal=signal.SIGKILL,
                    silence=silence,
                    memory_limit=limit,
                    evidence="kernel-log",
                )
            asked = returncode == 0 and answered is True
            return Cause("exited", exit_code=returncode, silence=silence, asked=asked)
        number = -returncode if wrapped is None else wrapped
        code = None if wrapped is None else returncode
        if number == signal.SIGKILL:
            evidence = _evidence.oom(
                memory_before,
                memory_now,
                shared,
                pid,
                descendants,
                victims,
                wrapped=wrapped is not None,
            )
            if evidence is not None:
                how, likely = evidence
                limit = None if memory_now is None else memory_now.limit
                return Cause(
                    "oom",
                    exit_code=code,
                    signal=number,
                    silence=silence,
                    memory_limit=limit,
                    likely=likely,
                    evidence=how,
                )
        if wrapped is not None:
            return Cause(
                "signal",
                exit_code=code,
                signal=number,
                silence=silence,
                likely=True,
                evidence="exit-code",
            )
        return Cause("signal", signal=number, silence=silence)
    if not local:
        kinds: dict[Connection | None, Kind] = {
            Connection.REFUSED: "remote-refused",
            Connection.SILENT: "remote-silent",
            Connection.UNREACHABLE: "remote-unreachable",
        }
        kind = kinds.get(connection, "unknown")
        return Cause(kind, silence=silence, likely=kind != "unknown")
    if state in ("Z", "X"):
        return Cause("exited", silence=silence)
    if state in ("T", "t"):
        return Cause("stopped", silence=silence)
    if silence is not None and any(s in ("T", "t") for s in descendant_states):
        # Its own process runs (a wrapper waiting), one under it is stopped: the kernel it
        # wraps, most likely, whose heart it is that is silent.
        return Cause("stopped", silence=silence, likely=True, evidence="descendant")
    if silence is not None:
        # Our child, not exited, its heart silent: whatever it is doing, it is not answering.
        return Cause("frozen", silence=silence, likely=True)
    return Cause("unknown")


@dataclass(frozen=True)
class Death:
    """One kernel death, as a kernel manager records it (``last_death``) and logs it (the
    death line's ``extra["heartbeat_death"]``).

    ``time`` is wall-clock seconds (``time.time()``), for people; ``pid`` the process that died
    (None when it was not ours); ``restarting`` whether it is being restarted.
    """

    kernel_id: str | None
    cause: Cause
    time: float
    pid: int | None = None
    restarting: bool = False

    @property
    def exit_code(self) -> int | None:
        """The process's exit code, when it exited."""
        return self.cause.exit_code

    @property
    def signal(self) -> int | None:
        """The signal that killed the process, when one did."""
        return self.cause.signal

    @property
    def silence(self) -> float | None:
        """Seconds the heart was silent; None for a death seen by the process's exit."""
        return self.cause.silence

    def notice(self) -> str:
        """The death in one sentence for the person whose cell was running: "The kernel was
        killed by SIGKILL (9). Restarting it." """
        then = "Restarting it." if self.restarting else "It is not restarted."
        return f"The kernel {self.cause.describe()}. {then}"
