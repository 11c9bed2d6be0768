"""``HBChannel``: jupyter_client's heartbeat channel, judged by the timing core."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import zmq
from jupyter_client.channels import HBChannel as _JupyterHBChannel
from jupyter_client.channels import InvalidPortNumber

from heartbeat import _validate
from heartbeat._judge import Dead, Event, Judge, State
from heartbeat.monitor import HeartMonitor

_ALIVE = (State.BEATING, State.LATE)


class HBChannel(_JupyterHBChannel):
    """A heartbeat channel for jupyter_client kernel clients, with a first-beat grace.

    A subclass of ``jupyter_client.channels.HBChannel`` (the blocking and threaded clients
    require one), with its constructor and methods, all reimplemented. The differences:
    the first ``first_beat`` seconds are a grace for the kernel to start; ``call_handlers`` is
    called once per death (no reply for ``time_to_dead`` seconds), not on every missed ping;
    the monitor's own stalls are forgiven; a reply already received is never judged missing.
    After a death the channel keeps watching, with a fresh grace, so a restarted kernel is
    seen beating again.

    ``is_beating()`` is True once the kernel has answered and until it is declared dead.
    """

    #: Seconds of silence, after the grace, that mean death.
    time_to_dead: float = 3.0
    #: Seconds of grace after ``start()`` / ``unpause()`` for the kernel to come up.
    first_beat: float = 5.0

    def __init__(
        self,
        context: zmq.Context[Any] | None = None,
        session: Any = None,
        address: tuple[str, int] | str = "",
        *,
        curve_serverkey: bytes | None = None,
    ) -> None:
        # Not jupyter_client's __init__: none of its socket or poller machinery is used.
        threading.Thread.__init__(self, name="heartbeat-hbchannel", daemon=True)
        if isinstance(address, tuple):
            if address[1] == 0:
                raise InvalidPortNumber("The port number for a channel cannot be 0.")
            address = f"tcp://{address[0]}:{int(address[1])}"
        self.context = context
        self.session = session
        self.address = address
        self._url: str = address
        self.curve_serverkey = curve_serverkey
        self._paused: bool = False
        self._monitor: HeartMonitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._silent_for = 0.0

    def start(self) -> None:
        """Start watching in the channel's thread.

        Whatever keeps the monitor from being made or started (bad settings, a bad CURVE key,
        no socket to be had) is raised here, once the thread has ended.
        """
        self._url = str(self.address)
        _validate.endpoint(self._url, bind=False)
        Judge(self.time_to_dead, self.first_beat)
        super().start()
        self._ready.wait()
        error, self._error = self._error, None
        if error is not None:
            self.join()
            raise error

    def run(self) -> None:
        """The thread's body: an event loop that runs the HeartMonitor."""
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        try:
            self._monitor = HeartMonitor(
                self._url,
                time_to_dead=self.time_to_dead,
                first_beat=self.first_beat,
                context=self.context,
                curve_serverkey=self.curve_serverkey,
                on_event=self._on_event,
            )
            if not self._paused:
                self._monitor.start(self._on_dead)
        except Exception as exc:
            # For start() to raise: raised here, it would end the thread unseen, start() waiting.
            self._error = exc
            return
        finally:
            self._ready.set()
        await self._done.wait()
        self._monitor.stop()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Dead):
            self._silent_for = event.silent_for

    def _on_dead(self) -> None:
        self.call_handlers(self._silent_for)
        self._resume()

    def _resume(self) -> None:
        monitor = self._monitor
        done = self._done is not None and self._done.is_set()
        if monitor is not None and not monitor.running and not self._paused and not done:
            monitor.start(self._on_dead)

    def _in_thread(self, fn: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            # RuntimeError: the loop closed meanwhile, so the channel has stopped anyway.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(fn)

    def pause(self) -> None:
        """Stop judging until ``unpause()``."""
        self._paused = True
        if self._monitor is not None:
            self._in_thread(self._monitor.stop)

    def unpause(self) -> None:
        """Resume judging, with a fresh ``first_beat`` grace."""
        self._paused = False
        self._in_thread(self._resume)

    def is_beating(self) -> bool:
        """True while running, not paused, and the kernel answers."""
        monitor = self._monitor
        return (
            self.is_alive() and not self._paused and monitor is not None and monitor.state in _ALIVE
        )

    def stop(self) -> None:
        """Stop the channel and join its thread. Idempotent."""
        if self._done is not None:
            done = self._done
            self._in_thread(done.set)
        if self.is_alive():
            self.join()
        self.close()

    def close(self) -> None:
        """Nothing to close beyond ``stop()``: the monitor closes its own socket."""

    def call_handlers(self, since_last_heartbeat: float) -> None:
        """Called in the channel's thread when the kernel is declared dead. Override it."""
