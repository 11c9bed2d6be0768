"""A kernel's memory, watched for whoever owns its process (a kernel manager, the provisioner):
its processes made the out-of-memory killer's preferred victims (``oom_score_adj``), never the
server; its memory cgroup read on :class:`heartbeat._memory.MemorySchedule`'s schedule, with a
warning (and, opted in, an interrupt) before the limit; its peak kept for its death's words.
A kernel whose processes run under an address-space limit (``RLIMIT_AS``) is read and warned
likewise, against that limit, on a schedule of its own (:class:`AddressSpaceWatch`).

What is decided (when to read, when to warn, the words) is in :mod:`heartbeat._memory` (and
:mod:`heartbeat._address_space`), and
among kernels that share a cgroup (which is warned, which interrupted) in
:mod:`heartbeat._memory_share`; the cgroup is read once for all the kernels that share it on a
loop (``heartbeat.jupyter._cgroup_reading``), which asks each guard for its kernel's size and
tells it; ``heartbeat.jupyter._kernel_memory`` reads ``/proc`` and the cgroup's files, and
writes ``oom_score_adj``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import subprocess
import time
from collections.abc import Callable
from typing import Any, Literal

from tornado.ioloop import IOLoop

from heartbeat import _address_space
from heartbeat._cause import Cause
from heartbeat._memory import Interrupt, MemorySchedule, Warn, moved, where_due
from heartbeat.jupyter._cgroup_reading import CgroupReading, join_reading
from heartbeat.jupyter._kernel_memory import (
    Reader,
    address_space,
    kernel_pids,
    mark_for_oom,
    sizes_of,
    warn_if_oom_group,
)
from heartbeat.jupyter._proc import memory_cgroup_in, memory_cgroup_text

#: Seconds after a kernel's start at which its processes are marked again: a wrapper (a shell
#: script, ``conda run``) may fork the real kernel before the first mark, which forks made
#: after it inherit.
REMARK_AFTER = (1.0, 5.0)


#: From this fraction of its limit on, a kernel's memory is read in full (its cgroup's cache,
#: its processes' peak): below, it is far from any threshold (0.5 below the lowest sensible
#: warning) and from an out-of-memory kill worth a peak.
PEAK_FROM = 0.5

#: Seconds after which a kernel's processes are looked for again before its size is read (a
#: cell may have started workers since its last mark).
PIDS_FOR = 1.0

#: A peak read longer than this (seconds) before an out-of-memory death is not said: the kernel
#: may have grown by anything since (a single allocation past its limit, read 5 s before).
STALE = 1.0


class AddressSpaceWatch:
    """A kernel's address space read against its ``RLIMIT_AS`` on its own
    :class:`heartbeat._memory.MemorySchedule` (see :mod:`heartbeat._address_space`), on
    ``guard``'s loop, from its first reading (:meth:`read`) to :meth:`stop`."""

    def __init__(self, guard: MemoryGuard, schedule: MemorySchedule, loop: IOLoop) -> None:
        self._guard = guard
        self.schedule = schedule
        self._loop = loop
        self._next: object = None
        self.stopped = False

    def stop(self) -> None:
        """Read no more. Idempotent."""
        self.stopped = True
        if self._next is not None:
            self._loop.remove_timeout(self._next)
            self._next = None

    def read(self) -> None:
        """One reading (now: a mark's, or its timer's): its events told to the guard's
        owner, the next one set."""
        if self._next is not None:
            self._loop.remove_timeout(self._next)  # read now, instead
            self._next = None
        if self.stopped:
            return
        now = time.monotonic()
        found = self._guard.address_space()
        if found is False:
            self.stop()  # its kernel exited, or is no longer watched
            return
        if found is None:
            # No process under a limit now (the one that had it ended): looked for again
            # slowly, a worker with one may come back.
            at = now + self.schedule.slowest
        else:
            events, at = self.schedule.sample(now, *found)
            for event in _address_space.events(events):
                if self.stopped:
                    return
                self._guard.tell(event)
        if not self.stopped and self._next is None:
            self._next = self._loop.call_later(max(at - time.monotonic(), 0.0), self.read)


