"""Why a kernel died, decided from plain data (sans-IO, as ``heartbeat._judge``).

Nothing here reads a file, a clock or a socket. The caller gives what it could learn (the
process's exit status as ``Popen.returncode`` has it, the text of ``/proc/<pid>/stat``, the text
of the kernel's memory cgroup files at its start and at its death, what the heart's connection
said) and gets a :class:`Cause` back; ``heartbeat.jupyter._proc`` does the reading.
"""

from __future__ import annotations

import dataclasses
import enum
import signal
from dataclasses import dataclass
from typing import Literal

Kind = Literal[
    "exited",
    "signal",
    "oom",
    "frozen",
    "stopped",
    "remote-refused",
    "remote-silent",
    "remote-unreachable",
    "unknown",
]

# A memory limit this high is the kernel's way of saying "none" (cgroup v1 writes the largest
# page-aligned 64-bit number).
_NO_LIMIT = 1 << 62


class Connection(str, enum.Enum):
    """What a plain TCP connect to a remote heart's port said (the adapter probes; see
    ``heartbeat.jupyter._proc.probe_heart``)."""

    REFUSED = "refused"  # nothing listens there: its process is gone
    SILENT = "silent"  # it connects, yet the heart does not answer
    UNREACHABLE = "unreachable"  # host or network unreachable, or the connect timed out

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Memory:
    """A memory cgroup's counters: out-of-memory kills so far, and its limit in bytes (None:
    no limit)."""

    oom_kills: int
    limit: int | None


@dataclass(frozen=True)
class Cause:
    """Why a kernel died. ``likely`` is True where this is inferred rather than seen.

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
    never_answered: bool = False
    language: str | None = None
    asked: bool = False  # see asked_for

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
        text = self._describe()
        if self.never_answered:
            return f"{text}, its heart never having answered since it started"
        return text

    def _describe(self) -> str:
        silent = "" if self.silence is None else f" for {self.silence:.1f} s"
        if self.kind == "exited":
            if self.exit_code is None:
                return "had exited (its exit status was not known here)"
            if self.asked_for:
                return "ended itself: it exited with code 0 (exit() or quit() in a cell, say)"
            return f"exited with code {self.exit_code}"
        if self.kind in ("signal", "oom"):
            text = f"was killed by {self.signal_name} ({self.signal})"
            if self.kind == "oom":
                limit = "" if self.memory_limit is None else f" (limit {size(self.memory_limit)})"
                if self.likely:
                    return (
                        f"{text}, likely out of memory: its memory cgroup has recorded an "
                        f"out-of-memory kill{limit}, maybe before this kernel started"
                    )
                text += f": its memory cgroup recorded an out-of-memory kill{limit}"
            return text
        if self.kind == "stopped":
            return (
                "was frozen: its process was stopped (SIGSTOP, or a debugger) "
                f"while its heart was silent{silent}"
            )
        if self.kind == "frozen":
            python = (self.language or "").lower() == "python"
            stuck = "stuck below Python" if python else "stuck"
            return (
                f"was likely frozen: its process ran while its heart was silent{silent} "
                f"({stuck}, swapped out or suspended)"
            )
        if self.kind == "remote-refused":
            return (
                f"was likely gone: its heart was silent{silent} and nothing listens at its port "
                "(connection refused)"
            )
        if self.kind == "remote-silent":
            return (
                f"was likely frozen, or its host stalled: its heart was silent{silent} though its "
                "port accepts connections"
            )
        if self.kind == "remote-unreachable":
            return (
                f"could not be reached: its heart was silent{silent} and no connection to its "
                "host could be made (host or network unreachable)"
            )
        if self.silence is None:
            return "died of a cause not known here"
        return f"died of a cause not known here (its heart was silent{silent})"


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 64`` for a number with no name here."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def size(n: int) -> str:
    """Bytes in words: ``2.0 GiB``, ``64.0 MiB``, ``512 B``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def stat_state(text: str) -> str:
    """The state letter (R, S, D, T, t, Z, X...) in the text of ``/proc/<pid>/stat``."""
    if not isinstance(text, str):
        raise TypeError(f"stat text must be a str, not {type(text).__name__}")
    # The state follows the command name, which is in parentheses and may hold anything.
    head, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or "(" not in head or not fields or len(fields[0]) != 1:
        raise ValueError(f"not the text of /proc/<pid>/stat: {text[:80]!r}")
    return fields[0]


