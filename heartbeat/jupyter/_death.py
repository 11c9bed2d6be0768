"""Seeing a kernel's death and its cause, for whoever owns the kernel (the kernel managers, the
provisioner): the exit of a local child watched on the loop (a pidfd), what its cause is
decided from, gathered at its start and at its death, and the death recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado.ioloop import IOLoop, PeriodicCallback

from heartbeat import _cause
from heartbeat._cause import Death
from heartbeat._evidence import wrapped_signal
from heartbeat.jupyter._kmsg import oom_log
from heartbeat.jupyter._memory_watch import MemoryGuard
from heartbeat.jupyter._proc import (
    MemoryCgroup,
    descendants,
    memory_cgroup_in,
    memory_cgroup_text,
    read_stat,
    read_state,
)


class ExitWatch:
    """Calls ``callback()`` once on the loop when process ``pid`` exits, through a pidfd
    (Linux 5.3+), readable once the process has exited, reaped or not.

    Made by :func:`watch_exit`, which returns None where no pidfd can be had; the caller then
    keeps jupyter_client's restarter poll (every ``restarter.time_to_dead``, 3 s by default).
    Nothing is ever signalled here: the pidfd is only read for readiness.
    """

    def __init__(self, fd: int, callback: Callable[[], None]) -> None:
        self._fd: int | None = fd
        self._callback = callback
        self._loop = IOLoop.current()
        self._loop.add_handler(fd, self._ready, IOLoop.READ)

    @property
    def closed(self) -> bool:
        """True once it has fired or been closed."""
        return self._fd is None

    def _ready(self, fd: Any, events: int) -> None:
        callback = self._callback
        self.close()  # once: a pidfd stays readable
        callback()

    def close(self) -> None:
        """Remove the handler and close the pidfd; nothing fires afterwards. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._loop.remove_handler(fd)
            os.close(fd)


def watch_exit(pid: int, callback: Callable[[], None]) -> ExitWatch | None:
    """An :class:`ExitWatch` of ``pid`` (our unreaped child: its pid is no one else's), or None
    where pidfds are unavailable (not Linux, Linux before 5.3, or the process already reaped)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd = pidfd_open(pid)
    except OSError:  # ENOSYS (old kernel), ESRCH (reaped already), EMFILE...
        return None
    return ExitWatch(fd, callback)


#: Seconds between two readings of a living kernel's memory cgroup: where it is (it may be
#: moved into another), what its out-of-memory count is and who else is in it. A death is
#: compared with the last reading, up to this old: an out-of-memory kill of another process in a
#: shared cgroup within that time makes a SIGKILL only "likely" out of memory (an earlier one is
#: told apart); a kernel moved less than this before its kill is judged by its former cgroup.
#: Each time: three small reads of /proc files a kernel process, and two of each memory cgroup
#: (measured: 80 us of CPU a kernel alone in its cgroup, 40 us for kernels sharing one: 4% of
#: a core for 1000 kernels, in ten slices a period).
SAMPLE_PERIOD = 1.0
# The timer's ticks a period: each reads this fraction of the kernels.
_SLICES = 10

# A cgroup's out-of-memory count and processes, as read once in a tick (None: unreadable).
_GroupReading = tuple[_cause.Memory | None, frozenset[int] | None]


@dataclass(frozen=True)
class _Group:
    """One memory cgroup of a kernel's processes as last read: its counters, and whether
    processes other than the kernel's were in it."""

    cgroup: MemoryCgroup
    memory: _cause.Memory | None
    shared: bool | None


