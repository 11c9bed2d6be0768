"""The kernel's process, as a kernel manager owns it: whether it is provably our local child,
whether this manager owns the kernel and restarts it when it dies (and why not, for the death
line), its kill and reaping (its process group too, through its provisioner), and its end when
its start fails or its manager is cleaned up for good.

:class:`_KernelProcess` is the base of ``_watched._HeartbeatMixin``, which adds the watches
(heart, exit, memory) and what a death makes the manager do."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

from traitlets import Bool

from heartbeat.jupyter.kernel import HeartbeatSettings, kill_local_child, local_child

# How long a killed kernel process may take to be reaped.
_REAP_TIMEOUT = 5.0


class _KernelProcess(HeartbeatSettings):
    _closed = Bool(False)  # cleaned up for good, until started again

    def _provisioned(self) -> bool:
        provisioner = self.provisioner  # type: ignore[attr-defined]
        return provisioner is not None and bool(provisioner.has_process)

    def _local_child(self) -> subprocess.Popen[Any] | None:
        """The kernel's process if it is provably our child (see ``local_child``), else None."""
        return local_child(self.provisioner) if self._provisioned() else None  # type: ignore[attr-defined]

    def _restarts(self) -> bool:
        return self._why_not_restarted() is None

    def _why_not_restarted(self) -> str | None:
        if not self._owned():
            return "it was not started by this manager"
        restarter = self._restarter  # type: ignore[attr-defined]
        if not self.autorestart or restarter is None:  # type: ignore[attr-defined]
            return "autorestart is off"
        # jupyter_client's restarter gives up after restart_limit restarts in a row (each within
        # stable_start_time of the last): this death is then "dead", not restarted.
        tries = restarter._restart_count + 1 if restarter._restarting else 1
        if tries > restarter.restart_limit:
            times = "once" if tries == 1 else f"{tries} times in a row"
            return f"past restart_limit {restarter.restart_limit}: it died {times}"
        return None

    def _owned(self) -> bool:
        # jupyter_client 8's owns_kernel (from 8.3): False for a kernel started apart.
        return bool(getattr(self, "owns_kernel", True))

    def _what_next(self) -> str:
        why = self._why_not_restarted()
        return "restarting it" if why is None else f"not restarting it ({why})"

    def _kill_now(self) -> None:
        process = self._local_child()
        if process is not None:
            kill_local_child(process)

    async def _kill_and_reap(self) -> None:
        """Kill the kernel's process (and its process group) and reap it, if it is there."""
        self._kill_now()
        provisioner = self.provisioner  # type: ignore[attr-defined]
        if provisioner is None or not provisioner.has_process:
            return
        try:
            await provisioner.kill()  # its process group; for a remote kernel, the only way
        except Exception:
            # Logged, not raised: the death is recorded, and the restarter still acts on it.
            self.log.exception("Kernel %s: its provisioner could not kill it", self.kernel_id)  # type: ignore[attr-defined]
            return
        # poll() reaps, and unlike wait() may run while jupyter_client's own shutdown waits.
        end = asyncio.get_running_loop().time() + _REAP_TIMEOUT
        while await provisioner.poll() is None:
            if asyncio.get_running_loop().time() > end:
                self.log.warning("Kernel %s was killed but has not exited", self.kernel_id)  # type: ignore[attr-defined]
                return
            await asyncio.sleep(0.05)

    async def _async_post_start_kernel(self, **kw: Any) -> None:
        # What fails once the kernel's process is launched (its watch: out of file descriptors,
        # a heart's url refused; its provisioner's post_launch) would leave that process
        # running, listed nowhere, until this process exits: it is ended and reaped, and what
        # its start made released, before the error goes on.
        try:
            await super()._async_post_start_kernel(**kw)  # type: ignore[misc]
        except BaseException:
            try:
                await self._end_launched()
            except Exception:
                kernel_id = self.kernel_id  # type: ignore[attr-defined]
                self.log.exception("Kernel %s: could not end it after its start failed", kernel_id)
            raise

    async def _end_launched(self) -> None:
        # For good: nothing restarts a kernel whose start failed.
        await self._async_cleanup_resources()
        provisioner = self.provisioner  # type: ignore[attr-defined]
        if (
            provisioner is not None
            and provisioner.has_process
            and await provisioner.poll() is not None
        ):
            await provisioner.wait()  # reaped already: this closes its pipes

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        if not restart:
            # For good (nbclient does this without a shutdown when it finds the kernel dead):
            # nothing may restart the kernel afterwards, and no kernel is left running.
            self._closed = True
            self.stop_restarter()  # type: ignore[attr-defined]
            await self._kill_and_reap()
        await super()._async_cleanup_resources(restart=restart)  # type: ignore[misc]
