"""An event loop of its own, on a daemon thread, for a watch whose owner's loop does not run.

jupyter_client's blocking ``KernelManager`` (``jupyter console``, qtconsole,
``start_new_kernel``) runs each of its provisioner's coroutines with jupyter_core's
``run_sync``: on a thread with no running loop, ``run_until_complete`` on that thread's loop,
which then stops until the next call. A heart watched from that loop is pinged and judged only
during calls: between them its timers wait, and the next call finds them late, a stall of the
monitor's own that is forgiven. A frozen kernel would never be found. Watched from a loop that
always runs, it is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

from tornado.ioloop import IOLoop

from heartbeat.jupyter.kernel import drop_shared_pool

T = TypeVar("T")

# How long what is still scheduled on the loop (a kill through the provisioner, say) may take
# to finish when the thread is stopped.
_DRAIN_TIMEOUT = 5.0


class LoopThread:
    """A tornado IOLoop running on a daemon thread of its own, from :meth:`start` to
    :meth:`stop`. What runs on it is handed over with :meth:`call`; everything on it runs
    one at a time, in that thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._io_loop: IOLoop | None = None

    def start(self) -> None:
        """Start the thread and its loop; return once the loop can take calls."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name} is already started")
        ready = threading.Event()
        failed: list[BaseException] = []
        thread = threading.Thread(target=self._run, args=(ready, failed), name=self._name)
        thread.daemon = True  # a process that exits without a shutdown is not held up
        thread.start()  # may raise (no thread to be had): then nothing is started
        ready.wait()
        if failed:  # no loop to be had (out of file descriptors): the thread has ended
            thread.join()
            raise failed[0]
        self._thread = thread

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`stop`."""
        return self._io_loop is not None

    def in_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the loop and return what it returns (or raise what it raises), once
        it has run; at once when called from the loop's own thread."""
        if self.in_thread():
            return fn()
        io_loop = self._io_loop
        if io_loop is None:
            raise RuntimeError(f"{self._name} is not running")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the caller, whatever it is
                done.set_exception(exc)

        io_loop.add_callback(run)  # the one IOLoop method that is safe from another thread
        return done.result()

    def stop(self) -> None:
        """Stop the loop once what is scheduled on it is done (bounded), close it, and join
        the thread. Idempotent; not from the loop's own thread."""
        thread, io_loop = self._thread, self._io_loop
        if thread is None or io_loop is None:
            return
        if self.in_thread():
            raise RuntimeError(f"{self._name} cannot stop itself")
        io_loop.add_callback(io_loop.stop)
        thread.join()
        self._thread = self._io_loop = None

    def _run(self, ready: threading.Event, failed: list[BaseException]) -> None:
        try:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            io_loop = self._io_loop = IOLoop.current()
        except BaseException as exc:  # handed to start()
            failed.append(exc)
            return
        finally:
            ready.set()
        try:
            io_loop.start()
            # Stopped: what is still scheduled (a kill through the provisioner after a death)
            # is let finish, not destroyed pending.
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=_DRAIN_TIMEOUT))
            drop_shared_pool()  # this loop's, if a watch made one: closed with the loop, now
        finally:
            io_loop.close()  # closes the asyncio loop too
            asyncio.set_event_loop(None)