class Witness:
    """What the cause of one kernel process's death is decided from, read while it lives (an
    exited process has left its cgroup, and a process killed by the out-of-memory killer is
    counted before it exits): the memory cgroups of the process and of those it started (a
    kernel behind a wrapper), their out-of-memory counts and who else is in them, every
    :data:`SAMPLE_PERIOD` (see :class:`_Sampler`); where the kernel log was at its start. At
    its death these are compared with what is read then."""

    def __init__(self, process: subprocess.Popen[Any] | None, *, sample: bool = False) -> None:
        self.process = process
        # The last reading taken while every process of the kernel was alive and none dying:
        # the cgroup of each, by pid.
        self.where: dict[int, _Group] = {}
        self.descendants: frozenset[int] = frozenset()  # every process seen under it
        self._paths: dict[str, MemoryCgroup | None] = {}  # /proc/<pid>/cgroup text: its group
        self._held: set[int] = set()  # processes gone, kept in the last reading (see _hold)
        self.log_mark = None if process is None else oom_log().mark()
        self._sampler: _Sampler | None = None
        if process is not None and self.sample() and sample:
            self._sampler = _sampler()
            self._sampler.add(self)

    @property
    def group(self) -> MemoryCgroup | None:
        """The memory cgroup its process was last seen in."""
        found = None if self.process is None else self.where.get(self.process.pid)
        return None if found is None else found.cgroup

    def sample(self, groups: dict[Path, _GroupReading] | None = None) -> bool:
        """Read where its processes are and their cgroups' counts (from ``groups``, those read
        already in this round, where there). A count read after a kill it is to be compared
        with would hide that kill: see :meth:`_hold`. False once its own process is dying or
        gone: nothing more to read, the last reading kept."""
        process = self.process
        if process is None or process.returncode is not None:
            return False
        groups = {} if groups is None else groups
        pid = process.pid
        below = descendants(pid)
        tree = below | {pid}
        where: dict[int, _Group] = {}
        for each in tree:
            group = self._cgroup_of(each)
            if group is None:
                continue
            if group.path not in groups:
                # Its limit is read at the death only: its count is what is compared.
                groups[group.path] = (group.read(limit=False), group.procs())
            memory, procs = groups[group.path]
            shared = None if procs is None else bool(procs - tree)
            where[each] = _Group(group, memory, shared)
        # After the counts: a kill counted before they were read shows here.
        dying = set()
        for each in tree:
            stat = read_stat(each)
            if stat is None or stat.dying:
                if each == pid:
                    return False
                dying.add(each)
        self.where = self._hold(where, dying | (self.where.keys() - tree), groups)
        self.descendants |= below
        return True

    def _hold(
        self, where: dict[int, _Group], suspects: set[int], groups: dict[Path, _GroupReading]
    ) -> dict[int, _Group]:
        """The reading to keep, of ``where`` read now, given the processes under the kernel's
        own that are dying or have gone since the last reading (``suspects``): behind a
        wrapper, one of them may be the kernel, killed out of memory, its wrapper not yet
        exited. Where a suspect's cgroup counted a kill since, the reading from before is kept
        for that cgroup, and the suspect with it, for one more reading (then it is gone)."""
        held: set[int] = set()
        risen: dict[Path, _Group] = {}
        for each in suspects:
            where.pop(each, None)
            kept = self.where.get(each)
            if kept is None or each in self._held:
                continue
            path = kept.cgroup.path
            if path not in groups:
                groups[path] = (kept.cgroup.read(limit=False), kept.cgroup.procs())
            if _risen(kept.memory, groups[path][0]):
                where[each] = risen[path] = kept
                held.add(each)
        for each, found in list(where.items()):
            kept = risen.get(found.cgroup.path)
            if kept is not None:
                where[each] = kept
        self._held = held
        return where

    def _cgroup_of(self, pid: int) -> MemoryCgroup | None:
        text = memory_cgroup_text(pid)
        if text is None:
            return None
        if text not in self._paths:
            if len(self._paths) > 16:
                self._paths.clear()  # moved about more than ever seen: keep it small
            self._paths[text] = memory_cgroup_in(text)
        return self._paths[text]

    def stop(self) -> None:
        """Read no more (what was read is kept, for a death still recorded). Idempotent."""
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.discard(self)

    def cause(
        self,
        silence: float | None,
        connection: _cause.Connection | None = None,
        *,
        answered: bool = False,
        **carried: Any,
    ) -> _cause.Cause:
        """The cause now: the process's exit status (``poll()``: it reaps an exited child),
        else its state (and those of the processes under it); ``silence``: how long its heart
        was silent, for a heart death. For a process that is not ours (None), ``connection``:
        what its heart's port said.
        ``carried``: what the cause only carries (``never_answered``, ``language``)."""
        process = self.process
        if process is None:
            return _cause.decide(
                returncode=None, local=False, silence=silence, connection=connection, **carried
            )
        code = process.poll()
        if code is None:
            below = descendants(process.pid)
            states = [state for state in map(read_state, below) if state is not None]
            return _cause.decide(
                returncode=None,
                state=read_state(process.pid),
                descendant_states=states,
                silence=silence,
                **carried,
            )
        group = self._judged_group(code)
        return _cause.decide(
            returncode=code,
            silence=silence,
            memory_before=None if group is None else group.memory,
            memory_now=None if group is None else group.cgroup.read(),
            shared=None if group is None else group.shared,
            pid=process.pid,
            descendants=self.descendants,
            oom_victims=oom_log().since(self.log_mark),
            answered=answered,
            **carried,
        )

    def _judged_group(self, code: int) -> _Group | None:
        """The cgroup whose counts say whether a SIGKILL was the out-of-memory killer's: its
        process's own; behind a wrapper (an exit code 128 + 9), the first of those of the
        processes it ran whose count rose, if any."""
        assert self.process is not None
        if code >= 0 and wrapped_signal(code) == signal.SIGKILL:
            for group in self.where.values():
                if _risen(group.memory, group.cgroup.read()):
                    return group
        return self.where.get(self.process.pid)


