"""Watching one Jupyter kernel's heart for whoever owns its process: a kernel manager, or a
kernel provisioner.

What both share: the monitor made the same way (through one pool per event loop by default),
log lines that name the kernel and go through the owner's (the application's) logger, the
one line a death gets (its cause, decided in ``heartbeat._cause``), and killing the process
before anything else happens to it: by a signal only when it is provably our local child
(:func:`local_child`), otherwise through its provisioner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import weakref
from collections.abc import Callable, MutableMapping
from typing import Any

from tornado.ioloop import IOLoop
from traitlets import Bool, Float, Integer, TraitError, validate
from traitlets.config import LoggingConfigurable

from heartbeat import _validate
from heartbeat._cause import Cause, Death
from heartbeat._judge import Dead, Event
from heartbeat.jupyter.metrics import process_tally
from heartbeat.monitor import HeartMonitor, Log
from heartbeat.pool import HeartbeatPool

# One pool per event loop: every kernel watched from a loop shares its socket and timer.
_pools: weakref.WeakKeyDictionary[IOLoop, HeartbeatPool] = weakref.WeakKeyDictionary()


class HeartbeatSettings(LoggingConfigurable):
    """The settings of a watched kernel, as Jupyter configuration (managers, provisioner)."""

    time_to_dead = Float(
        3.0,
        config=True,
        help="Seconds a ping may wait for its answer, after first_beat, before the kernel is dead.",
    )
    first_beat = Float(
        5.0,
        config=True,
        help="Seconds of grace after a kernel (re)starts before its heartbeat is judged.",
    )
    interval = Float(
        None,
        allow_none=True,
        config=True,
        help="Seconds between pings; default (None) and maximum time_to_dead / 2. A smaller "
        "one reports a death sooner (time_to_dead to time_to_dead + interval after the last "
        "reply) for more pings.",
    )
    paths = Integer(
        None,
        allow_none=True,
        config=True,
        help="TCP connections to make to the kernel's heart, its pings taking turns on them, so "
        "that a ping is not held up behind a retransmission on a lossy link; default (None): 1 "
        "to a kernel on this machine, 4 beyond it (docs/lossy-links.md). At most 8.",
    )
    shared_pool = Bool(
        True,
        config=True,
        help="Watch the heart through one HeartbeatPool (one socket, one timer) shared by every "
        "kernel watched from this event loop; False: a socket and timer for this kernel.",
    )
    heart_answers_while_busy = Bool(
        None,
        allow_none=True,
        config=True,
        help="Whether the kernel's heart answers while the kernel is busy (a thread of its own, "
        "as ipykernel's and xeus'), so that its silence alone is its death (it is killed, and "
        "restarted). Default (None): learned from its kernel_info_reply's implementation "
        "(ipykernel, xeus: yes; IRkernel, which answers it from its main loop: no); until "
        "learned, and for a kernel not known, silence alone kills nothing (a process gone or "
        "stopped still is a death). See docs/jupyter.md, 'Which kernels a silent heart kills'.",
    )
    metrics = Bool(
        True,
        config=True,
        help="Count this kernel's heartbeats (round-trip times), the monitor's stalls forgiven, "
        "whether it is watched and late, and its deaths by cause, in prometheus_client's "
        "default registry (jupyter_server's /metrics), with no per-kernel label.",
    )

    unresponsive_after = Float(
        60.0,
        allow_none=True,
        config=True,
        help="Seconds a kernel whose heart beats may leave a kernel_info_request on its control "
        "channel unanswered before it is reported (once, with what it is doing and, for "
        "ipykernel, where its threads are; again when it answers). Nothing is done to it. "
        "None or 0: not asked (docs/busy-forever.md).",
    )

    kill_unresponsive_after = Float(
        None,
        allow_none=True,
        config=True,
        help="Seconds a kernel may go on not answering (counted as unresponsive_after's, and "
        "never before it is reported) before it is killed, its death's cause 'unresponsive' "
        "(and restarted, as any death, by a kernel manager with autorestart; a headless run's "
        "client then ends with DeadKernelError). Needs unresponsive_after. Default None: "
        "never, as a hung kernel may still hold work the user wants.",
    )

    @validate("unresponsive_after", "kill_unresponsive_after")
    def _check_unresponsive_after(self, proposal: Any) -> float | None:
        value = proposal["value"]
        if value is None or (value == 0 and not isinstance(value, bool)):
            return None
        try:
            return _validate.number(proposal["trait"].name, value)
        except (TypeError, ValueError) as exc:
            raise TraitError(str(exc)) from None

    kernel_oom_score_adj = Integer(
        1000,
        config=True,
        help="The oom_score_adj given to the kernel's processes (our local child, and the "
        "session it leads: a wrapper's real kernel too): 1000, the most, makes a kernel the "
        "out-of-memory killer's choice before any process not so marked, the server "
        "included, whatever their sizes (among kernels, the largest). 0: left as they are. A "
        "kernel's score is only ever raised, which needs no privilege.",
    )
    memory_warning = Float(
        0.9,
        allow_none=True,
        config=True,
        help="Warn (the log, the running cell) once when the kernel's memory cgroup uses this "
        "fraction of its limit (less inactive file cache), or its address space this fraction "
        "of its RLIMIT_AS ('ulimit -v'); None: no warning.",
    )
    memory_interrupt = Float(
        None,
        allow_none=True,
        config=True,
        help="Interrupt the kernel (SIGINT, as the interrupt button) once when its memory "
        "cgroup uses this fraction of its limit, so that its cell ends before the "
        "out-of-memory killer ends the kernel (or its address space this fraction of its "
        "RLIMIT_AS, before its allocations fail); None (the default): never.",
    )

    @validate("kernel_oom_score_adj")
    def _check_oom_score_adj(self, proposal: Any) -> int:
        value = proposal["value"]
        if not 0 <= value <= 1000:
            raise TraitError(f"kernel_oom_score_adj must be from 0 to 1000, not {value!r}")
        return int(value)

    @validate("memory_warning", "memory_interrupt")
    def _check_fraction(self, proposal: Any) -> float | None:
        value = proposal["value"]
        if value is not None and not 0 < value <= 1:
            name = proposal["trait"].name
            raise TraitError(f"{name} must be a fraction in (0, 1] or None, not {value!r}")
        return value  # type: ignore[no-any-return]

    @validate("time_to_dead", "first_beat", "interval")
    def _check_timing(self, proposal: Any) -> float | None:
        # A pair the monitor would refuse (interval past time_to_dead / 2) is refused here,
        # when configured, not at each kernel's start, after its process is launched. Config
        # and constructor arguments are all set before this runs (traitlets holds the check
        # until then), so the order they come in cannot make a valid pair fail in between.
        name = proposal["trait"].name
        value = proposal["value"]
        try:
            if name == "interval":
                return None if value is None else _validate.interval(value, self.time_to_dead)
            if name == "time_to_dead":
                result = _validate.time_to_dead(value)  # what a real loop can time
            else:
                result = _validate.number(name, value, allow_zero=name == "first_beat")
            if name == "time_to_dead" and self.interval is not None:
                _validate.interval(self.interval, result)
            return result
        except (TypeError, ValueError) as exc:
            raise TraitError(str(exc)) from None

    @validate("paths")
    def _check_paths(self, proposal: Any) -> int | None:
        value = proposal["value"]
        try:
            # The url is not known yet: only the number is checked here.
            _validate.paths(value, _validate.Endpoint("tcp", "anywhere", None))
        except (TypeError, ValueError) as exc:
            raise TraitError(str(exc)) from None
        return value  # type: ignore[no-any-return]

    def watch(
        self,
        url: str,
        *,
        curve_serverkey: bytes | str | None,
        context: Any,
        log: Log,
        on_event: Callable[[Event], object] | None = None,
    ) -> HeartMonitor:
        """A monitor of the kernel's heart at ``url`` with these settings; ``on_event`` is
        given every event of its timing core."""
        pool = None
        if self.shared_pool:
            # The pool's own lines are about no one kernel: the owner's logger, unadorned.
            pool = shared_pool(log.logger if isinstance(log, KernelLog) else log)
        return HeartMonitor(
            url,
            time_to_dead=self.time_to_dead,
            first_beat=self.first_beat,
            interval=self.interval,
            paths=self.paths,
            context=context,
            curve_serverkey=curve_serverkey,
            pool=pool,
            log=log,
            tally=process_tally() if self.metrics else None,
            on_event=on_event,
        )


def shared_pool(log: Log | None = None) -> HeartbeatPool:
    """The pool shared by every kernel watched from the current event loop.

    Made on first use, with ``log`` for its own lines (a failed socket); it holds no socket
    while no kernel is watched.
    """
    loop = IOLoop.current()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = HeartbeatPool(io_loop=loop, log=log)
    return pool


def drop_shared_pool() -> None:
    """Close and forget the current event loop's pool, if it has one: for a loop about to be
    closed, whose pool would otherwise be forgotten only once the loop is garbage collected."""
    pool = _pools.pop(IOLoop.current(), None)
    if pool is not None:
        pool.close()


def local_child(provisioner: object) -> subprocess.Popen[Any] | None:
    """The kernel's process, when it is provably a child of this process; else None.

    Proof: the provisioner's ``process`` (a ``LocalProvisioner``'s) is a ``subprocess.Popen``
    of the very pid the provisioner reports, so this process launched it. A pid alone proves
    nothing: a remote provisioner's (``gateway_provisioners``) is the kernel's pid on another
    host, and one loaded from saved provisioner info may be anyone's by now. Such a kernel is
    killed through its provisioner, never by signalling that pid here.
    """
    process = getattr(provisioner, "process", None)
    if not isinstance(process, subprocess.Popen):
        return None
    if process.pid != getattr(provisioner, "pid", None):
        return None
    return process


def kill_local_child(process: subprocess.Popen[Any]) -> None:
    """SIGKILL (which also ends a stopped process) a child that has not been reaped.

    ``poll()`` first: it waits for the pid without blocking, which only a child of ours that
    has not been reaped survives, and until it is reaped its pid cannot be anyone else's. A
    child already reaped (``poll()`` has its exit code) is not signalled: its pid may be reused.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


class KernelLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Every line names the kernel; the death line also says its cause and what happens next.

    ``describe(dead)`` is asked at the moment of a heart's death line, with its ``Dead`` event:
    it returns the line's ending (the cause, what happens to the process next), or None, and
    the :class:`~heartbeat._cause.Death` to carry as ``extra["heartbeat_death"]``, or None.

    ``hold(dead)``, if given, is asked first, when the death line's level is logged: a future
    not yet done holds the line until it is (its cause is still being learned: the port of a
    remote kernel's heart, probed), then the line is written, ``describe`` asked then; None
    writes it at once.
    """

    def __init__(
        self,
        logger: Log,
        kernel_id: str | None,
        describe: Callable[[Dead], tuple[str | None, Death | None]],
        hold: Callable[[Dead], asyncio.Future[Any] | None] | None = None,
    ) -> None:
        super().__init__(logger, {})
        self.kernel_id = kernel_id
        self.describe = describe
        self.hold = hold

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log as any adapter does, but a death line that is held waits (see the class), and
        the monitor's own death line is dropped: whether a silence is a death is decided after
        it (``heartbeat._silence``), and the death line then written by :func:`log_heart_death`.
        """
        extra = kwargs.get("extra") or {}
        event = extra.get("heartbeat_event")
        if isinstance(event, Dead) and not extra.get(_DECIDED):
            return
        if self.hold is not None and isinstance(event, Dead) and self.isEnabledFor(level):
            wait = self.hold(event)
            if wait is not None and not wait.done():
                write = super().log
                wait.add_done_callback(lambda _: write(level, msg, *args, **kwargs))
                return
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        """Prefix the kernel id (also given as ``kernel_id`` in the record); complete the
        death line."""
        text = f"Kernel {self.kernel_id}: {msg}" if self.kernel_id else str(msg)
        extra = kwargs["extra"] = {**(kwargs.get("extra") or {}), "kernel_id": self.kernel_id}
        event = extra.get("heartbeat_event")
        if isinstance(event, Dead):
            ending, death = self.describe(event)
            if ending:
                text = f"{text}; {ending}"
            if death is not None:
                extra["heartbeat_death"] = death
        return text, kwargs


def fate(
    process: subprocess.Popen[Any] | None, cause: Cause, then: str, *, provisioned: bool
) -> str:
    """A death line's ending: the cause, what was done to the process, and ``then``, what
    happens next.

    ``process`` is the kernel's process when it is our local child (:func:`local_child`); one
    still there is about to be killed, so this says "killed". Otherwise ``provisioned`` says
    whether the kernel's provisioner has a process to kill (a remote kernel, say), which it is
    asked to do.
    """
    said = f"it {cause.describe()}"
    if process is None:
        if provisioned:
            return (
                f"{said}; its process is no child of this one: killing it through its "
                f"provisioner; {then}"
            )
        return f"{said}; {then}"
    if process.returncode is not None:
        return f"{said} (process {process.pid}); {then}"
    return f"{said}; killed its process {process.pid}; {then}"


#: Marks a death line written once the silence was decided to be a death.
_DECIDED = "heartbeat_decided"


def log_heart_death(log: KernelLog, monitor: HeartMonitor, dead: Dead) -> None:
    """Write the death line of a heart whose silence was decided to be a death: the monitor's
    own line (which :class:`KernelLog` drops), with ``dead`` (the silence decided on)."""
    log.warning(
        "heart at %s is dead: no reply for %.3f s (time_to_dead %g s)",
        monitor.url,
        dead.silent_for,
        monitor.time_to_dead,
        extra={"heartbeat_event": dead, _DECIDED: True},
    )


def log_process_death(logger: Log, death: Death, then: str) -> None:
    """Write the one line of a death seen by its process's exit (a heart's death has the
    monitor's line): the kernel, its process, the cause in words and ``then``, what happens
    next, at WARNING, with the death as ``extra["heartbeat_death"]``. An end the kernel made
    itself (``Cause.asked_for``: exit code 0) is no death: INFO, as ``extra["heartbeat_exit"]``."""
    log = KernelLog(logger, death.kernel_id, lambda dead: (None, None))
    process = f"process {death.pid}" if death.pid is not None else "its process"
    if death.cause.asked_for:
        # exit() or quit() in a cell: the end the user asked for, said at INFO, and no death
        # (not counted, no event, no cell notice: the front end shows the exit itself).
        log.info(
            "%s ended: it %s; %s",
            process,
            death.cause.describe(),
            then,
            extra={"heartbeat_exit": death},
        )
        return
    log.warning(
        "%s died: it %s; %s",
        process,
        death.cause.describe(),
        then,
        extra={"heartbeat_death": death},
    )
