"""A kernel's silent heart, for its owners (the kernel managers, the provisioner):
``heartbeat._silence`` decides what a silence means from what is learned here (the kind of the
kernel's heart, asked once by ``kernel_info_request``, built and read by ``_kernel_info``; the
state of its local process; what its heart's port says), and :class:`HeartSilences` does what
it says, writing the lines of a silence that is no death."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections.abc import Callable
from typing import Any

import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from tornado.ioloop import IOLoop

import heartbeat.jupyter._kernel_info as kernel_info
from heartbeat import _silence
from heartbeat._cause import Connection
from heartbeat._judge import Beat, Event
from heartbeat._silence import Decision, Heart, Process, Silence, Verdict
from heartbeat.jupyter._kernel_info import Kind
from heartbeat.jupyter._proc import HeartProbe, read_state
from heartbeat.monitor import HeartMonitor, Log

#: Seconds to wait for a ``kernel_info_reply`` before the kernel's kind stays unknown (busy in
#: a long cell, a main-loop kernel answers its shell only after it).
KIND_TIMEOUT = 120.0
#: Seconds its control channel is given before the same is asked on its shell: threaded kernels
#: (ipykernel, xeus) answer on control even while a cell runs; IRkernel answers only on shell.
SHELL_AFTER = 2.0


async def _reply(channel: Any, msg_id: str, timeout: float) -> dict[str, Any] | None:
    # The content of the reply to msg_id on one of the client's channels (read as its
    # get_msg(timeout) does: its socket polled, then a message read), or None in time.
    socket, session = channel.socket, channel.session
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (left := end - loop.time()) > 0:
        if not await socket.poll(int(left * 1000)):
            return None
        parent, content = kernel_info.reply(session, await socket.recv_multipart())
        if parent == msg_id:
            return content
    return None


def _ask(channel: Any, timeout: float) -> asyncio.Future[dict[str, Any] | None]:
    # kernel_info_request sent on one of the client's channels; its reply awaited.
    msg_id, frames = kernel_info.request(channel.session)
    channel.socket.send_multipart(frames)
    return asyncio.ensure_future(_reply(channel, msg_id, timeout))


async def ask_kind(
    info: dict[str, Any], timeout: float = KIND_TIMEOUT, shell_after: float = SHELL_AFTER
) -> Kind | None:
    """Ask the kernel at ``info`` (its connection info, with its key) for its
    ``kernel_info_reply``, on control, then on shell too; its kind, or None if it did not
    answer within ``timeout`` seconds. A short-lived client of its own, closed on return (and
    when cancelled)."""
    client = AsyncKernelClient(context=zmq.asyncio.Context.instance())
    client.load_connection_info(info)  # type: ignore[arg-type]
    client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=True)
    waiting: list[asyncio.Future[dict[str, Any] | None]] = []
    try:
        waiting.append(_ask(client.control_channel, timeout))
        done, _ = await asyncio.wait(waiting, timeout=shell_after)
        if not done or waiting[0].result() is None:
            waiting.append(_ask(client.shell_channel, timeout))
        pending = [w for w in waiting if not w.done()]
        reply = next((w.result() for w in waiting if w.done() and w.result() is not None), None)
        while reply is None and pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending = [w for w in pending if not w.done()]
            reply = next((w.result() for w in done if w.result() is not None), None)
        return None if reply is None else kernel_info.kind(reply)
    finally:
        for wait in waiting:
            wait.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiting, return_exceptions=True)
        client.stop_channels()


def local_state(process: subprocess.Popen[Any]) -> Process:
    """The state of the kernel's local child now: gone (exited: ``poll()`` reaps it, or a
    zombie), stopped, or running."""
    if process.poll() is not None:
        return Process.GONE
    state = read_state(process.pid)
    if state in ("Z", "X"):
        return Process.GONE
    if state in ("T", "t"):
        return Process.STOPPED
    return Process.RUNNING


def kind_line(kind: Kind, heart: Heart, declared: bool) -> str:
    """The line that says what the kernel is, once its ``kernel_info_reply`` is read, and so
    what its silent heart will mean."""
    said = f"kernel_info_reply: implementation {kind.implementation!r}, language {kind.language!r}"
    how = "as declared (heart_answers_while_busy)" if declared else "so"
    if heart is Heart.THREADED:
        return f"{said}: its heart answers while it is busy, {how}: a silent heart is its death"
    if heart is Heart.MAIN_LOOP:
        return (
            f"{said}: its heart is answered from its main loop, {how}: silent while a cell runs, "
            "which is no death"
        )
    return f"{said}: not known to answer its heart while busy: silence alone is no death"


def heart_words(heart: Heart, kind: Kind | None) -> str:
    """Why this kernel's silent heart is not taken for its death, in words."""
    name = None if kind is None else kind.implementation
    if heart is Heart.MAIN_LOOP:
        who = name or "this kernel"
        return (
            f"{who} answers its heart from its main loop, which is silent while a cell runs "
            "(no death while its process runs)"
        )
    if name is None:
        return (
            "its heart is not known to answer while the kernel is busy (its kind is not learned "
            "yet; set heart_answers_while_busy to declare it)"
        )
    return (
        f"its heart is not known to answer while the kernel is busy (kernel_info_reply's "
        f"implementation {name!r}; set heart_answers_while_busy to declare it)"
    )


