"""A kernel's processes and memory cgroup, read and written in ``/proc`` and the cgroup's
files: its processes found (provably ours) and made the out-of-memory killer's preferred
victims (``oom_score_adj``), their peak read; its cgroup's binding limit and usage read; the
server's own ``memory.oom.group`` warned of; the address space of its process nearest its
``RLIMIT_AS`` read. What is decided with them is in :mod:`heartbeat._memory` (and
:mod:`heartbeat._address_space`); when they are read, in :mod:`heartbeat.jupyter._memory_watch`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heartbeat import _address_space, _memory
from heartbeat.jupyter._proc import CGROUP_ROOT, MemoryCgroup, memory_cgroup_of


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


def peak_of(pids: list[int], leader: int) -> int:
    """The most a kernel's processes were seen to use: the largest ``VmHWM`` of one, or their
    ``VmRSS`` together, whichever is more (both never more than they used)."""
    return sizes_of(pids, leader)[0]


def sizes_of(pids: list[int], leader: int) -> tuple[int, int]:
    """A kernel's peak (:func:`peak_of`) and its resident size: its processes' ``VmRSS`` and
    ``VmSwap`` together, as the out-of-memory killer counts a process (``oom_badness``); each
    read through its own ``/proc/<pid>`` and only if still in the kernel's session."""
    hwm = rss = swap = 0
    for pid in pids:
        with _proc_dir(pid) as fd:
            if fd is None or (pid != leader and not _in_session(fd, leader)):
                continue
            try:
                status = _read_at(fd, "status")
                hwm = max(hwm, _memory.status_bytes(status, "VmHWM") or 0)
                rss += _memory.status_bytes(status, "VmRSS") or 0
                swap += _memory.status_bytes(status, "VmSwap") or 0
            except (OSError, ValueError):
                continue
    return max(hwm, rss), rss + swap


def address_space(pids: list[int], leader: int) -> tuple[int, int] | None:
    """Of a kernel's processes under an address-space limit (``RLIMIT_AS``, per process), the
    one nearest its soft limit: its address space (``VmSize``) and that limit
    (:func:`heartbeat._address_space.binding`); None when none has one. Each read through its
    own ``/proc/<pid>`` and only if still in the kernel's session, as :func:`sizes_of`."""
    found: list[tuple[int | None, int | None]] = []
    for pid in pids:
        with _proc_dir(pid) as fd:
            if fd is None or (pid != leader and not _in_session(fd, leader)):
                continue
            try:
                limit = _address_space.soft_limit(_read_at(fd, "limits"))
                if limit is not None:
                    found.append((_address_space.size(_read_at(fd, "status")), limit))
            except (OSError, ValueError):
                continue
    return _address_space.binding(found)
