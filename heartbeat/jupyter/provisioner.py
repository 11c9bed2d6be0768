"""``HeartbeatProvisioner``: a kernel watched by the provisioner that launched it, by its heart
and by its process's exit.

A kernel provisioner is chosen by the kernel spec, not by the kernel manager, so this works
wherever a kernel name can be given and no kernel manager class can: ``jupyter execute
--kernel_name=...``, ``papermill -k ...``, nbclient, and any stock kernel manager. When the heart
is declared dead, the process is killed, so the manager's next look at it (``is_alive()``, a
restarter's poll, nbclient's check every second) finds the kernel dead. When the process dies
of itself (a SIGKILL from the out-of-memory killer, a crash, an exit), its exit is seen at once
and gets one line with its cause, before that next look says only "Kernel died". ``heartbeat
kernelspec`` installs a kernel spec that selects it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from signal import SIGINT
from typing import Any, ParamSpec, TypeVar

from jupyter_client.manager import AsyncKernelManager, KernelManager
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from tornado.ioloop import IOLoop
from traitlets import Instance

from heartbeat._cause import Death
from heartbeat._judge import Dead, Event
from heartbeat._silence import Heart, Verdict
from heartbeat.connection import hb_url
from heartbeat.jupyter._death import DeathWatch, Witness
from heartbeat.jupyter._loop_thread import LoopThread
from heartbeat.jupyter._responsive_owners import ProvisionerResponsive
from heartbeat.jupyter._silent import HeartSilences
from heartbeat.jupyter._watched import _HeartbeatMixin
from heartbeat.jupyter.kernel import (
    HeartbeatSettings,
    KernelLog,
    fate,
    kill_local_child,
    local_child,
    log_heart_death,
    log_process_death,
)
from heartbeat.jupyter.metrics import count_death
from heartbeat.monitor import HeartMonitor

# What happens next, as far as a provisioner knows: whether the kernel is restarted is its
# kernel manager's decision, taken when it next looks.
_THEN = "its kernel manager will find it dead"
P = ParamSpec("P")
R = TypeVar("R")
# How long a killed kernel process may take to be reaped.
_REAP_TIMEOUT = 5.0


class HeartbeatProvisioner(ProvisionerResponsive, LocalProvisioner, HeartbeatSettings):  # type: ignore[metaclass]
    """A local kernel provisioner that kills its kernel once the kernel's heart is dead, and
    tells why its kernel died, heart or process, in one line through the app's logger.

    Its settings (``time_to_dead``, ``first_beat``, ``interval``, ``shared_pool``) come from
    the kernel spec: ``metadata.kernel_provisioner.config``. Under one of this package's kernel
    managers (``HeartbeatKernelManager``), which watches the kernel itself, it leaves the watch
    to that manager: one watch, and one line, a death.
    """

    _monitor: HeartMonitor | None = None
    _thread: LoopThread | None = None  # the watch's loop, under a blocking kernel manager
    _death_watch = Instance(DeathWatch, args=())
    _death_of_heart: Death | None = None  # recorded by the heart's death line, if it was written
    _silences: HeartSilences | None = None  # what its heart's silences mean (_silent.py)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._reaping = threading.RLock()

    @property
    def last_death(self) -> Death | None:
        """The last death of this provisioner's kernel (heart or process), as a kernel
        manager's ``last_death``; None before any. Its ``restarting`` is False: whether the
        kernel is restarted is its manager's to decide. Under a manager that watches the
        kernel itself, that manager's ``last_death``."""
        manager = self._watching_manager()
        return self._death_watch.last if manager is None else manager.last_death

    @property
    def heart_kind(self) -> Heart:
        """As a kernel manager's ``heart_kind``: ``"threaded"``, ``"main-loop"`` or
        ``"unknown"``; under a manager that watches the kernel itself, that manager's."""
        manager = self._watching_manager()
        if manager is not None:
            return manager.heart_kind
        return Heart.UNKNOWN if self._silences is None else self._silences.silence.heart

    def _watching_manager(self) -> _HeartbeatMixin | None:
        parent = self.parent
        return parent if isinstance(parent, _HeartbeatMixin) else None

    async def post_launch(self, **kwargs: Any) -> None:
        """Start watching the kernel just launched: its heart, and its process's exit."""
        await super().post_launch(**kwargs)
        self._stop_watching()
        self._death_of_heart = None
        if self._watching_manager() is not None:
            # Watched twice, each death would get two lines, and whichever watch saw the
            # death first would decide what the other reports (a heart's kill, read back as
            # a SIGKILL). The manager also knows what happens next.
            self.log.debug("Kernel %s is watched by its kernel manager", self.kernel_id)
            return
        try:
            if self._calls_block():
                self._thread = LoopThread(f"heartbeat: kernel {self.kernel_id}")
                self._thread.start()
                self._thread.call(self._start_watching)
            else:
                self._start_watching()
        except BaseException:
            # Out of file descriptors, a heart's url refused...: the process just launched
            # would run on, unwatched and listed nowhere (its manager's start fails with
            # this). It is ended and reaped first.
            self._stop_watching()
            await self._end_launched()
            raise

    def _calls_block(self) -> bool:
        # jupyter_client's blocking KernelManager (and its subclasses: the IOLoop one,
        # qtconsole's) runs this provisioner's coroutines on a loop that may run only during
        # its calls: the watch then runs on a loop of its own (heartbeat.jupyter._loop_thread).
        parent = self.parent
        return isinstance(parent, KernelManager) and not isinstance(parent, AsyncKernelManager)

    def _start_watching(self) -> None:
        # On the loop the watch runs on; what it calls back runs there too, one at a time with
        # this provisioner's reaping (see _reaped_apart).
        self._death_watch.watch(local_child(self), self._reaped_apart(self._on_exit))
        self._death_watch.memory.start(
            local_child(self),
            oom_score_adj=self.kernel_oom_score_adj,
            warning=self.memory_warning,
            interrupt=self.memory_interrupt,
            log=KernelLog(self.log, self.kernel_id, lambda dead: (None, None)),
            interrupt_kernel=lambda: IOLoop.current().add_callback(self.send_signal, SIGINT),
            lock=self._reaping,  # it polls the process, as the exit watch does
        )
        heart = hb_url(dict(self.connection_info), f"kernel {self.kernel_id}")
        log = KernelLog(self.log, self.kernel_id, self._reaped_apart(self._death_fate))
        silences = self._silences = HeartSilences(
            owned=True,
            declared=self.heart_answers_while_busy,
            log=log,
            process=lambda: local_child(self),
            info=lambda: dict(self.connection_info),
            on_death=self._on_heart_dead,
            guard=self._reaped_apart,
        )
        monitor = self._monitor = self.watch(
            heart.url,
            curve_serverkey=heart.curve_serverkey,
            context=None,
            log=log,
            on_event=lambda event: self._heart_event(silences, event),
        )
        silences.start(monitor)  # its answers watched from the heart's first answer

    def _heart_event(self, silences: HeartSilences, event: Event) -> None:
        silences.on_event(event)
        self._responsive_on_event(event)

    def _reaped_apart(self, fn: Callable[P, R]) -> Callable[P, R]:
        # A watch on a thread of its own reads and signals the process while the manager's
        # thread may poll it (which reaps it): one at a time, so that the kill of a process
        # found not reaped cannot land on its pid reused meanwhile.
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._reaping:
                return fn(*args, **kwargs)

        return guarded

    async def poll(self) -> int | None:
        """As a local provisioner's, one at a time with what the watch does to the process."""
        with self._reaping:
            return await super().poll()

    async def _end_launched(self) -> None:
        process = local_child(self)
        if process is not None:
            kill_local_child(process)  # now, whatever the kill below does
        try:
            await self.kill()  # its process group
            await asyncio.wait_for(self.wait(), _REAP_TIMEOUT)  # reaped, its pipes closed
        except Exception:
            self.log.exception("Kernel %s: could not end it after its start failed", self.kernel_id)

    async def shutdown_requested(self, restart: bool = False) -> None:
        """The kernel is asked to end (a graceful shutdown or restart): from now on it is
        judged by its process alone, as stock (a kernel frozen meanwhile is its manager's to
        end), and its exit is no death."""
        self._stop_watching()
        await super().shutdown_requested(restart=restart)

    async def cleanup(self, restart: bool = False) -> None:
        """Stop watching (the exit watch's pidfd is closed), then clean up as a local
        provisioner does."""
        self._stop_watching()
        await super().cleanup(restart=restart)

    def _stop_watching(self) -> None:
        # Once this returns nothing fires: on a loop thread, the watch is stopped there (after
        # whatever callback is running), then the thread ends (not from its own callbacks: it
        # ends at the next stop from outside, a clean-up or a new launch).
        thread = self._thread
        if thread is not None and not thread.in_thread():
            self._thread = None
            if thread.running:
                thread.call(self._unwatch)
                thread.stop()
                return
        self._unwatch()

    def _unwatch(self) -> None:
        self._stop_responsive_watch()
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.stop()
        self._death_watch.stop()
        self._death_watch.memory.stop()
        if self._silences is not None:
            self._silences.close()

    def _record(self, silence: float | None, process: Any = None) -> Death:
        silences = self._silences
        kind = None if silences is None else silences.kind
        death = self._death_watch.record(
            self.kernel_id,
            local_child(self) if process is None else process,
            silence,
            restarting=False,
            answered=silences is not None and silences.silence.answered,
            # Judged starting and never answered since (see the managers' _record_death).
            never_answered=silences is not None and silences.silence.state is Verdict.STARTING,
            language=None if kind is None else kind.language,
        )
        return self._unresponsive_death(death)

    def _announce(self, death: Death) -> None:
        """Every death this provisioner sees passes here once, after its line (if its level is
        logged): the one place where others are told of it (the process's metrics)."""
        if self.metrics:
            count_death(death)

    def _on_exit(self, witness: Witness) -> None:
        # Called by the exit watch in the loop's turn that saw the exit, not a turn later:
        # whoever polls the process (nbclient, each second) must find the line written.
        if getattr(self.parent, "shutting_down", False):
            # Asked to end: killed by a shutdown or restart ``now``, or by the interrupt a
            # graceful one begins with. No death.
            return
        self._stop_watching()  # its heart would only report this death again, later
        death = self._record(None, witness.process)
        log_process_death(self.log, death, _THEN)
        if not death.cause.asked_for:  # exit() in a cell: its line only, no death
            self._announce(death)

    def _death_fate(self, dead: Dead) -> tuple[str, Death]:
        process = local_child(self)
        death = self._death_of_heart = self._record(dead.silent_for)
        return fate(process, death.cause, _THEN, provisioned=self.has_process), death

    def _on_heart_dead(self, monitor: HeartMonitor, silence: float) -> None:
        # A silence decided to be a death (heartbeat._silence): its line, then the kill.
        dead = Dead(silence)
        log_heart_death(KernelLog(self.log, self.kernel_id, self._death_fate), monitor, dead)
        self._death_watch.stop()  # its exit, now or after the kill, is this death's
        death = self._death_of_heart
        if death is None:
            # The heart's line was not written (its level is not logged): recorded here.
            death = self._record(silence)
        process = local_child(self)  # a subclass may report a pid that is not our child
        if self.has_process and (process is None or process.poll() is None):
            # kill(): the process group, or whatever killing means to a subclass; scheduled
            # first, so that nothing the direct kill raises can leave the kernel alive.
            IOLoop.current().add_callback(self.kill)
            if process is not None:
                kill_local_child(process)  # now: a frozen process must never outlive its kernel
        self._announce(death)
