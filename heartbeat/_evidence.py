"""What a death's cause rests on, from the text of system files (sans-IO, as
``heartbeat._cause``, which decides from it): a process's state and whether it is dying
(``/proc/<pid>/stat``), its memory cgroup and that cgroup's counters and processes, the victims
the kernel log (``/dev/kmsg``) names; and what these say of a SIGKILL (:func:`oom`).
``heartbeat.jupyter._proc`` and ``heartbeat.jupyter._kmsg`` do the reading.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

#: What a cause rests on, where more than one thing could: ``kernel-log`` (the kernel log named
#: the process as the out-of-memory killer's victim), ``cgroup`` (its memory cgroup counted an
#: out-of-memory kill since it was last seen alive, and held nothing else), ``cgroup-shared``
#: (the same, but other processes were in that cgroup: one of them may have been the victim),
#: ``cgroup-unknown-before`` (a kill counted, but no count from while it lived to compare),
#: ``exit-code`` (an exit code 128 + N read as signal N), ``descendant`` (a process under the
#: kernel's own, not its own, was stopped).
Evidence = Literal[
    "kernel-log", "cgroup", "cgroup-shared", "cgroup-unknown-before", "exit-code", "descendant"
]

# The highest signal number on Linux (SIGRTMAX).
_MAX_SIGNAL = 64

# A memory limit this high is the kernel's way of saying "none" (cgroup v1 writes the largest
# page-aligned 64-bit number).
_NO_LIMIT = 1 << 62


# A task's flag (include/linux/sched.h) set early in do_exit(): it is exiting.
_PF_EXITING = 0x4
_KILL_BIT = 1 << (signal.SIGKILL - 1)

# The out-of-memory killer's line, the same since Linux 2.6 whatever the constraint (cgroup:
# "Memory cgroup out of memory: Killed process 4242 (python) total-vm:...", or global).
_KILLED = re.compile(r"\bKilled process (\d+) \(")


@dataclass(frozen=True)
class ProcessStat:
    """What ``/proc/<pid>/stat`` says of a process: its state letter, its flags, and the
    signals pending on its main thread."""

    state: str
    flags: int
    pending: int

    @property
    def dying(self) -> bool:
        """True once it is being killed or exiting: a zombie, exiting, or SIGKILL pending
        (which the out-of-memory killer sends the moment it counts its kill)."""
        return self.state in ("Z", "X") or bool(self.flags & _PF_EXITING | self.pending & _KILL_BIT)


def process_stat(text: str) -> ProcessStat:
    """The state, flags and pending signals in the text of ``/proc/<pid>/stat``."""
    if not isinstance(text, str):
        raise TypeError(f"stat text must be a str, not {type(text).__name__}")
    # The fields follow the command name, which is in parentheses and may hold anything:
    # state, ppid, pgrp, session, tty, tpgid, flags (the 9th field), ... signal (the 31st).
    head, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or "(" not in head or len(fields) < 29 or len(fields[0]) != 1:
        raise ValueError(f"not the text of /proc/<pid>/stat: {text[:80]!r}")
    try:
        return ProcessStat(fields[0], int(fields[6]), int(fields[28]))
    except ValueError:
        raise ValueError(f"not the text of /proc/<pid>/stat: {text[:80]!r}") from None


def pids(text: str) -> frozenset[int]:
    """The pids listed one a line (``cgroup.procs``, ``/proc/<pid>/task/<tid>/children``, which
    separates them by spaces)."""
    if not isinstance(text, str):
        raise TypeError(f"a pid list must be a str, not {type(text).__name__}")
    try:
        return frozenset(int(word) for word in text.split())
    except ValueError:
        raise ValueError(f"not a list of pids: {text[:80]!r}") from None


@dataclass(frozen=True)
class LogRecord:
    """One record of ``/dev/kmsg``: its sequence number, and the pid the out-of-memory killer
    says it killed there (None: a line of another kind)."""

    seq: int
    oom_victim: int | None


def kmsg_record(text: str) -> LogRecord:
    """One record as a read of ``/dev/kmsg`` returns it: ``"prio,seq,usec,flags;message"``,
    then continuation lines (the kernel's Documentation/ABI/testing/dev-kmsg). Only the
    kernel's own records (facility 0, which a write from user space never has) name victims."""
    if not isinstance(text, str):
        raise TypeError(f"a kmsg record must be a str, not {type(text).__name__}")
    prefix, semicolon, message = text.partition(";")
    fields = prefix.split(",")
    if not semicolon or len(fields) < 4:
        raise ValueError(f"not a /dev/kmsg record: {text[:80]!r}")
    try:
        prio, seq = int(fields[0]), int(fields[1])
    except ValueError:
        raise ValueError(f"not a /dev/kmsg record: {text[:80]!r}") from None
    found = _KILLED.search(message.split("\n", 1)[0]) if prio >> 3 == 0 else None
    return LogRecord(seq, None if found is None else int(found.group(1)))


@dataclass(frozen=True)
class Memory:
    """A memory cgroup's counters: out-of-memory kills so far, and its limit in bytes (None:
    no limit)."""

    oom_kills: int
    limit: int | None


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


def oom_kills(version: int, events: str) -> int:
    """The out-of-memory kills a memory cgroup has counted, from the text of its
    ``memory.events`` (version 2) or ``memory.oom_control`` (version 1)."""
    if version not in (1, 2):
        raise ValueError(f"cgroup version must be 1 or 2, not {version!r}")
    if not isinstance(events, str):
        raise TypeError("cgroup file contents must be str")
    return _counter(events, "oom_kill", "memory.events" if version == 2 else "memory.oom_control")


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
    kills = oom_kills(version, events)
    text = limit.strip()
    if version == 2 and text == "max":
        return Memory(kills, None)
    try:
        value = int(text)
    except ValueError:
        name = "memory.max" if version == 2 else "memory.limit_in_bytes"
        raise ValueError(f"not a limit in {name}: {limit[:80]!r}") from None
    return Memory(kills, None if value >= _NO_LIMIT else value)


def pid_set(name: str, value: Collection[int]) -> frozenset[int]:
    """``value``, a collection of pids, as a set; a TypeError naming ``name`` if it is not."""
    if isinstance(value, (str, bytes)) or not all(
        isinstance(pid, int) and not isinstance(pid, bool) for pid in value
    ):
        raise TypeError(f"{name} must be a collection of ints, not {value!r}")
    return frozenset(value)


def wrapped_signal(returncode: int) -> int | None:
    """Signal N for an exit code 128 + N (a shell's way, and conda's, to pass a signal on)."""
    number = returncode - 128
    try:
        return int(signal.Signals(number)) if 0 < number <= _MAX_SIGNAL else None
    except ValueError:  # no signal of that number here
        return None


def oom(
    before: Memory | None,
    now: Memory | None,
    shared: bool | None,
    pid: int | None,
    descendants: frozenset[int],
    victims: frozenset[int] | None,
    *,
    wrapped: bool,
) -> tuple[Evidence, bool] | None:
    """Whether the SIGKILL that ended process ``pid`` (``wrapped``: that ended what it ran, of
    ``descendants``, seen while it lived) was the out-of-memory killer's: what says so and
    whether only likely; None: it was not, or nothing says it was. The rules are
    :func:`heartbeat._cause.decide`'s."""
    mine = frozenset(() if pid is None else (pid,))
    ours = mine | descendants if wrapped else mine
    if victims is not None and victims & ours:
        # The kernel log names this very process (behind a wrapper: one it ran).
        return "kernel-log", False
    if victims and (not wrapped or descendants):
        # The log names only others, and the process killed (or those behind the wrapper,
        # seen while they lived) is not among them: killed by someone else.
        return None
    if now is None or now.oom_kills == 0:
        return None
    if before is None:
        return "cgroup-unknown-before", True  # counted, maybe before this kernel started
    if now.oom_kills <= before.oom_kills:
        return None
    if shared is False and not wrapped:
        return "cgroup", False  # nothing else there to have been the victim
    return ("cgroup" if shared is False else "cgroup-shared"), True