def _risen(before: _cause.Memory | None, now: _cause.Memory | None) -> bool:
    return before is not None and now is not None and now.oom_kills > before.oom_kills


class _Sampler:
    """Reads every living witness of one event loop once every :data:`SAMPLE_PERIOD` seconds,
    on one timer, which runs only while there is a witness to read: the witnesses are dealt
    into ten slots, one read every tenth of the period, so that many kernels' readings never
    hold up the loop at once; a cgroup the kernels of a slot share is read once, not once a
    kernel."""

    def __init__(self) -> None:
        self.slots: list[list[Witness]] = [[] for _ in range(_SLICES)]
        self.turn = 0
        self.timer = PeriodicCallback(self._tick, SAMPLE_PERIOD * 1000 / _SLICES)

    def add(self, witness: Witness) -> None:
        min(self.slots, key=len).append(witness)
        if not self.timer.is_running():
            self.timer.start()

    def discard(self, witness: Witness) -> None:
        for slot in self.slots:
            if witness in slot:
                slot.remove(witness)
        if not any(self.slots):
            self.timer.stop()

    def _tick(self) -> None:
        slot = self.slots[self.turn]
        self.turn = (self.turn + 1) % _SLICES
        groups: dict[Path, _GroupReading] = {}  # this slot's readings of each cgroup
        for witness in list(slot):
            if not witness.sample(groups):
                slot.remove(witness)
                witness._sampler = None
        if not any(self.slots):
            self.timer.stop()


_samplers: weakref.WeakKeyDictionary[IOLoop, _Sampler] = weakref.WeakKeyDictionary()


def _sampler() -> _Sampler:
    loop = IOLoop.current()
    sampler = _samplers.get(loop)
    if sampler is None:
        sampler = _samplers[loop] = _Sampler()
    return sampler


class DeathWatch:
    """One kernel's deaths, as its owner (a kernel manager, the provisioner) sees them: its
    process of the moment watched from its start (its :class:`Witness`, and its exit through
    :func:`watch_exit` when it is a local child), and each death recorded (``last``)."""

    def __init__(self) -> None:
        self.witness: Witness | None = None
        self.exit_watch: ExitWatch | None = None
        self.last: Death | None = None
        self.memory = MemoryGuard()  # its memory: peak, warning (started by the owner)

    def watch(
        self, process: subprocess.Popen[Any] | None, on_exit: Callable[[Witness], None]
    ) -> None:
        """Watch ``process`` from now on (None: it is not ours, and only its witness is kept):
        ``on_exit(witness)`` is called on the loop, once, when it exits, unless stopped first."""
        self.stop()
        # Its memory cgroup read from now on, while it lives.
        self.witness = witness = Witness(process, sample=True)
        if process is not None and process.poll() is None:
            self.exit_watch = watch_exit(process.pid, lambda: on_exit(witness))

    def stop(self) -> None:
        """Stop watching the exit: what ends the process now is no death of this watch's
        (asked for, or already reported). The witness stays, for a death still recorded."""
        watch, self.exit_watch = self.exit_watch, None
        if watch is not None:
            watch.close()
        if self.witness is not None:
            self.witness.stop()

    def record(
        self,
        kernel_id: str | None,
        process: subprocess.Popen[Any] | None,
        silence: float | None,
        *,
        restarting: bool,
        connection: _cause.Connection | None = None,
        answered: bool = False,
        **carried: Any,
    ) -> Death:
        """The death of ``process`` (the kernel's local child, or None), decided now and kept
        as ``last``; ``silence``: how long its heart was silent, for a heart death;
        ``connection``: what its heart's port said, for a kernel that is not our child;
        ``answered``: whether its heart had answered (an exit code 0 then is asked for);
        ``carried``: ``never_answered`` and ``language``, for its cause's words."""
        witness = self.witness
        if witness is None or witness.process is not process:
            witness = Witness(process)  # a process it was not watching: counted only now
        death = Death(
            kernel_id=kernel_id,
            cause=self.memory.explain(
                witness.cause(silence, connection, answered=answered, **carried)
            ),
            time=time.time(),
            pid=None if process is None else process.pid,
            restarting=restarting,
        )
        if not death.cause.asked_for:  # an exit the kernel asked for is no death
            self.last = death
        return death