def memory_cgroup(text: str) -> tuple[int, str] | None:
    """Which memory cgroup ``/proc/<pid>/cgroup`` names: (1, path) for a v1 memory hierarchy,
    else (2, path) for the unified one; None when it names neither."""
    if not isinstance(text, str):
        raise TypeError(f"cgroup text must be a str, not {type(text).__name__}")
    unified = None
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            raise ValueError(f"not a line of /proc/<pid>/cgroup: {line!r}")
        number, controllers, path = parts
        if "memory" in controllers.split(","):
            return 1, path
        if number == "0" and controllers == "":
            unified = (2, path)
    return unified


def _counter(text: str, key: str, what: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                break
    raise ValueError(f"no {key!r} count in {what}: {text[:80]!r}")


def memory(version: int, events: str, limit: str) -> Memory:
    """A memory cgroup's counters from its files' text.

    Version 2: ``memory.events`` (its ``oom_kill N`` line) and ``memory.max`` (bytes or
    ``max``). Version 1: ``memory.oom_control`` (its ``oom_kill N`` line) and
    ``memory.limit_in_bytes``.
    """
    if version not in (1, 2):
        raise ValueError(f"cgroup version must be 1 or 2, not {version!r}")
    if not isinstance(events, str) or not isinstance(limit, str):
        raise TypeError("cgroup file contents must be str")
    what = "memory.events" if version == 2 else "memory.oom_control"
    kills = _counter(events, "oom_kill", what)
    text = limit.strip()
    if version == 2 and text == "max":
        return Memory(kills, None)
    try:
        value = int(text)
    except ValueError:
        name = "memory.max" if version == 2 else "memory.limit_in_bytes"
        raise ValueError(f"not a limit in {name}: {limit[:80]!r}") from None
    return Memory(kills, None if value >= _NO_LIMIT else value)


def decide(
    *,
    returncode: int | None,
    state: str | None = None,
    local: bool = True,
    silence: float | None = None,
    memory_at_start: Memory | None = None,
    memory_now: Memory | None = None,
    connection: Connection | None = None,
    answered: bool = False,
    never_answered: bool = False,
    language: str | None = None,
) -> Cause:
    """The cause of a kernel's death, from what could be learned of it.

    ``returncode``: the exit status as ``Popen.returncode`` has it (negative: killed by that
    signal), None when the process has not exited or is not ours. ``state``: the state letter
    of its process (:func:`stat_state`), if read. ``local``: whether the process is our child
    at all; for one that is not, ``connection`` says what its heart's port answered.
    ``silence``: for a heart death, how long the heart was silent. ``memory_at_start`` and
    ``memory_now``: its memory cgroup's counters (:func:`memory`) at its start and now.
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
        memory_at_start=memory_at_start,
        memory_now=memory_now,
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
    memory_at_start: Memory | None,
    memory_now: Memory | None,
    connection: Connection | None,
    answered: bool,
) -> Cause:
    if returncode is not None and (isinstance(returncode, bool) or not isinstance(returncode, int)):
        raise TypeError(f"returncode must be an int or None, not {returncode!r}")
    if silence is not None and not silence >= 0:
        raise ValueError(f"silence must be a number >= 0 or None, not {silence!r}")
    if connection is not None and not isinstance(connection, Connection):
        raise TypeError(f"connection must be a Connection or None, not {connection!r}")
    if returncode is not None and returncode >= 0:
        asked = returncode == 0 and answered is True
        return Cause("exited", exit_code=returncode, silence=silence, asked=asked)
    if returncode is not None:
        number = -returncode
        if number == signal.SIGKILL and memory_now is not None and memory_now.oom_kills > 0:
            if memory_at_start is not None and memory_now.oom_kills > memory_at_start.oom_kills:
                return Cause("oom", signal=number, silence=silence, memory_limit=memory_now.limit)
            if memory_at_start is None:
                # Counted, but maybe before this kernel started: said as likely.
                limit = memory_now.limit
                return Cause("oom", signal=number, silence=silence, memory_limit=limit, likely=True)
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
