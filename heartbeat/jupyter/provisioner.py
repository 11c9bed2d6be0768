"""``HeartbeatProvisioner``: a kernel's heart watched by the provisioner that launched it.

A kernel provisioner is chosen by the kernel spec, not by the kernel manager, so this works
wherever a kernel name can be given and no kernel manager class can: ``jupyter execute
--kernel_name=...``, ``papermill -k ...``, nbclient, and any stock kernel manager. When the heart
is declared dead, the process is killed, so the manager's next look at it (``is_alive()``, a
restarter's poll, nbclient's check every second) finds the kernel dead. ``heartbeat kernelspec``
installs a kernel spec that selects it.
"""

from __future__ import annotations

from typing import Any

from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from tornado.ioloop import IOLoop

from heartbeat._cause import Death
from heartbeat._judge import Dead
from heartbeat.connection import hb_url
from heartbeat.jupyter._death import Witness
from heartbeat.jupyter.kernel import (
    HeartbeatSettings,
    KernelLog,
    fate,
    kill_local_child,
    local_child,
)
from heartbeat.monitor import HeartMonitor


class HeartbeatProvisioner(LocalProvisioner, HeartbeatSettings):  # type: ignore[metaclass]
    """A local kernel provisioner that kills its kernel once the kernel's heart is dead.

    Its settings (``time_to_dead``, ``first_beat``, ``interval``, ``shared_pool``) come from
    the kernel spec: ``metadata.kernel_provisioner.config``.
    """

    _monitor: HeartMonitor | None = None
    _witness: Witness | None = None

    async def post_launch(self, **kwargs: Any) -> None:
        """Start watching the heart of the kernel just launched."""
        await super().post_launch(**kwargs)
        self._witness = Witness(local_child(self))  # its memory cgroup, counted at its start
        heart = hb_url(dict(self.connection_info), f"kernel {self.kernel_id}")
        self._monitor = self.watch(
            heart.url,
            curve_serverkey=heart.curve_serverkey,
            context=None,
            log=KernelLog(self.log, self.kernel_id, self._death_fate),
        )
        self._monitor.start(self._on_heart_dead)

    async def cleanup(self, restart: bool = False) -> None:
        """Stop watching, then clean up as a local provisioner does."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.stop()
        await super().cleanup(restart=restart)

    def _death_fate(self, dead: Dead) -> tuple[str, Death | None]:
        then = "its kernel manager will find it dead"
        process = local_child(self)
        witness = self._witness if self._witness is not None else Witness(None)
        if witness.process is not process:
            witness = Witness(process)
        cause = witness.cause(dead.silent_for)
        return fate(process, cause, then, provisioned=self.has_process), None

    def _on_heart_dead(self) -> None:
        process = local_child(self)  # a subclass may report a pid that is not our child
        if not self.has_process or (process is not None and process.poll() is not None):
            return  # exited already: its kernel manager will find it dead
        # kill(): the process group, or whatever killing means to a subclass; scheduled first,
        # so that nothing the direct kill raises can leave the kernel alive.
        IOLoop.current().add_callback(self.kill)
        if process is not None:
            kill_local_child(process)  # now: a frozen process must never outlive its kernel
