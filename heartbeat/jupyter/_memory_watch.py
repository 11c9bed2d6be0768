"""A kernel's memory, watched for whoever owns its process (a kernel manager, the provisioner):
its processes made the out-of-memory killer's preferred victims (``oom_score_adj``), never the
server; its memory cgroup read on :class:`heartbeat._memory.MemorySchedule`'s schedule, with a
warning (and, opted in, an interrupt) before the limit; its peak kept for its death's words.

What is decided (when to read, when to warn, the words) is in :mod:`heartbeat._memory`; this
reads ``/proc`` and the cgroup's files, writes ``oom_score_adj`` and sets the loop's timer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado.ioloop import IOLoop

from heartbeat import _memory
from heartbeat._cause import Cause
from heartbeat._memory import Interrupt, MemorySchedule, Warn
from heartbeat.jupyter._proc import CGROUP_ROOT, MemoryCgroup, memory_cgroup_of

#: Seconds after a kernel's start at which its processes are marked again: a wrapper (a shell
#: script, ``conda run``) may fork the real kernel before the first mark, which forks made
#: after it inherit.
REMARK_AFTER = (1.0, 5.0)


#: From this fraction of its limit on, a kernel's memory is read in full (its cgroup's cache,
#: its processes' peak): below, it is far from any threshold (0.5 below the lowest sensible
#: warning) and from an out-of-memory kill worth a peak.
PEAK_FROM = 0.5

#: A peak read longer than this (seconds) before an out-of-memory death is not said: the kernel
#: may have grown by anything since (a single allocation past its limit, read 5 s before).
STALE = 1.0


@contextlib.contextmanager
def _proc_dir(pid: int) -> Iterator[int | None]:
    """A directory descriptor of ``/proc/<pid>``, None when it is gone: every file opened
    through it is that process's, or fails (ESRCH) once it has exited, even if its pid is
    reused meanwhile."""
    try:
        fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _read_at(fd: int, name: str) -> str:
    handle = os.open(name, os.O_RDONLY, dir_fd=fd)
    with os.fdopen(handle, encoding="ascii", errors="replace") as f:
        return f.read()


def _in_session(fd: int, leader: int) -> bool:
    """Whether the process of ``fd`` is in the session, or the process group, led by
    ``leader``."""
    try:
        text = _read_at(fd, "stat")
        fields = text.rpartition(")")[2].split()
        return _memory.stat_session(text) == leader or fields[2] == str(leader)
    except (OSError, ValueError, IndexError):
        return False


def kernel_pids(process: subprocess.Popen[Any]) -> list[int]:
    """The pids of a kernel: our local child and its descendants in the session or the process
    group it leads (jupyter_client starts a kernel in a new session: a wrapper's real kernel,
    forked later, is one), found through ``/proc/<pid>/task/<tid>/children``: the cost is the
    kernel's own processes, not the machine's.

    Provably ours: while our child is not reaped (``poll()`` is None) its pid is no one
    else's, and a session or process group with its id can only have been made by it and
    inherited by its descendants; each pid is checked against it through its own
    ``/proc/<pid>`` directory (a pid reused meanwhile is not in it). Empty once it has exited.
    """
    if process.poll() is not None:
        return []
    leader = process.pid
    found, todo = [leader], [leader]
    while todo and len(found) < _MOST:
        pid = todo.pop()
        with _proc_dir(pid) as fd:
            if fd is None:
                continue
            try:
                tasks = os.listdir(f"/proc/self/fd/{fd}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    kids = _read_at(fd, f"task/{tid}/children").split()
                except OSError:
                    continue
                for kid in kids:
                    with _proc_dir(int(kid)) as kid_fd:
                        if kid_fd is not None and _in_session(kid_fd, leader):
                            found.append(int(kid))
                            todo.append(int(kid))
    return found


# A kernel's processes followed at most: a fork bomb in a cell is not walked for ever.
_MOST = 1000


def mark_for_oom(process: subprocess.Popen[Any], adj: int) -> int:
    """Raise the ``oom_score_adj`` of a kernel's processes (:func:`kernel_pids`) to ``adj``,
    which a process may do for its own (and their descendants inherit at fork): the
    out-of-memory killer then picks a kernel before the server. Never lowered; never any
    process not provably ours. How many were raised."""
    if not 0 < adj <= 1000:
        return 0
    raised = 0
    leader = process.pid
    for pid in kernel_pids(process):
        with _proc_dir(pid) as fd:
            if fd is None or (pid != leader and not _in_session(fd, leader)):
                continue
            try:
                if int(_read_at(fd, "oom_score_adj")) >= adj:
                    continue
                handle = os.open("oom_score_adj", os.O_WRONLY, dir_fd=fd)
                try:
                    os.write(handle, str(adj).encode())
                finally:
                    os.close(handle)
                raised += 1
            except (OSError, ValueError):
                continue  # gone meanwhile, or not ours to write
    return raised


_oom_group_checked = False


def warn_if_oom_group(
    log: logging.Logger | logging.LoggerAdapter[Any], group: MemoryCgroup | None = None
) -> bool:
    """Once a process: warn (and return True) when this process's memory cgroup (``group``:
    found from ``/proc/self/cgroup`` unless given) is cgroup v2's with ``memory.oom.group`` on,
    where one OOM kill of a kernel ends the server too."""
    global _oom_group_checked
    if _oom_group_checked:
        return False
    _oom_group_checked = True
    mine = group if group is not None else memory_cgroup_of(os.getpid())
    if mine is None or mine.version != 2:
        return False
    try:
        on = _memory.oom_group((mine.path / "memory.oom.group").read_text())
    except (OSError, ValueError):
        return False
    if on:
        log.warning(_memory.oom_group_warning(str(mine.path)))
    return on


@dataclass(frozen=True)
class Reader:
    """The memory cgroup whose limit binds a kernel (its own, or the ancestor with the lowest
    limit), read: its usage less inactive file cache, and its limit."""

    version: int
    path: Path

    @classmethod
    def of(cls, group: MemoryCgroup, root: Path = CGROUP_ROOT) -> Reader:
        """The reader of ``group``'s binding limit: it and its ancestors up to the hierarchy's
        root, the lowest limit's."""
        best, lowest = cls(group.version, group.path), None
        top = root / "memory" if group.version == 1 else root
        for path in [group.path, *group.path.parents]:
            if path != top and top not in path.parents:
                break
            reader = cls(group.version, path)
            found = reader.limit()
            if found is not None and (lowest is None or found < lowest):
                best, lowest = reader, found
        return best

    def _file(self, v1: str, v2: str) -> str:
        return (self.path / (v2 if self.version == 2 else v1)).read_text()

    def limit(self) -> int | None:
        """Its limit in bytes, None for none (or unreadable)."""
        try:
            return _memory.limit(self.version, self._file("memory.limit_in_bytes", "memory.max"))
        except (OSError, ValueError):
            return None

    def usage(self, exact_from: float = 0.0) -> int | None:
        """Its usage less inactive file cache (:func:`heartbeat._memory.working_set`); the
        cache (``memory.stat``, the larger file) only read from ``exact_from`` bytes on: below,
        usage itself (never less than what it stands for) is enough."""
        try:
            used = _memory.usage(
                self.version, self._file("memory.usage_in_bytes", "memory.current")
            )
            if used < exact_from:
                return used
            return _memory.working_set(self.version, used, self._file("memory.stat", "memory.stat"))
        except (OSError, ValueError):
            return None

    def peak(self) -> int | None:
        """Its peak usage (v1 ``memory.max_usage_in_bytes``, v2 ``memory.peak``), None if
        unreadable."""
        try:
            text = self._file("memory.max_usage_in_bytes", "memory.peak")
            return _memory.usage(self.version, text)
        except (OSError, ValueError):
            return None

    def processes(self) -> int | None:
        """How many processes are in it and its descendants, None if unreadable."""
        if not self.path.is_dir():
            return None
        try:
            return sum(
                len((Path(where) / "cgroup.procs").read_text().split())
                for where, _, _ in os.walk(self.path)
            )
        except OSError:
            return None


