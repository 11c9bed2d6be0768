"""Whether a kernel whose heart beats still answers: the adapter of ``heartbeat._responsive``.

It asks the kernel ``kernel_info_request`` on its control channel (its own DEALER socket, the
manager's session key; the request is built and its reply read by ``_kernel_info``), reads the
process's CPU time and its main thread's state in ``/proc``, tells the pure
:class:`~heartbeat._responsive.Responsiveness` and does what it says: probes, one WARNING line
when the kernel stops answering (with where its main thread is, from
:mod:`heartbeat.jupyter._stacks`), an INFO line when it answers again. Nothing is done to the
kernel.

:class:`ResponsiveMixin` is what the kernel managers add: the stack hook put into the kernel's
command, the watch started and stopped with the heart monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from tornado.ioloop import IOLoop

import heartbeat.jupyter._kernel_info as kernel_info
from heartbeat import _responsive as core
from heartbeat import _tracebacks
from heartbeat._cause import stat_state
from heartbeat._responsive import Answering, AnswersFrom, GiveUp, Probe, Unresponsive
from heartbeat._tracebacks import Dump, Header
from heartbeat.jupyter._stacks import StackFile
from heartbeat.monitor import Log

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Report:
    """A kernel that stopped answering: what the decision said, its threads' stacks (None, and
    ``why_no_stack``, where they could not be had) and the stack file's header."""

    kernel_id: str | None
    event: Unresponsive
    dump: Dump | None
    header: Header | None
    why_no_stack: str | None

    def main_frames(self) -> str | None:
        """The main thread's innermost frames in a line (the cell's line first)."""
        if self.dump is None:
            return None
        main = self.dump.main(self.header)
        return None if main is None else _tracebacks.innermost(main)

    def stacks(self, *, brief: bool = False) -> str | None:
        """Every thread's stack, main thread first, as lines (``brief``: see
        :func:`heartbeat._tracebacks.render`)."""
        if self.dump is None:
            return None
        return _tracebacks.render(self.dump, self.header, brief=brief)

    def notice(self, queued: bool = False) -> str:
        """What a cell is told (the running one, or with ``queued`` one sent meanwhile): the
        kernel's state in words, then its threads' stacks."""
        event = self.event
        where = self.main_frames()
        who = "this cell waits behind a kernel that" if queued else "the kernel"
        said = (
            f"KernelUnresponsive: {who} has not answered for {event.silent_for:.0f} s though it "
            f"is alive: {event.describe()}"
        )
        if where is not None:
            said += f"; main thread at {where}"
        said += (
            ". Interrupt it, or restart the kernel (see kernel-heartbeat's page 'My kernel is "
            "busy forever')."
        )
        stacks = self.stacks(brief=True)
        return f"{said}\n\n{stacks}\n" if stacks else f"{said}\n"


def read_process(pid: int) -> tuple[float | None, str | None]:
    """The process's CPU seconds and its main thread's state letter; None where unreadable."""
    cpu = state = None
    with (
        contextlib.suppress(OSError, ValueError),
        open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat,
    ):
        cpu = core.stat_cpu(stat.read(), _TICKS)
    with (
        contextlib.suppress(OSError, ValueError),
        open(f"/proc/{pid}/task/{pid}/stat", encoding="ascii", errors="replace") as stat,
    ):
        state = stat_state(stat.read())
    return cpu, state


def answers_from(content: dict[str, Any], running: bool | None) -> AnswersFrom | None:
    """Where a kernel's control is answered, from its ``kernel_info_reply`` and whether a cell
    was running when it came: ipykernel (6 on) has a control thread; any kernel that answers
    while a cell runs has one too. Others are taken to answer from their main loop."""
    if running:
        return "own-thread"
    if kernel_info.kind(content).implementation == "ipython":
        return "own-thread"
    return "main-loop"


