"""What the kernel managers and the provisioner add to watch whether their kernel answers (see
:mod:`heartbeat.jupyter._responsive`): the stack hook put into the kernel's command, the watch
started and stopped with the heart monitor, and, with ``kill_unresponsive_after``, the kill and
its death's cause "unresponsive".

Each is a mixin placed before jupyter_client's classes in its owner's MRO, so that the owner's
own files only call ``_start_responsive_watch`` / ``_stop_responsive_watch`` and pass a death
through ``_unresponsive_death``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio
from tornado.ioloop import IOLoop

from heartbeat import _tracebacks
from heartbeat._cause import Cause, Death
from heartbeat._judge import Beat
from heartbeat._responsive import Answering, GiveUp
from heartbeat.jupyter._responsive import Report, ResponsiveWatch, connector
from heartbeat.jupyter._responsive_shown import episodes, show_answer, show_report, show_unwatched
from heartbeat.jupyter._stacks import StackFile, prepare
from heartbeat.jupyter.kernel import kill_local_child, local_child

_NOT_IPYKERNEL = (
    "its command is not `python -m ipykernel_launcher ...` (the stack hook only enters "
    "ipykernel's launcher)"
)
_NOT_OURS = "its process is no child of this one (only our own kernels are asked)"


class _Responsive:
    """What both owners share: the settings are the owner's (``HeartbeatSettings``)."""

    _responsive: ResponsiveWatch | None = None
    _responsive_began = False  # started in this run of the heart's monitor (its first answer)
    _stack_file: StackFile | None = None
    _why_no_stacks: str | None = None
    _kill_cause: Cause | None = None  # a kill for not answering, until its death is recorded

    _unresponsive_callbacks: list[Callable[[Report | None], object]] | None = None

    def add_unresponsive_callback(self, callback: Callable[[Report | None], object]) -> None:
        """Call ``callback(report)`` on the loop when the kernel stops answering (its
        :class:`~heartbeat.jupyter._responsive.Report`), and ``callback(None)`` when it answers
        again."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if self._unresponsive_callbacks is None:
            self._unresponsive_callbacks = []
        self._unresponsive_callbacks.append(callback)

    def remove_unresponsive_callback(self, callback: Callable[[Report | None], object]) -> None:
        """Stop calling ``callback``; one never added is ignored."""
        with contextlib.suppress(ValueError):
            (self._unresponsive_callbacks or []).remove(callback)

    def _tell_unresponsive(self, report: Report | None) -> None:
        for callback in [*(self._unresponsive_callbacks or [])]:
            try:
                callback(report)
            except Exception:
                self.log.exception("unresponsive callback %r failed", callback)  # type: ignore[attr-defined]

    @property
    def unresponsive(self) -> Report | None:
        """The report of the kernel's current episode of not answering; None while it answers
        (or is not watched)."""
        watch = self._responsive
        return None if watch is None else watch.report

    def _watches_responses(self) -> bool:
        return bool(getattr(self, "unresponsive_after", None))

    def _hook(self, cmd: list[str], env: object, kernel_id: str | None) -> list[str]:
        # A new launch: a new stack file, and nothing of the last one's kill.
        self._kill_cause = None
        self._drop_stack_file()
        self._why_no_stacks = None
        if not self._watches_responses():
            return cmd
        if isinstance(env, dict):
            cmd, self._stack_file = prepare(list(cmd), env, kernel_id)
        if self._stack_file is None:
            self._why_no_stacks = _NOT_IPYKERNEL
        return cmd

    def _responsive_on_event(self, event: object) -> None:
        """Start the watch of its answers at its heart's first answer (the kernel is up: a
        slow start is never judged), once a run of its heart's monitor."""
        if isinstance(event, Beat) and self._responsive is None and not self._responsive_began:
            self._responsive_began = True
            self._start_responsive_watch()  # type: ignore[attr-defined]

    def _drop_stack_file(self) -> None:
        stacks, self._stack_file = self._stack_file, None
        if stacks is not None:
            stacks.close()

    def _watch_responses(
        self,
        *,
        kernel_id: str | None,
        log: Any,
        connect: Any,
        session: Any,
        process: subprocess.Popen[Any] | None,
        running: Any,
    ) -> None:
        self._stop_responsive_watch()
        if not self._watches_responses():
            return
        metrics = bool(getattr(self, "metrics", False))
        if metrics:
            episodes()  # on /metrics from the first kernel watched: 0 unresponsive, 0 episodes
        watch = self._responsive = ResponsiveWatch(
            kernel_id=kernel_id,
            after=float(self.unresponsive_after),  # type: ignore[attr-defined]
            log=log,
            connect=connect,
            session=session,
            process=process,
            stacks=self._stack_file if process is not None else None,
            why_no_stacks=self._why_no_stacks if process is not None else _NOT_OURS,
            running=running,
            # Not carried over from the kernel's last run: a kernel is judged only once it has
            # answered in this one (a restarted kernel slow to come up is not "hung")... unless
            # it is an ipykernel we launched (its command took the stack hook), watched from its
            # heart's first answer on (it is up): its control is answered from a thread of its
            # own, so a cell stuck holding the GIL before the first probe was read is reported.
            known="own-thread" if process is not None and self._stack_file is not None else None,
            give_up_after=self.kill_unresponsive_after,  # type: ignore[attr-defined]
            on_give_up=self._give_up_unresponsive,
            on_report=lambda report: self._shown(report, metrics),
            on_answer=lambda event: self._answered(kernel_id, event, metrics),
            on_unwatched=lambda: show_unwatched(metrics=metrics),
        )
        watch.start()

    def _shown(self, report: Report, metrics: bool) -> None:
        show_report(self, report, metrics=metrics)
        self._tell_unresponsive(report)

    def _answered(self, kernel_id: str | None, event: Answering, metrics: bool) -> None:
        show_answer(self, kernel_id, event, metrics=metrics)
        self._tell_unresponsive(None)

    def _stop_responsive_watch(self) -> None:
        self._responsive_began = False  # the next run of the heart's monitor starts it again
        watch, self._responsive = self._responsive, None
        if watch is not None:
            watch.stop()

    def _give_up_unresponsive(self, event: GiveUp) -> None:
        # kill_unresponsive_after: killed as a dead heart's process is; its death, seen by its
        # exit or by the restarter, is recorded with this cause (_unresponsive_death).
        self._kill_cause = Cause(
            "unresponsive", signal=int(signal.SIGKILL), silence=event.silent_for
        )
        watch = self._responsive
        report = None if watch is None else watch.report
        stacks = None if report is None else report.stacks()
        self.log.warning(  # type: ignore[attr-defined]
            "Kernel %s has not answered for %.1f s (kill_unresponsive_after %s s): killing it%s",
            getattr(self, "kernel_id", None),
            event.silent_for,
            f"{self.kill_unresponsive_after:g}",  # type: ignore[attr-defined]
            "" if stacks is None else f"; its threads' stacks:\n{stacks}",
        )
        self._kill_for_not_answering()

    def _kill_for_not_answering(self) -> None:
        raise NotImplementedError

    def _unresponsive_death(self, death: Death) -> Death:
        """``death`` as this part knows it better, kept as ``last_death`` too: the cause
        "unresponsive" if it is that of a kill for not answering (a SIGKILL, or a kernel not
        ours whose cause is not known); for a crash (a fatal signal), the Python frames it died
        in, which the kernel's faulthandler wrote."""
        cause, self._kill_cause = self._kill_cause, None
        if death.cause.kind == "signal" and death.cause.signal != signal.SIGKILL:
            cause = self._crash_cause(death.cause)  # it died of something else: a crash
        elif death.cause.kind not in ("signal", "unknown"):
            cause = None
        if cause is None:
            return death
        death = dataclasses.replace(death, cause=cause)
        self._death_watch.last = death  # type: ignore[attr-defined]
        return death

    def _crash_cause(self, cause: Cause) -> Cause | None:
        stacks = self._stack_file
        crash = None if stacks is None else stacks.crash()
        if stacks is None or crash is None:
            return None
        crashed = next((t for t in crash.threads if t.current), None)
        if crashed is None or not crashed.frames:
            return None
        # Every thread's stack, for whoever debugs it; the line itself names the frames.
        self.log.debug(  # type: ignore[attr-defined]
            "Kernel %s: Fatal Python error: %s\n%s",
            getattr(self, "kernel_id", None),
            crash.fatal,
            _tracebacks.render(crash, stacks.header()),
        )
        return dataclasses.replace(cause, where=_tracebacks.innermost(crashed))