def _peak(pids: list[int], leader: int) -> int:
    """The most a kernel's processes were seen to use: the largest ``VmHWM`` of one, or their
    ``VmRSS`` together, whichever is more (both never more than they used)."""
    hwm = rss = 0
    for pid in pids:
        with _proc_dir(pid) as fd:
            if fd is None or (pid != leader and not _in_session(fd, leader)):
                continue
            try:
                status = _read_at(fd, "status")
                hwm = max(hwm, _memory.status_bytes(status, "VmHWM") or 0)
                rss += _memory.status_bytes(status, "VmRSS") or 0
            except (OSError, ValueError):
                continue
    return max(hwm, rss)


class MemoryGuard:
    """One kernel owner's memory watch (see the module), for each of its kernel's processes in
    turn: :meth:`start` at a process's start, :meth:`stop` when it is no longer watched.

    Listeners (:meth:`add_listener`: the running cell's websocket) are told of each warning
    and interrupt; :meth:`explain` adds how much was used to an out-of-memory death's cause.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[Warn | Interrupt], object]] = []
        self._process: subprocess.Popen[Any] | None = None
        self._reader: Reader | None = None
        self._schedule: MemorySchedule | None = None
        self._timers: list[object] = []  # the marks after a start
        self._next: object = None  # the next reading
        self._last_reader: Reader | None = None  # the last process's, kept for its death
        self._read_at: float | None = None  # when its peak was last read
        self._full_from = PEAK_FROM  # the fraction of its limit from which it is read in full
        self._pids: list[int] = []
        self._log: logging.LoggerAdapter[Any] | logging.Logger | None = None
        self._adj = 0
        self._interrupt: Callable[[], object] | None = None
        self.peak: int | None = None
        self.limit: int | None = None

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

    def start(
        self,
        process: subprocess.Popen[Any] | None,
        *,
        oom_score_adj: int,
        warning: float | None,
        interrupt: float | None,
        log: logging.LoggerAdapter[Any] | logging.Logger,
        interrupt_kernel: Callable[[], object] | None = None,
    ) -> None:
        """Watch ``process`` (our local child; None: nothing to watch here) from now on."""
        self.stop()
        self.peak = self.limit = None
        self._last_reader = self._read_at = None
        warn_if_oom_group(log if not isinstance(log, logging.LoggerAdapter) else log.logger)
        if process is None or process.poll() is not None:
            return
        self._process, self._log, self._adj = process, log, oom_score_adj
        self._interrupt = interrupt_kernel if interrupt is not None else None
        self._mark()
        loop = IOLoop.current()
        self._timers = [loop.call_later(delay, self._mark) for delay in REMARK_AFTER]
        group = memory_cgroup_of(process.pid)
        if group is None:
            return
        self._reader = self._last_reader = Reader.of(group)
        self._schedule = MemorySchedule(warning=warning or None, interrupt=interrupt or None)
        self._full_from = min(PEAK_FROM, warning or 1.0, interrupt or 1.0)
        self._sample()

    def stop(self) -> None:
        """Stop watching the current process (its peak and limit stay, for its death).
        Idempotent."""
        loop = IOLoop.current()
        for timer in [*self._timers, self._next]:
            if timer is not None:
                loop.remove_timeout(timer)
        self._timers, self._next = [], None
        self._process = self._reader = self._schedule = None

    def _mark(self) -> None:
        process = self._process
        if process is None:
            return
        if self._adj:
            mark_for_oom(process, self._adj)
        self._pids = kernel_pids(process)

    def _sample(self) -> None:
        process, reader, schedule = self._process, self._reader, self._schedule
        if process is None or reader is None or schedule is None:
            return
        now = time.monotonic()
        limit = reader.limit()
        # Far below every threshold (and its limit), an idle kernel costs two small reads:
        # its cache and its processes' peak are read only nearer (PEAK_FROM of its limit).
        near = None if limit is None else self._full_from * limit
        usage = reader.usage(exact_from=near if near is not None else float("inf"))
        if usage is None or process.poll() is not None:
            return  # its cgroup is gone, or it exited: nothing more to read
        if near is not None and usage >= near:
            peak = _peak(self._pids, process.pid)
            self.peak = max(self.peak or 0, peak) or None
            self._read_at = time.monotonic()
        self.limit = limit
        events, at = schedule.sample(now, usage, limit)
        for event in events:
            self._tell(event)
        if self._process is process:  # not stopped by whoever was told
            self._next = IOLoop.current().call_later(max(at - time.monotonic(), 0), self._sample)

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
        if cause.kind != "oom" or cause.likely:
            return cause
        reader = self._last_reader
        if reader is None:
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
