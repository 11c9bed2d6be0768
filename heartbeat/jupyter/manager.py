"""Kernel managers whose kernel is dead when its process *or its heart* is.

:class:`HeartbeatKernelManager` (async) and :class:`HeartbeatIOLoopKernelManager` (sync) are
jupyter_client kernel managers whose restarter also listens to the heart: a kernel whose process
lives but whose heart has stopped (frozen, deadlocked below Python, unreachable) is killed, then
restarted by the usual machinery (or, with ``autorestart`` off, reported dead). For
jupyter_server, one line::

    jupyter server \
      --AsyncMappingKernelManager.kernel_manager_class=heartbeat.jupyter.HeartbeatKernelManager
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.client import KernelClient
from jupyter_client.ioloop.manager import AsyncIOLoopKernelManager, IOLoopKernelManager
from jupyter_client.ioloop.restarter import AsyncIOLoopKernelRestarter, IOLoopKernelRestarter
from jupyter_client.restarter import KernelRestarter
from jupyter_core.utils import run_sync
from traitlets import Bool, DottedObjectName, Instance, Type

from heartbeat.jupyter._one_at_a_time import OneAtATime
from heartbeat.jupyter._watched import _HeartbeatMixin

try:
    # Under jupyter_server, kernel managers should be ServerKernelManagers (execution state,
    # activity, events); without it, the plain async manager of jupyter_client.
    from jupyter_server.services.kernels.kernelmanager import (
        ServerKernelManager as _AsyncBase,
    )
except ImportError:  # pragma: no cover - jupyter_server is optional
    _AsyncBase = AsyncIOLoopKernelManager  # type: ignore[assignment,misc]


@contextlib.contextmanager
def _ports_kept_once_beaten(restarter: KernelRestarter) -> Iterator[None]:
    """New random ports only for a kernel whose heart never answered.

    jupyter_client restarts a kernel that dies within ``stable_start_time`` on new random
    ports, in case its own were taken. A kernel whose heart has answered had bound its ports:
    moving them would only leave its connected clients talking to nothing.
    """
    configured = restarter.random_ports_until_alive
    manager = restarter.kernel_manager
    if isinstance(manager, _HeartbeatMixin) and manager.heart_has_beaten:
        restarter.random_ports_until_alive = False
    try:
        yield
    finally:
        restarter.random_ports_until_alive = configured


class _Running(KernelRestarter):
    """A restarter that knows whether it is started: a poll still waiting for its turn when
    the restarter stops (a shutdown) then does nothing."""

    _running = Bool(False)

    def start(self) -> None:
        """Start polling."""
        super().start()
        self._running = True

    def stop(self) -> None:
        """Stop polling; a poll still waiting for its turn then does nothing."""
        super().stop()
        self._running = False


class HeartbeatKernelRestarter(_Running, AsyncIOLoopKernelRestarter):
    """The async restarter: polls as one step of the manager's lifecycle (a heart death asks
    for a poll at once), counts deaths for the manager's clients, and keeps the ports of a
    kernel that has beaten."""

    async def poll(self) -> None:  # type: ignore[override]
        """Poll the kernel, never during another start, restart, shutdown or poll."""
        manager = self.kernel_manager
        ours = isinstance(manager, _HeartbeatMixin)
        async with manager.lifecycle() if ours else contextlib.nullcontext():
            if not self._running:
                return  # stopped while this poll waited (a shutdown): nothing to restart
            if ours and not manager.shutting_down and not await manager.is_alive():
                manager.note_death()
            with _ports_kept_once_beaten(self):
                await super().poll()


class HeartbeatIOLoopKernelRestarter(_Running, IOLoopKernelRestarter):
    """The sync manager's restarter. Its poll is a coroutine on the manager's loop, awaiting the
    manager's own coroutines, as the async restarter's does; it counts deaths for the
    manager's clients and keeps the ports of a kernel that has beaten.

    jupyter_client's sync restarter calls the manager's sync methods (``is_alive()``,
    ``restart_kernel()``) from its callback on the running loop, where jupyter_core runs each
    in a task-runner thread it keeps per thread name, blocking the loop meanwhile. In a
    process forked from one that had made such a runner (multiprocessing's fork start method)
    the runner is inherited without its thread, and that first poll waits forever; and a
    kernel restarted there would be watched from the runner's loop rather than this one.
    """

    _poll_lock = Instance(asyncio.Lock, allow_none=True)

    async def poll(self) -> None:  # type: ignore[override]
        """Poll the kernel, one poll at a time (a heart death asks for one at once)."""
        if self._poll_lock is None:
            self._poll_lock = asyncio.Lock()
        async with self._poll_lock:
            if not self._running:
                return
            with _ports_kept_once_beaten(self):
                await self._poll_once()

    async def _poll_once(self) -> None:
        manager = self.kernel_manager
        if self.debug:
            self.log.debug("Polling kernel...")
        if manager.shutting_down:
            self.log.debug("Kernel shutdown in progress...")
            return
        alive = bool(await manager._async_is_alive())
        now = time.time()
        if alive:
            # Alive for stable_start_time on end: started, or restarted, for good.
            stable = self.stable_start_time
            if manager.provisioner is not None:
                stable = manager.provisioner.get_stable_start_time(recommended=stable)
            if now - self._last_dead >= stable:
                if self._restarting:
                    self.log.debug("KernelRestarter: restart apparently succeeded")
                self._initial_startup = False
                self._restarting = False
            return
        if isinstance(manager, _HeartbeatMixin):
            manager.note_death()
        self._last_dead = now
        self._restart_count = self._restart_count + 1 if self._restarting else 1
        if self._restart_count > self.restart_limit:
            self.log.warning("KernelRestarter: restart failed")
            self._fire_callbacks("dead")
            self._restarting = False
            self._restart_count = 0
            self.stop()
            return
        newports = self.random_ports_until_alive and self._initial_startup
        self.log.info(
            "KernelRestarter: restarting kernel (%i/%i), %s random ports",
            self._restart_count,
            self.restart_limit,
            "new" if newports else "keep",
        )
        self._fire_callbacks("restart")
        await manager._async_restart_kernel(now=True, newports=newports)
        self._restarting = True


class _DeathAwareClient(KernelClient):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        parent = self.parent
        self._deaths_seen = parent.deaths if isinstance(parent, _HeartbeatMixin) else 0

    async def _async_is_alive(self) -> bool:
        parent = self.parent
        if isinstance(parent, _HeartbeatMixin) and parent.deaths != self._deaths_seen:
            return False
        return bool(await super()._async_is_alive())


class HeartbeatKernelClient(_DeathAwareClient, AsyncKernelClient):
    """The async client a :class:`HeartbeatKernelManager` makes.

    ``is_alive()`` is False once the kernel it was made for has died, even after the manager
    restarted it: what it asked that kernel will never be answered (nbclient then ends the
    run with ``DeadKernelError`` instead of waiting for the cell timeout). Make a new client
    to talk to the restarted kernel.
    """

    is_alive = _DeathAwareClient._async_is_alive


class HeartbeatBlockingKernelClient(_DeathAwareClient, BlockingKernelClient):
    """The blocking client a :class:`HeartbeatIOLoopKernelManager` makes (see
    :class:`HeartbeatKernelClient`)."""

    is_alive = run_sync(_DeathAwareClient._async_is_alive)


class HeartbeatKernelManager(_HeartbeatMixin, _AsyncBase):
    """An async kernel manager whose kernel is dead when its process *or its heart* is.

    A subclass of jupyter_client's ``AsyncIOLoopKernelManager``; when jupyter_server is
    installed, of its ``ServerKernelManager`` (itself an ``AsyncIOLoopKernelManager``), as
    jupyter_server expects of a ``kernel_manager_class``. Its heart is watched through a
    pool shared by every such manager on the loop (``shared_pool``); a dead heart's process is
    killed before it is restarted or reported dead. Its beats, stalls and deaths are counted on
    jupyter_server's ``/metrics`` (``metrics``; see ``heartbeat.jupyter.metrics``).
    """

    restarter_class = Type(
        default_value=HeartbeatKernelRestarter,
        klass=AsyncIOLoopKernelRestarter,
        config=True,
    )
    client_class = DottedObjectName("heartbeat.jupyter.manager.HeartbeatKernelClient", config=True)

    _steps = Instance(OneAtATime, args=())

    is_alive = _HeartbeatMixin._async_is_alive  # type: ignore[assignment]  # as AsyncKernelManager does

    def lifecycle(self) -> AbstractAsyncContextManager[None]:
        """Held by each step of the kernel's lifecycle (start, restart, shutdown, clean-up and
        the restarter's poll): a shutdown asked for while the restarter brings up a new kernel
        waits for it, then ends that kernel."""
        return self._steps.held()

    async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
        """Start a kernel (again, after a clean-up too)."""
        async with self.lifecycle():
            self._closed = False
            await super().start_kernel(**kw)

    async def restart_kernel(  # type: ignore[override]
        self, now: bool = False, newports: bool = False, **kw: Any
    ) -> None:
        """Restart the kernel, once no other lifecycle step is under way."""
        async with self.lifecycle():
            await super().restart_kernel(now=now, newports=newports, **kw)

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:  # type: ignore[override]
        """Shut the kernel down, once no other lifecycle step (a restart) is under way; one
        this manager does not own is only no longer watched."""
        async with self.lifecycle():
            self._unwatch_if_not_owned()
            await super().shutdown_kernel(now=now, restart=restart)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        async with self.lifecycle():
            await super()._async_cleanup_resources(restart=restart)

    cleanup_resources = _async_cleanup_resources  # type: ignore[assignment]


class HeartbeatIOLoopKernelManager(_HeartbeatMixin, IOLoopKernelManager):
    """The sync IOLoopKernelManager variant; needs a running tornado IOLoop, as its restarter."""

    restarter_class = Type(
        default_value=HeartbeatIOLoopKernelRestarter,
        klass=IOLoopKernelRestarter,
        config=True,
    )
    client_class = DottedObjectName(
        "heartbeat.jupyter.manager.HeartbeatBlockingKernelClient", config=True
    )

    #: False when the process has exited or the heart has been declared dead.
    is_alive = run_sync(_HeartbeatMixin._async_is_alive)

    cleanup_resources = run_sync(_HeartbeatMixin._async_cleanup_resources)

    def start_kernel(self, **kw: Any) -> None:
        """Start a kernel (again, after a clean-up too)."""
        self._closed = False
        super().start_kernel(**kw)

    def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """Shut the kernel down; one this manager does not own is only no longer watched."""
        self._unwatch_if_not_owned()
        super().shutdown_kernel(now=now, restart=restart)
