"""The out-of-memory killer's victims, as the kernel log (``/dev/kmsg``) names them: the one
reader of this process, opened at its first use, read only when asked (at a kernel's start and
at its death), never on a timer.

The log is optional evidence: it is read only where this process may (root, or CAP_SYSLOG, or
``kernel.dmesg_restrict=0``) and only in the initial pid namespace, where the pids it names are
the pids this process sees (in a container's they are the host's, and could name anyone here).
Where it is not read, the memory cgroup's counters alone say what they can."""

from __future__ import annotations

import collections
import errno
import os
import threading

from heartbeat import _evidence

#: The kernel log's device.
KMSG = "/dev/kmsg"
# /proc/self/ns/pid in the initial pid namespace (PROC_PID_INIT_INO, fixed since Linux 3.8).
_INIT_PID_NS = "pid:[4026531836]"
# The victims kept: at most this many since the oldest kernel's start are told apart.
_KEPT = 4096
# A read of one record: the kernel refuses a buffer shorter than the record (EINVAL).
_RECORD = 8192


class OomLog:
    """The victims that the kernel log names from the first :meth:`mark` on."""

    def __init__(self, path: str = KMSG) -> None:
        self.path = path
        self._fd: int | None = None
        self._unreadable = False
        self._read = 0  # records read so far: a mark is this count
        self._lost = -1  # the count at which records were last lost (overwritten unread)
        self._victims: collections.deque[tuple[int, int]] = collections.deque(maxlen=_KEPT)
        self._lock = threading.Lock()  # a sync manager's loop may run in a thread of its own

    def mark(self) -> int | None:
        """Where the log is now, to ask :meth:`since` about later; None: it cannot be read."""
        with self._lock:
            return self._read if self._drain() else None

    def since(self, mark: int | None) -> frozenset[int] | None:
        """The pids the log has named as the out-of-memory killer's victims since ``mark``;
        None when that is not known (no mark, the log unreadable, or records lost since)."""
        with self._lock:
            if mark is None or not self._drain() or self._lost >= mark:
                return None
            if len(self._victims) == _KEPT and self._victims[0][0] <= mark:
                return None  # some named since the mark are no longer kept
            return frozenset(pid for at, pid in self._victims if at > mark)

    def _drain(self) -> bool:
        fd = self._open()
        if fd is None:
            return False
        while True:
            try:
                data = os.read(fd, _RECORD)
            except BlockingIOError:
                return True  # nothing more
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    # Records were overwritten before this read them: the next read resumes
                    # at the oldest kept.
                    self._lost = self._read
                    continue
                self._close()
                return False
            if not data:
                return True
            self._read += 1
            try:
                record = _evidence.kmsg_record(data.decode("utf-8", "replace"))
            except ValueError:
                continue
            if record.oom_victim is not None:
                self._victims.append((self._read, record.oom_victim))

    def _open(self) -> int | None:
        if self._fd is not None or self._unreadable:
            return self._fd
        try:
            if os.readlink("/proc/self/ns/pid") != _INIT_PID_NS:
                raise PermissionError("not the initial pid namespace")
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # not Linux, not allowed (EPERM), no such device...
            self._unreadable = True
            return None
        try:
            os.lseek(fd, 0, os.SEEK_END)  # from now on: what came before is no kernel's
        except OSError:
            os.close(fd)
            self._unreadable = True
            return None
        self._fd = fd
        return fd

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        self._unreadable = True
        if fd is not None:
            os.close(fd)


_log: OomLog | None = None


def oom_log() -> OomLog:
    """The process's one reader of the kernel log."""
    global _log
    if _log is None:
        _log = OomLog()
    return _log
