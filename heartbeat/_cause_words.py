"""A kernel's cause of death in words (sans-IO, as ``heartbeat._cause``): what the death line
and the cell's notice say of a :class:`~heartbeat._cause.Cause` (``Cause.describe``), and the
signal names and sizes they are said with."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from heartbeat import _memory

if TYPE_CHECKING:
    from heartbeat._cause import Cause

__all__ = ["describe", "signal_name", "size"]


def describe(cause: Cause) -> str:
    """``cause`` in words, to follow "the kernel" or "it" (see ``Cause.describe``)."""
    text = _describe(cause)
    if cause.never_answered:
        return f"{text}, its heart never having answered since it started"
    return text


def _describe(cause: Cause) -> str:
    silent = "" if cause.silence is None else f" for {cause.silence:.1f} s"
    if cause.kind == "exited":
        if cause.exit_code is None:
            return "had exited (its exit status was not known here)"
        if cause.asked_for:
            return "ended itself: it exited with code 0 (exit() or quit() in a cell, say)"
        return f"exited with code {cause.exit_code}"
    if cause.kind in ("signal", "oom"):
        return _killed(cause)
    if cause.kind == "stopped":
        if cause.evidence == "descendant":
            return (
                "was likely frozen: a process under its own (the kernel behind a wrapper) "
                f"was stopped (SIGSTOP, or a debugger) while its heart was silent{silent}"
            )
        return (
            "was frozen: its process was stopped (SIGSTOP, or a debugger) "
            f"while its heart was silent{silent}"
        )
    if cause.kind == "frozen":
        python = (cause.language or "").lower() == "python"
        stuck = "stuck below Python" if python else "stuck"
        return (
            f"was likely frozen: its process ran while its heart was silent{silent} "
            f"({stuck}, swapped out or suspended)"
        )
    if cause.kind == "remote-refused":
        return (
            f"was likely gone: its heart was silent{silent} and nothing listens at its port "
            "(connection refused)"
        )
    if cause.kind == "remote-silent":
        return (
            f"was likely frozen, or its host stalled: its heart was silent{silent} though its "
            "port accepts connections"
        )
    if cause.kind == "unresponsive":
        # Ended by its manager (kill_unresponsive_after): its heart beat, it did not answer.
        return f"did not answer{silent} though its heart beat, and was killed for it"
    if cause.kind == "remote-unreachable":
        return (
            f"could not be reached: its heart was silent{silent} and no connection to its "
            "host could be made (host or network unreachable)"
        )
    if cause.silence is None:
        return "died of a cause not known here"
    return f"died of a cause not known here (its heart was silent{silent})"


def _killed(cause: Cause) -> str:
    named = f"{cause.signal_name} ({cause.signal})"
    if cause.where is not None:
        named += f" at {cause.where}"  # a crash's Python frame, as faulthandler wrote it
    if cause.exit_code is None:
        text = f"was killed by {named}"
    elif cause.exit_code != 128 + (cause.signal or 0):
        text = f"exited with code {cause.exit_code} after what it wraps was killed by {named}"
    else:
        # A wrapper that does not exec (a shell, conda run) exits 128 + N for signal N.
        likely = "" if cause.kind == "oom" and not cause.likely else "likely "
        text = (
            f"exited with code {cause.exit_code}, {likely}killed by {named} behind a "
            f"wrapper (128 + {cause.signal})"
        )
    if cause.kind != "oom":
        return text
    return _out_of_memory(cause, text)


def _out_of_memory(cause: Cause, text: str) -> str:
    # How much the kernel used, where it was seen (heartbeat.jupyter._memory_watch), ends
    # the line and says the limit; else the limit alone is said.
    used = ""
    if cause.memory_peak is not None or cause.memory_others is not None:
        used = _memory.used(
            cause.memory_peak,
            cause.memory_limit,
            cause.memory_others,
            exact=cause.memory_peak_exact,
        )
    return _oom_evidence(cause, text, "" if used else _limit(cause)) + (f": {used}" if used else "")


def _limit(cause: Cause) -> str:
    return "" if cause.memory_limit is None else f" (limit {size(cause.memory_limit)})"


def _oom_evidence(cause: Cause, text: str, limit: str) -> str:
    if cause.evidence == "kernel-log":
        which = "it" if cause.exit_code is None else "the process it wraps"
        return (
            f"{text}, out of memory: the kernel log names {which} as the out-of-memory "
            f"killer's victim{limit}"
        )
    if cause.evidence == "cgroup-unknown-before":
        return (
            f"{text}, likely out of memory: its memory cgroup has recorded an "
            f"out-of-memory kill{limit}, maybe before this kernel started"
        )
    if cause.evidence == "cgroup-shared":
        return (
            f"{text}, likely out of memory: its memory cgroup recorded an out-of-memory "
            f"kill{limit} just before, but other processes share that cgroup"
        )
    recorded = f"its memory cgroup recorded an out-of-memory kill{limit}"
    return f"{text}, likely out of memory: {recorded}" if cause.likely else f"{text}: {recorded}"


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