def silence_line(
    verdict: Verdict, silence: float, process: subprocess.Popen[Any] | None, why: str
) -> str:
    """The line of a silence that is no death (``verdict`` starting or silent), logged once."""
    runs = (
        "its process is no child of this one"
        if process is None
        else (f"its process {process.pid} runs")
    )
    if verdict is Verdict.STARTING:
        return (
            f"heart has not answered in {silence:.1f} s since the kernel started; {runs}: "
            "waiting for it to come up (a slow start is no death)"
        )
    return f"heart silent for {silence:.1f} s; {runs}: not a death, watching on: {why}"


def answered_line(ended: Verdict, silence: float) -> str:
    """The line of a heart that answers again, ending a silence (``ended``'s verdict)."""
    if ended is Verdict.STARTING:
        return f"heart answered, {silence:.1f} s after the kernel started: it is up"
    if ended is Verdict.DEATH:
        return (
            f"heart answers again after {silence:.1f} s of silence: the kernel recovered, and is "
            "alive again"
        )
    return f"heart answers again after {silence:.1f} s of silence"


class HeartSilences:
    """One kernel's silent heart, handled for its owner (a kernel manager, the provisioner):
    what each silence means is decided by :class:`heartbeat._silence.Silence` from what is
    learned here, and the owner is told only of a death (``on_death(monitor, silence)``, to
    record, kill and restart as it does) and of a kernel not its own alive again
    (``on_recovered()``). A silence that is no death gets its line, once, and the heart is
    watched on (its monitor started again with no grace).

    ``owned``: whether the owner started the kernel. ``declared``: the owner's
    ``heart_answers_while_busy`` (None: learned from ``kernel_info_reply``). ``log``: its
    lines (a ``KernelLog``). ``process()``: the kernel's local child, or None. ``info()``: its
    connection info, with its key, to ask it what it is. ``probe_port``: a kernel that is not
    our child has its heart's port probed when that could decide (:attr:`probe` then holds the
    probe of the current silence, for the death line's cause). ``watched()``: False once the
    owner no longer watches it (a kernel forgotten with its connection file). ``kind_level``:
    the level of the line that says what the kernel is (debug: one a kernel start; the line of
    a silence says it too). ``guard(fn)``: ``fn`` as the monitor is to call it (the
    provisioner's holds its lock on reaping the process).

    Call :meth:`on_event` with every event of the monitor (``on_event=``), :meth:`start` the
    monitor through this, and :meth:`close` this when the watch ends.
    """

    def __init__(
        self,
        *,
        owned: bool,
        declared: bool | None,
        log: Log,
        process: Callable[[], subprocess.Popen[Any] | None],
        info: Callable[[], dict[str, Any]],
        on_death: Callable[[HeartMonitor, float], None],
        on_recovered: Callable[[], None] = lambda: None,
        probe_port: bool = False,
        watched: Callable[[], bool] = lambda: True,
        kind_level: int = logging.DEBUG,
        guard: Callable[[Callable[[], None]], Callable[[], None]] = lambda fn: fn,
    ) -> None:
        self.declared = _silence.declared(declared)
        self.silence = Silence(self.declared or Heart.UNKNOWN, owned=owned, now=time.monotonic())
        self.kind: Kind | None = None
        self.monitor: HeartMonitor | None = None
        self.probe: HeartProbe | None = None
        self._log = log
        self._process = process
        self._info = info
        self._on_death = on_death
        self._on_recovered = on_recovered
        self._probe_port = probe_port
        self._watched = watched
        self._kind_level = kind_level
        self._guard = guard
        self._task: asyncio.Future[None] | None = None
        self._closed = False

    def start(self, monitor: HeartMonitor) -> None:
        """Start watching the heart through ``monitor`` (made with ``on_event=self.on_event``):
        its silences come to :meth:`on_silent`."""
        self.monitor = monitor
        monitor.start(self._guard(self.on_silent))

    def close(self) -> None:
        """Nothing more is done (a monitor stopped, a kernel restarted or shut down); a
        ``kernel_info_request`` under way is cancelled (its client closed)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    def on_event(self, event: Event) -> None:
        """Every event of the monitor's timing core: a reply is what ends a silence, and the
        first one asks the kernel what it is."""
        if not isinstance(event, Beat) or self._closed or not self._watched():
            return
        first = not self.silence.answered
        ended, lasted = self.silence.answered_now(time.monotonic())
        if first:
            self._task = asyncio.ensure_future(self._learn())
        if ended is Verdict.DEATH:
            # A kernel not ours, declared dead, answers again: alive again (nothing was done to
            # it), and its next silence is a death of its own.
            self._on_recovered()
            self._log.warning(answered_line(ended, lasted))
        elif ended is not None:
            self._log.info(answered_line(ended, lasted))

    async def _learn(self) -> None:
        # Once a kernel, after its heart first answered: whether its heart answers while it is
        # busy, unless declared; and its language, for its cause's words.
        try:
            kind = await ask_kind(self._info())
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.debug("kernel_info not learned", exc_info=True)
            return
        if kind is None or self._closed:
            return
        self.kind = kind
        if self.declared is None:
            self.silence.heart = _silence.heart_of(kind.implementation)
        line = kind_line(kind, self.silence.heart, self.declared is not None)
        self._log.log(self._kind_level, line)

    def on_silent(self) -> None:
        """The monitor's callback: its heart was found silent (the Judge's ``Dead``). What
        that means is decided now, from the kernel's process (or its heart's port)."""
        monitor = self.monitor
        if monitor is None or self._closed or not self._watched():
            return
        process = self._process()
        if process is not None:
            self._decided(monitor, self.silence.silent(time.monotonic(), local_state(process)))
            return
        if not self._probe_port:
            self._decided(monitor, self.silence.silent(time.monotonic(), Process.UNKNOWN))
            return
        # Not our child: its port is asked (a fresh probe a silence), at once if what it says
        # could change the verdict, else only for the death line's cause.
        probe = self.probe = HeartProbe(monitor.url)
        if not self.silence.wants_port():
            self._decided(monitor, self.silence.silent(time.monotonic(), Process.UNKNOWN))
            return

        def answered(_: object) -> None:
            if self._closed or self.monitor is not monitor:
                return  # stopped or restarted meanwhile
            refused = probe.connection is Connection.REFUSED
            facts = Process.REFUSED if refused else Process.UNKNOWN
            self._decided(monitor, self.silence.silent(time.monotonic(), facts))

        probe.start().add_done_callback(answered)

    def _decided(self, monitor: HeartMonitor, decision: Decision) -> None:
        if decision.verdict is Verdict.DEATH:
            if decision.new:
                self._on_death(monitor, decision.silence)
        elif decision.new:
            why = heart_words(self.silence.heart, self.kind)
            line = silence_line(decision.verdict, decision.silence, self._process(), why)
            self._log.info(line)
        if decision.watch_on:
            IOLoop.current().add_callback(self._watch_on, monitor)

    def _watch_on(self, monitor: HeartMonitor) -> None:
        # A silence not acted on (or a kernel not ours, declared dead): watched on, judged
        # again time_to_dead from now (no new grace), so that an answer, a stop, an exit or a
        # refusing port is seen.
        if not self._closed and self.monitor is monitor and not monitor.running:
            monitor.start(self._guard(self.on_silent), grace=0)