class MemoryGuard:
    """One kernel owner's memory watch (see the module), for each of its kernel's processes in
    turn: :meth:`start` at a process's start, :meth:`stop` when it is no longer watched.

    Listeners (:meth:`add_listener`: the running cell's websocket) are told of each warning
    and interrupt; :meth:`explain` adds how much was used to an out-of-memory death's cause.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[Warn | Interrupt], object]] = []
        self._process: subprocess.Popen[Any] | None = None
        self._reading: CgroupReading | None = None  # shared with the cgroup's other kernels
        self._schedule: MemorySchedule | None = None
        self._timers: list[object] = []  # the marks after a start
        self._loop: IOLoop | None = None
        self._lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._last_reader: Reader | None = None  # the last process's, kept for its death
        self._read_at: float | None = None  # when its peak was last read
        self.full_from = PEAK_FROM  # the fraction of its limit from which it is read in full
        self._pids: list[int] = []
        self._pids_at = 0.0  # when they were found
        self._log: logging.LoggerAdapter[Any] | logging.Logger | None = None
        self._adj = 0
        self._interrupt: Callable[[], object] | None = None
        self.peak: int | None = None
        self.limit: int | None = None
        self._fractions: tuple[float | None, float | None] = (None, None)
        self._space: AddressSpaceWatch | None = None  # once a process has an RLIMIT_AS
        # Where its kernel was (/proc/<pid>/cgroup) when its reading was joined, and when that
        # was last looked at: a kernel moved into another cgroup is read there.
        self._where: str | None = None
        self._where_at: float | None = None

    def add_listener(self, callback: Callable[[Warn | Interrupt], object]) -> None:
        """Call ``callback(event)`` at each warning (:class:`heartbeat._memory.Warn`) and
        interrupt (:class:`heartbeat._memory.Interrupt`) of this owner's kernels."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[Warn | Interrupt], object]) -> None:
        """Stop calling ``callback``; one never added is ignored."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def new_cell(self) -> None:
        """A new cell runs: its crossing of the warning (or interrupt) is told again."""
        if self._schedule is not None:
            self._schedule.rearm_now()
        if self._space is not None:
            self._space.schedule.rearm_now()

    def start(
        self,
        process: subprocess.Popen[Any] | None,
        *,
        oom_score_adj: int,
        warning: float | None,
        interrupt: float | None,
        log: logging.LoggerAdapter[Any] | logging.Logger,
        interrupt_kernel: Callable[[], object] | None = None,
        lock: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        """Watch ``process`` (our local child; None: nothing to watch here) from now on.
        ``lock``, if given, is held by each reading and mark (which poll the process): its
        owner's, where another thread may reap it."""
        self.stop()
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self.peak = self.limit = None
        self._last_reader = self._read_at = None
        warn_if_oom_group(log if not isinstance(log, logging.LoggerAdapter) else log.logger)
        if process is None or process.poll() is not None:
            return
        self._process, self._log, self._adj = process, log, oom_score_adj
        self._interrupt = interrupt_kernel if interrupt is not None else None
        self._fractions = (warning or None, interrupt or None)
        loop = self._loop = IOLoop.current()
        self._where = text = memory_cgroup_text(process.pid)
        self._where_at = time.monotonic()
        self._mark()
        self._timers = [loop.call_later(delay, self._mark) for delay in REMARK_AFTER]
        group = None if text is None else memory_cgroup_in(text)
        if group is None:
            return
        reader = self._last_reader = Reader.of(group)
        schedule = self._schedule = self._new_schedule()
        self.full_from = min(PEAK_FROM, warning or 1.0, interrupt or 1.0)
        # Read with the other kernels of its cgroup on this loop, if any (at once, as first).
        self._reading = join_reading(reader, self, schedule)

    def stop(self) -> None:
        """Stop watching the current process (its peak and limit stay, for its death).
        Idempotent."""
        loop = self._loop  # the loop it was started on: stopped from anywhere, it is that one's
        for timer in self._timers:
            if loop is not None:
                loop.remove_timeout(timer)
        self._timers = []
        reading, self._reading = self._reading, None
        self._process = self._schedule = None
        self._where = self._where_at = None
        space, self._space = self._space, None
        if space is not None:
            space.stop()
        if reading is not None:
            reading.leave(self)  # the last kernel to leave closes it

    def _mark(self) -> None:
        with self._lock:
            self._mark_now()

    def _mark_now(self) -> None:
        process = self._process
        if process is None:
            return
        if self._adj:
            mark_for_oom(process, self._adj)
        self._pids, self._pids_at = kernel_pids(process), time.monotonic()
        self._look(self._pids_at)
        loop = self._loop
        if loop is None or self._fractions == (None, None):
            return
        if self._space is None:
            # Whether any of its processes has an address-space limit, at each mark: a wrapper
            # sets it ('ulimit -v') after our start. Read from then on, on its own schedule.
            if address_space(self._pids, process.pid) is None:
                return
            warning, interrupt = self._fractions
            schedule = MemorySchedule(warning=warning, interrupt=interrupt)
            self._space = AddressSpaceWatch(self, schedule, loop)
        # Read now (not here: under the lock), and at each mark: a wrapper's exec'd kernel is
        # another program, far larger.
        loop.add_callback(self._space.read)

    def address_space(self) -> tuple[int, int] | Literal[False] | None:
        """For its :class:`AddressSpaceWatch`: its kernel's process nearest its ``RLIMIT_AS``,
        its address space and that limit (None: none has one now); False once its kernel has
        exited or is no longer watched."""
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                return False
            if time.monotonic() - self._pids_at > PIDS_FOR:
                self._pids, self._pids_at = kernel_pids(process), time.monotonic()
            return address_space(self._pids, process.pid)

    def measured(
        self, usage: int, limit: int | None, near: float | None
    ) -> tuple[bool, int | None]:
        """For its cgroup's reading (``heartbeat.jupyter._cgroup_reading``): whether its kernel
        still lives and, from ``near`` bytes of usage on, its size (its processes' resident
        memory and swap), its peak kept meanwhile."""
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                return False, None  # stopped, or it exited: nothing more to read
            now = time.monotonic()
            if where_due(now, self._where_at) and self._look(now):
                return False, None  # moved: read where it is now, not here
            self.limit = limit
            if near is None or usage < near:
                return True, None
            if time.monotonic() - self._pids_at > PIDS_FOR:
                self._pids, self._pids_at = kernel_pids(process), time.monotonic()
            peak, size = sizes_of(self._pids, process.pid)
            self.peak = max(self.peak or 0, peak) or None
            self._read_at = time.monotonic()
            return True, size

    def _new_schedule(self) -> MemorySchedule:
        warning, interrupt = self._fractions
        return MemorySchedule(warning=warning, interrupt=interrupt)

    def _look(self, now: float) -> bool:
        # Where its kernel is now (its main process's /proc/<pid>/cgroup, a tiny read), under
        # the lock: moved into another memory cgroup (a spawner's hook, systemd-run --scope,
        # an operator's echo into cgroup.procs), it is read there from now on (on the loop,
        # not here: this may be in the middle of its old cgroup's reading). Whether it moved.
        process, loop = self._process, self._loop
        if process is None or loop is None:
            return False
        self._where_at = now
        text = memory_cgroup_text(process.pid)
        if text is None or not moved(self._where, text):
            return False
        self._where = text  # followed once
        group = memory_cgroup_in(text)
        reader = None if group is None else Reader.of(group)
        bound = None if self._reading is None else self._reading.reader
        if reader == bound:
            # Moved under the same binding limit (into a child cgroup with none of its own):
            # still read where it was, its warning's state and peak kept.
            return False
        loop.add_callback(self._follow, process, reader)
        return True

    def _follow(self, process: subprocess.Popen[Any], reader: Reader | None) -> None:
        # Its kernel moved (see _look): it leaves its old cgroup's reading and joins its new
        # one's with a schedule of its own there (what it crossed of the old limit says nothing
        # of the new one), its peak and limit now the new cgroup's (for its death's words).
        with self._lock:
            if self._process is not process or process.poll() is not None:
                return  # stopped (or restarted), or exited, meanwhile
            old, self._reading = self._reading, None
            self.peak = self.limit = self._read_at = None
            self._last_reader = reader
            schedule = self._schedule = self._new_schedule()
            log = self._log
        if old is not None:
            old.leave(self)  # the last kernel to leave closes it
        if log is not None:
            log.info(
                "moved into memory cgroup %s: its memory is read there",
                "(none to read)" if reader is None else reader.path,
            )
        if reader is None:
            return
        # Outside the lock: joining reads at once, which asks this guard its kernel's size.
        reading = join_reading(reader, self, schedule)
        with self._lock:
            if self._process is process and self._schedule is schedule:
                self._reading = reading
                return
        reading.leave(self)  # stopped meanwhile (from another thread): nothing to read

    def tell(self, event: Warn | Interrupt) -> None:
        """For its cgroup's reading: tell this kernel's owner of ``event`` (unless stopped)."""
        if self._process is not None:
            self._tell(event)

    def _tell(self, event: Warn | Interrupt) -> None:
        self._mark()  # the process that grows is marked before the kill, whenever it forked
        log = self._log
        interrupt = self._interrupt
        if isinstance(event, Interrupt) and interrupt is not None:
            if log is not None:
                log.warning("%s; interrupting it", event.words())
            try:
                interrupt()
            except Exception:
                if log is not None:
                    log.exception("could not interrupt it")
        elif isinstance(event, Warn) and log is not None:
            log.warning("%s (memory_warning)", event.words())
        elif isinstance(event, Interrupt):
            return  # no interrupt was asked for
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:
                if log is not None:
                    log.exception("memory listener %r failed", callback)

    def explain(self, cause: Cause) -> Cause:
        """``cause`` with how much its kernel used (its peak seen), and how many other
        processes share its cgroup, when it is an out-of-memory kill."""
        if cause.kind != "oom":  # a likely one too: how much it used is no less true
            return cause
        reader = self._last_reader
        if reader is None:
            return cause
        if reader.limit() != cause.memory_limit:
            # Not the cgroup the death was judged in (the kernel was moved into another after
            # this watch found it): what it read says nothing of this kill.
            return cause
        others = reader.processes()  # the kernel's are gone: what is left is the others'
        peak, exact = self.peak, False
        if self._read_at is None or time.monotonic() - self._read_at > STALE:
            peak = None  # read too long before its death to say how much it used then
        if others == 0:
            # The cgroup was the kernel's own: its peak, read now, is the kernel's, exact.
            own = reader.peak()
            if own is not None:
                peak, exact = own, True
        return dataclasses.replace(
            cause, memory_peak=peak, memory_others=others, memory_peak_exact=exact
        )