class ResponsiveMixin(_Responsive):
    """What a kernel manager adds: the hook in its kernel's command (``pre_start_kernel``),
    and the watch made from its connection info and session."""

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        cmd, kw = await super()._async_pre_start_kernel(**kw)  # type: ignore[misc]
        return self._hook(cmd, kw.get("env"), self.kernel_id), kw  # type: ignore[attr-defined]

    def _start_responsive_watch(self) -> None:
        manager: Any = self

        def running() -> bool | None:
            # jupyter_server's kernel managers follow the kernel's status on iopub.
            state = getattr(manager, "execution_state", None)
            return {"busy": True, "idle": False}.get(state) if isinstance(state, str) else None

        self._watch_responses(
            kernel_id=manager.kernel_id,
            log=manager.log,
            connect=connector(manager),
            session=manager.session,
            process=manager._local_child(),
            running=running,
        )

    def _kill_for_not_answering(self) -> None:
        # Its process group too, through its provisioner; then the restarter, as for a death.
        IOLoop.current().add_callback(self._kill_and_reap)  # type: ignore[attr-defined]


class ProvisionerResponsive(_Responsive):
    """What the provisioner adds, when no kernel manager of ours watches its kernel: the hook
    in ``pre_launch``, the watch made from its connection info (the session key there)."""

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Prepare the launch as a local provisioner does; then put the stack hook in."""
        kwargs = await super().pre_launch(**kwargs)  # type: ignore[misc]
        if getattr(self, "_watching_manager", lambda: None)() is not None:
            return kwargs  # the manager puts it in, and watches
        kwargs["cmd"] = self._hook(kwargs["cmd"], kwargs.get("env"), self.kernel_id)  # type: ignore[attr-defined]
        return kwargs

    def _start_responsive_watch(self) -> None:
        from jupyter_client.session import Session

        info = dict(self.connection_info)  # type: ignore[attr-defined]
        key = info.get("key", b"")
        session = Session(
            key=key.encode() if isinstance(key, str) else key,
            signature_scheme=str(info.get("signature_scheme", "hmac-sha256")),
        )
        self._watch_responses(
            kernel_id=self.kernel_id,  # type: ignore[attr-defined]
            log=self.log,  # type: ignore[attr-defined]
            connect=lambda: _control_socket(info),
            session=session,
            process=local_child(self),
            running=lambda: (
                None
            ),  # not followed here: only a kernel with a control thread is judged
        )

    def _kill_for_not_answering(self) -> None:
        process = local_child(self)
        IOLoop.current().add_callback(self.kill)  # type: ignore[attr-defined]
        if process is not None:
            kill_local_child(process)


def _control_socket(info: dict[str, Any]) -> zmq.asyncio.Socket:
    transport = info.get("transport", "tcp")
    ip, port = info["ip"], info["control_port"]
    url = f"tcp://{ip}:{port}" if transport == "tcp" else f"ipc://{ip}-{port}"
    socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    public, secret = info.get("curve_publickey"), info.get("curve_secretkey")
    if public and secret:
        socket.curve_secretkey = secret.encode() if isinstance(secret, str) else secret
        socket.curve_publickey = public.encode() if isinstance(public, str) else public
        socket.curve_serverkey = socket.curve_publickey
    socket.connect(url)
    return socket
