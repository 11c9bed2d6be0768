"""Seeing a kernel's death and its cause, for whoever owns the kernel (the kernel managers, the
provisioner): the exit of a local child watched on the loop (a pidfd), what its cause is
decided from, gathered at its start and at its death, and the death recorded."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop

from heartbeat import _cause
from heartbeat._cause import Death
from heartbeat.jupyter._proc import memory_cgroup_of, read_state


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


class Witness:
    """What the cause of one kernel process's death is decided from: its memory cgroup, found
    and counted at its start (an exited process has left its cgroup), then counted again at
    its death."""

    def __init__(self, process: subprocess.Popen[Any] | None) -> None:
        self.process = process
        self.group = None if process is None else memory_cgroup_of(process.pid)
        self.memory_at_start = None if self.group is None else self.group.read()

    def cause(
        self,
        silence: float | None,
        connection: _cause.Connection | None = None,
        *,
        answered: bool = False,
        **carried: Any,
    ) -> _cause.Cause:
        """The cause now: the process's exit status (``poll()``: it reaps an exited child),
        else its state; ``silence``: how long its heart was silent, for a heart death. For a
        process that is not ours (None), ``connection``: what its heart's port said.
        ``carried``: what the cause only carries (``never_answered``, ``language``)."""
        process = self.process
        if process is None:
            return _cause.decide(
                returncode=None, local=False, silence=silence, connection=connection, **carried
            )
        code = process.poll()
        return _cause.decide(
            returncode=code,
            state=read_state(process.pid) if code is None else None,
            silence=silence,
            memory_at_start=self.memory_at_start,
            memory_now=None if self.group is None else self.group.read(),
            answered=answered,
            **carried,
        )


class DeathWatch:
    """One kernel's deaths, as its owner (a kernel manager, the provisioner) sees them: its
    process of the moment watched from its start (its :class:`Witness`, and its exit through
    :func:`watch_exit` when it is a local child), and each death recorded (``last``)."""

    def __init__(self) -> None:
        self.witness: Witness | None = None
        self.exit_watch: ExitWatch | None = None
        self.last: Death | None = None

    def watch(
        self, process: subprocess.Popen[Any] | None, on_exit: Callable[[Witness], None]
    ) -> None:
        """Watch ``process`` from now on (None: it is not ours, and only its witness is kept):
        ``on_exit(witness)`` is called on the loop, once, when it exits, unless stopped first."""
        self.stop()
        self.witness = witness = Witness(process)  # its memory cgroup, counted at its start
        if process is not None and process.poll() is None:
            self.exit_watch = watch_exit(process.pid, lambda: on_exit(witness))

    def stop(self) -> None:
        """Stop watching the exit: what ends the process now is no death of this watch's
        (asked for, or already reported). The witness stays, for a death still recorded."""
        watch, self.exit_watch = self.exit_watch, None
        if watch is not None:
            watch.close()

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
            cause=witness.cause(silence, connection, answered=answered, **carried),
            time=time.time(),
            pid=None if process is None else process.pid,
            restarting=restarting,
        )
        if not death.cause.asked_for:  # an exit the kernel asked for is no death
            self.last = death
        return death