class ResponsiveWatch:
    """The probes of one run of one kernel (made by :class:`ResponsiveMixin`)."""

    def __init__(
        self,
        *,
        kernel_id: str | None,
        after: float,
        log: Log,
        connect: Callable[[], zmq.asyncio.Socket],
        session: Any,
        process: subprocess.Popen[Any] | None,
        stacks: StackFile | None,
        why_no_stacks: str | None,
        running: Callable[[], bool | None],
        known: AnswersFrom | None = None,
        give_up_after: float | None = None,
        on_give_up: Callable[[GiveUp], object] | None = None,
        on_report: Callable[[Report], object] | None = None,
        on_answer: Callable[[Answering], object] | None = None,
        on_unwatched: Callable[[], object] | None = None,
    ) -> None:
        self.kernel_id = kernel_id
        self.core = core.Responsiveness(after, give_up_after=give_up_after)
        self._on_give_up = on_give_up
        self._on_report = on_report
        self._on_answer = on_answer
        self._on_unwatched = on_unwatched
        self.log = log
        self._connect = connect
        self._session = session.clone()
        self.process = process
        self.stacks = stacks
        self._why_no_stacks = why_no_stacks
        self._why_told = False
        self.running = running
        self._known = known
        self._task: asyncio.Task[None] | None = None
        self._reporting: asyncio.Future[None] | None = None
        self._giving_up: asyncio.Future[None] | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._asked: set[str] = set()
        self.report: Report | None = None  # while unresponsive
        self.reports: list[Report] = []

    @property
    def answers_from(self) -> AnswersFrom | None:
        """What the kernel was found to be."""
        return self.core.answers_from

    def start(self) -> None:
        """Begin probing, on the current loop."""
        loop = IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
        self._socket = self._connect()
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        """Stop probing (nothing is logged after this)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        socket, self._socket = self._socket, None
        if socket is not None:
            socket.close(linger=0)
        if self.report is not None:
            self.report = None
            self._tell(self._on_unwatched)

    def _send_probe(self) -> None:
        if self._socket is None:
            return
        msg_id, frames = kernel_info.request(self._session)
        self._asked.add(msg_id)
        if len(self._asked) > 64:
            self._asked.pop()
        with contextlib.suppress(zmq.ZMQError):
            # NOBLOCK: sent at once, no future to wait on (a DEALER queues for its peer).
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK)

    def _read(self, frames: list[bytes]) -> dict[str, Any] | None:
        # The content of a reply to one of our probes (signed with the kernel's key), or None.
        try:
            parent, content = kernel_info.reply(self._session, frames)
        except Exception:
            return None
        if parent not in self._asked:
            return None
        self._asked.discard(parent)
        return content

    async def _run(self) -> None:
        try:
            await self._probe_until_stopped()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never the kernel's fault, and never the owner's problem: said, and no more asked.
            self.log.exception(
                "Kernel %s: its control channel can no longer be asked", self.kernel_id
            )

    async def _probe_until_stopped(self) -> None:
        socket = self._socket
        assert socket is not None
        self._do(self.core.start(time.monotonic(), self._known))
        receive: asyncio.Future[list[bytes]] = socket.recv_multipart()  # type: ignore[assignment]
        try:
            while True:
                delay = max(0.0, self.core.wake_at - time.monotonic())
                await asyncio.wait([receive], timeout=delay)
                if not receive.done() and int(socket.get(zmq.EVENTS)) & zmq.POLLIN:
                    # A reply waits unread: read it before judging.
                    await asyncio.wait([receive], timeout=0.5)
                if receive.done():
                    frames = receive.result()
                    receive = socket.recv_multipart()  # type: ignore[assignment]
                    content = self._read(frames)
                    if content is not None:
                        found = answers_from(content, self.running())
                        self._do(self.core.answered(time.monotonic(), found))
                    continue
                cpu, state = None, None
                if self.process is not None and self.core.needs_process:
                    cpu, state = read_process(self.process.pid)
                self._do(self.core.tick(time.monotonic(), cpu, state, running=self.running()))
        finally:
            receive.cancel()

    def _do(self, events: list[core.Event]) -> None:
        for event in events:
            if isinstance(event, Probe):
                self._send_probe()
            elif isinstance(event, Unresponsive):
                self._reporting = asyncio.ensure_future(self._report(event))
            elif isinstance(event, GiveUp):
                self._giving_up = asyncio.ensure_future(self._give_up(event))
            elif isinstance(event, Answering):
                self._answering(event)

    async def _give_up(self, event: GiveUp) -> None:
        reporting = self._reporting
        if reporting is not None:
            await asyncio.wait([reporting])  # its line and stacks first, then its end
        if self._task is None or self.core.reported is not event.report:
            return  # stopped, or it answered meanwhile
        if self._on_give_up is not None:
            self._on_give_up(event)

    async def _report(self, event: Unresponsive) -> None:
        dump = None
        why = self._why_no_stacks
        if self.stacks is not None:
            dump = await self.stacks.take(self.process)
            why = None if dump is not None else self.stacks.why_not
        if self.core.reported is not event or self._task is None:
            return  # it answered, or the watch stopped, while its stacks were taken
        header = None if self.stacks is None else self.stacks.header()
        report = self.report = Report(self.kernel_id, event, dump, header, why)
        self.reports.append(report)
        where = report.main_frames()
        if where is not None:
            where = f"; main thread at {where}"
        elif why is not None and not self._why_told:
            self._why_told = True  # said once
            where = f"; its stacks cannot be had: {why}"
        else:
            where = ""
        self.log.warning(
            "Kernel %s has not answered on its control channel for %.1f s though its heart "
            "beats: %s%s. %s (see docs/busy-forever.md)",
            self.kernel_id,
            event.silent_for,
            event.describe(),
            where,
            self._what_next(),
            extra={"kernel_id": self.kernel_id, "heartbeat_unresponsive": report},
        )
        self._tell(self._on_report, report)
        stacks = report.stacks()
        if stacks:
            self.log.info(
                "Kernel %s: its threads' stacks:\n%s",
                self.kernel_id,
                stacks,
                extra={"kernel_id": self.kernel_id, "heartbeat_unresponsive": report},
            )

    def _what_next(self) -> str:
        give_up = self.core.give_up_after
        if give_up is None:
            return "Nothing is done to it"
        return f"It is killed if it has not answered after {give_up:g} s (kill_unresponsive_after)"

    def _answering(self, event: Answering) -> None:
        report, self.report = self.report, None
        if report is None:
            return  # its report was not written yet (stacks being taken): nothing to take back
        self.log.info(
            "Kernel %s answers again, after %.1f s without answering",
            self.kernel_id,
            event.silent_for,
            extra={"kernel_id": self.kernel_id, "heartbeat_answering": event},
        )
        self._tell(self._on_answer, event)

    def _tell(self, callback: Callable[..., object] | None, *args: object) -> None:
        # Whoever shows it (the event bus, the metrics): one that raises is logged, no more.
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.log.exception("Kernel %s: %r failed", self.kernel_id, callback)


def connector(manager: Any) -> Callable[[], zmq.asyncio.Socket]:
    """Makes a DEALER connected to ``manager``'s kernel's control channel, as jupyter_client's
    own (its CURVE keys too), in an asyncio view of the manager's context."""

    def connect() -> zmq.asyncio.Socket:
        context = zmq.asyncio.Context.shadow(manager.context.underlying)
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        if getattr(manager, "curve_publickey", None) is not None:
            socket.curve_secretkey = manager.curve_secretkey
            socket.curve_publickey = manager.curve_publickey
            socket.curve_serverkey = manager.curve_publickey
        socket.connect(manager._make_url("control"))
        return socket

    return connect
