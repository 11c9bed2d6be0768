"""The kernel managers' common part: a kernel dead when its process *or its heart* is, its
death seen at once (the exit of a local child is watched, not polled), explained (its cause)
and counted; and the lifecycle steps that must not overlap. The kernel's process itself (ours
or not, killed and reaped, restarted or not) is ``_kernel_process._KernelProcess``, a base;
who is told of a death, ``_death_callbacks._DeathCallbacks``, another."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from tornado.ioloop import IOLoop
from traitlets import Bool, Instance, default
from traitlets.utils.importstring import import_item

from heartbeat._cause import Connection, Death
from heartbeat._judge import Dead, Event
from heartbeat._silence import Heart, Verdict
from heartbeat.jupyter._death import DeathWatch, Witness
from heartbeat.jupyter._death_callbacks import _DeathCallbacks
from heartbeat.jupyter._kernel_process import _KernelProcess
from heartbeat.jupyter._memory_watch import MemoryGuard
from heartbeat.jupyter._proc import HeartProbe
from heartbeat.jupyter._responsive_owners import ResponsiveMixin
from heartbeat.jupyter._silent import HeartSilences
from heartbeat.jupyter.events import prepare
from heartbeat.jupyter.kernel import KernelLog, fate, log_heart_death, log_process_death
from heartbeat.monitor import HeartMonitor


class _HeartbeatMixin(ResponsiveMixin, _DeathCallbacks, _KernelProcess):
    _heart_monitor = Instance(HeartMonitor, allow_none=True)
    _heart_dead = Bool(False)
    _death_noted = Bool(False)
    _death_watch = Instance(DeathWatch, args=())
    # Recorded by the heart's death line, if it was written, with the verdict it is for.
    _death_of_heart: tuple[Dead, Death] | None = None
    # What the current kernel's silences mean (heartbeat._silence, through _silent.py).
    _silences: HeartSilences | None = None
    _verdict: Dead | None = None  # the silence decided to be a death, if any
    _heart_log: KernelLog | None = None

    @property
    def last_death(self) -> Death | None:
        """The last death of this manager's kernel (heart or process): its cause, exit code or
        signal, the silence measured (None for a death seen by the process's exit), when, and
        whether it is being restarted; None before any."""
        return self._death_watch.last

    @property
    def heart_has_beaten(self) -> bool:
        """True once the current kernel's heart has answered a ping (also after its death
        stopped the monitor: whether it beat decides whether its restart keeps its ports)."""
        return self._silences is not None and self._silences.silence.answered

    @property
    def heart_kind(self) -> Heart:
        """Whether the current kernel's heart answers while it is busy, as this manager knows
        it: ``"threaded"`` (its silence is its death), ``"main-loop"`` (silent while a cell
        runs) or ``"unknown"`` (not learned yet, or a kernel not known: silence alone is no
        death). Declared by ``heart_answers_while_busy``, else learned from the kernel's
        ``kernel_info_reply`` after its heart first answers."""
        silences = self._silences
        return Heart.UNKNOWN if silences is None else silences.silence.heart

    def _starting(self) -> bool:
        silences = self._silences
        return silences is not None and silences.silence.state is Verdict.STARTING

    @property
    def _heart_probe(self) -> HeartProbe | None:
        # The probe of the current silence's heart's port: for a kernel not our local child.
        return None if self._silences is None else self._silences.probe

    @default("client_factory")
    def _client_factory_named_by_client_class(self) -> type:
        # What client() makes is what client_class names, unless client_factory itself is set:
        # a subclass or a config that sets only client_class (as qtconsole's QtKernelManager
        # does) gets its own client, not ours. jupyter_client's sync manager does the same; its
        # async manager gives client_factory a fixed default, which this replaces for ours.
        # (jupyter_client's observer of client_class still follows a later change of it.)
        name = str(self.client_class)  # type: ignore[attr-defined]
        factory = import_item(name)
        if not isinstance(factory, type):
            raise TypeError(f"client_class {name!r} does not name a class")
        return factory

    def lifecycle(self) -> AbstractAsyncContextManager[None]:
        """Held by each step of the kernel's lifecycle (start, restart, shutdown, clean-up and
        the restarter's poll), so that they run one at a time. Nothing to hold here: the sync
        manager's steps block its loop, so they cannot overlap."""
        return contextlib.nullcontext()

    async def _async_is_alive(self) -> bool:
        # What jupyter_client itself asks, for the sync manager too (its clients' is_alive(),
        # waiting for a shutdown): a dead heart is a dead kernel there as well.
        if self._heart_dead:
            return False
        return bool(await super()._async_is_alive())  # type: ignore[misc]

    def note_death(self) -> None:
        """Count the current kernel's death once (the restarter, the process's exit and the
        heart may all see it); a death its heart did not report gets its death line here."""
        if self._death_noted:
            return
        self._death_noted = True
        if self._heart_dead:
            self._deaths += 1
            verdict, probe = self._verdict, self._heart_probe
            if probe is not None:
                answered = probe.start()  # begun by the death line already, if it was logged
                if not answered.done():
                    # Told once the port has answered: after the death line, which waits for
                    # the same answer (a future's callbacks run in the order they were added).
                    answered.add_done_callback(lambda _: self._tell_heart_death(verdict, probe))
                    return
            self._tell_heart_death(verdict, probe)
            return
        # Its process died first: the heart would only say later what is known now.
        self._stop_exit_watch()
        self._stop_heart_monitor()
        death = self._record_death(None)
        log_process_death(self.log, death, self._what_next())
        if not death.cause.asked_for:  # exit() in a cell: its line only, no death
            self._deaths += 1
            self._announce(death)

    def _tell_heart_death(self, verdict: Dead | None, probe: HeartProbe | None) -> None:
        # The heart's death line recorded it (with its cause), unless that line's level is not
        # logged: then it is recorded here, from the monitor's verdict.
        told = self._death_of_heart
        if told is not None and told[0] is verdict:
            death = told[1]
        else:
            silence = None if verdict is None else verdict.silent_for
            death = self._record_death(silence, None if probe is None else probe.connection)
        self._announce(death)

    def _record_death(self, silence: float | None, connection: Connection | None = None) -> Death:
        kernel_id = self.kernel_id  # type: ignore[attr-defined]
        death = self._death_watch.record(
            kernel_id,
            self._local_child(),
            silence,
            restarting=self._restarts(),
            connection=connection,
            answered=self.heart_has_beaten,
            # Judged starting and never answered since: a kernel not ours was started before it
            # was watched; one that died before its first verdict says only how it died.
            never_answered=self._owned() and self._starting(),
            language=None
            if self._silences is None or self._silences.kind is None
            else self._silences.kind.language,
        )
        return self._unresponsive_death(death)

    @property
    def memory(self) -> MemoryGuard:
        """The watch of this manager's kernel's memory: ``add_listener`` to be told of its
        warnings (see ``heartbeat.jupyter._memory_watch``)."""
        return self._death_watch.memory

    def _start_memory_watch(self) -> None:
        # Its processes marked for the OOM killer, its cgroup read on schedule; interrupted
        # (opted in) as the interrupt button does, through the manager.
        kernel_id = self.kernel_id  # type: ignore[attr-defined]
        self.memory.start(
            self._local_child(),
            oom_score_adj=self.kernel_oom_score_adj,
            warning=self.memory_warning,
            interrupt=self.memory_interrupt,
            log=KernelLog(self.log, kernel_id, lambda dead: (None, None)),
            interrupt_kernel=lambda: IOLoop.current().add_callback(
                self._async_interrupt_kernel  # type: ignore[attr-defined]
            ),
        )

    def _start_exit_watch(self) -> None:
        # Its handling waits for the lifecycle lock: a coroutine, on the next turn of the loop.
        self._death_watch.watch(
            self._local_child(),
            lambda witness: IOLoop.current().add_callback(self._finish_process_death, witness),
        )

    def _stop_exit_watch(self) -> None:
        self._death_watch.stop()

    async def _finish_process_death(self, witness: Witness) -> None:
        # The kernel's process has exited: the restarter is asked at once, not at its next
        # poll (up to 3 s away); without a restarter (autorestart off), the death is noted.
        async with self.lifecycle():
            if self._death_watch.witness is not witness or self.shutting_down:  # type: ignore[attr-defined]
                return  # restarted or shut down meanwhile: that was not this kernel's death
            restarter = self._restarter  # type: ignore[attr-defined]
            restarts = self.autorestart and restarter is not None  # type: ignore[attr-defined]
            if restarts and not self.heart_has_beaten:
                # Died while starting (an interrupt before its handler was set, say): as
                # stock, left to the restarter's own poll, which moves it to new ports. With
                # no restarter, nothing would: its death is noted now, below.
                return
            if restarts:
                polled = restarter.poll()
                if inspect.isawaitable(polled):
                    await polled
            elif not await self._async_is_alive():
                self.note_death()

    def _start_heart_monitor(self) -> None:
        self._stop_heart_monitor()
        self._death_noted = False
        self._death_of_heart = None
        self._verdict = None
        prepare(self)
        url = self._make_url("hb")  # type: ignore[attr-defined]
        key = getattr(self, "curve_publickey", None)

        # A kernel whose process is not our local child has no exit status to tell its death
        # by: its heart's port is asked instead, at each silence (a probe of its own), and its
        # death line waits for it.
        def hold(dead: Dead) -> asyncio.Future[Connection | None] | None:
            probe = self._heart_probe
            return None if probe is None else probe.start()

        log = self._heart_log = KernelLog(
            self.log,
            self.kernel_id,  # type: ignore[attr-defined]
            lambda dead: self._death_fate(dead, self._heart_probe),
            hold,
        )
        silences = self._silences = HeartSilences(
            owned=self._owned(),
            declared=self.heart_answers_while_busy,
            log=log,
            process=self._local_child,
            info=self.get_connection_info,  # type: ignore[attr-defined]
            on_death=self._on_heart_death,
            on_recovered=self._recovered,
            probe_port=True,
            watched=self._watched_on,
        )
        monitor = self.watch(
            url,
            curve_serverkey=key or None,
            context=self.context,  # type: ignore[attr-defined]
            log=log,
            on_event=lambda event: self._heart_event(silences, event),
        )
        self._heart_monitor = monitor
        silences.start(monitor)

    def _heart_event(self, silences: HeartSilences, event: Event) -> None:
        silences.on_event(event)
        self._responsive_on_event(event)  # its answers watched from the heart's first answer

    def _stop_heart_monitor(self) -> None:
        self._stop_responsive_watch()
        if self._heart_monitor is not None:
            self._heart_monitor.stop()
        self._heart_monitor = None
        self._heart_dead = False
        if self._silences is not None:
            self._silences.close()

    def _death_fate(self, dead: Dead, probe: HeartProbe | None) -> tuple[str, Death]:
        death = self._record_death(dead.silent_for, None if probe is None else probe.connection)
        self._death_of_heart = (dead, death)
        ending = fate(
            self._local_child(), death.cause, self._what_next(), provisioned=self._provisioned()
        )
        return ending, death

    def _watched_on(self) -> bool:
        # A kernel not ours whose connection file is gone (jupyter_client's multi-kernel
        # manager forgets it when it next lists its kernels, without shutting it down): no
        # longer watched, counted nor reported.
        if self._owned():
            return True
        files = getattr(self.parent, "kernel_id_to_connection_file", None)
        if not isinstance(files, dict):
            return True
        path = files.get(self.kernel_id)  # type: ignore[attr-defined]
        if path is not None and Path(path).exists():
            return True
        (self._heart_log or self.log).info("connection file gone: no longer watched")
        self.stop_restarter()
        return False

    def _recovered(self) -> None:
        # A kernel not ours, declared dead, answers again: alive again, its next silence a
        # death of its own.
        self._heart_dead = False
        self._death_noted = False
        self._verdict = None

    def _on_heart_death(self, monitor: HeartMonitor, silence: float) -> None:
        process = self._local_child()
        if process is not None and process.returncode is not None and self._death_watch.exit_watch:
            # Its process has exited (local_state reaped it): a death of its process, which its
            # exit watch has seen or sees on this turn, with its own line (and, for a kernel
            # that never answered, the restarter's own poll).
            return
        # The death is recorded, and its handling (a kill through the provisioner, a restart)
        # scheduled, before anything that could raise: the callback guard would swallow it.
        self._heart_dead = True
        dead = self._verdict = Dead(silence)
        if self._heart_log is not None:
            log_heart_death(self._heart_log, monitor, dead)
        self._stop_exit_watch()  # its exit is this death's, already reported
        self.note_death()
        # Scheduled after the probe of its port, if any, has sent its connect (the death line
        # began it, or note_death did): a kill through the provisioner would close that port.
        probe = self._heart_probe
        IOLoop.current().add_callback(self._finish_heart_death, monitor, probe)
        self._kill_now()  # now, not next turn: a frozen process must never outlive its kernel

    async def _finish_heart_death(
        self, monitor: HeartMonitor | None, probe: HeartProbe | None
    ) -> None:
        async with self.lifecycle():
            if monitor is None or self._heart_monitor is not monitor:
                return  # restarted or shut down meanwhile: that took care of the old process
            await self._kill_and_reap()
            if probe is not None:
                # Its death is told (its line, the death callbacks) before the restarter's
                # callbacks say it restarts: the kill was not held up for it, this waits for
                # what is left of the probe's bound (its timeout) at most.
                await asyncio.wait([probe.start()])
            restarter = self._restarter  # type: ignore[attr-defined]
            if self.autorestart and restarter is not None:  # type: ignore[attr-defined]
                # Ask now rather than wait up to a whole polling period.
                polled = restarter.poll()
                if inspect.isawaitable(polled):
                    await polled

    def start_restarter(self) -> None:
        """Start the restarter, the heart monitor that informs it, and the watch of a local
        child's exit (which asks the restarter to poll at once)."""
        if self._closed:
            # A restart has just started a kernel after the manager was cleaned up for good,
            # which nobody would ever shut down. The async manager's lifecycle() keeps this
            # from happening; the sync manager's heart-death handling can still poll its
            # restarter after a clean-up that ran while it awaited the kill.
            IOLoop.current().add_callback(self._kill_and_reap)
            return
        super().start_restarter()  # type: ignore[misc]
        if self.has_kernel or not self._owned():  # type: ignore[attr-defined]
            self._start_heart_monitor()
            self._start_exit_watch()
            self._start_memory_watch()

    def load_connection_info(self, info: Any) -> None:
        """Load the kernel's connection info. A kernel this manager does not own
        (``owns_kernel=False``: started apart, as jupyter_server's external kernels are) is
        watched from then on, by its heart alone (nothing restarts it, nor kills it): from the
        loop's next turn, once a multi-kernel manager has named it (it sets ``kernel_id``
        after this call)."""
        super().load_connection_info(info)  # type: ignore[misc]
        if not self._owned():
            IOLoop.current().add_callback(self._watch_apart)

    def _watch_apart(self) -> None:
        try:
            self.start_restarter()
        except (ValueError, TypeError) as exc:
            # Its connection info names no heart we can reach: one line that says which kernel
            # and what, not a traceback from the loop's callback and a kernel silently unwatched.
            self._stop_heart_monitor()
            ip = getattr(self, "ip", None)
            port = getattr(self, "hb_port", None)
            self.log.error(
                "Kernel %s is not watched: its connection info (transport %r, ip %r, hb_port "
                "%r) names no heart to reach: %s",
                self.kernel_id,  # type: ignore[attr-defined]
                getattr(self, "transport", None),
                ip,
                port,
                exc,
            )

    def _unwatch_if_not_owned(self) -> None:
        # jupyter_client's shutdown of a kernel it does not own returns at once, leaving it
        # running: its watch ends here (its clean-up ends it too).
        if not self._owned():
            self.stop_restarter()

    def stop_restarter(self) -> None:
        """Stop all three; a shutting-down kernel is judged by its process alone."""
        self._death_watch.memory.stop()
        self._stop_exit_watch()
        self._stop_heart_monitor()
        super().stop_restarter()  # type: ignore[misc]
