"""Drop-ins for jupyter_client, jupyter_server and nbclient (the ``jupyter`` extra).

- :class:`HBChannel` replaces ``jupyter_client.channels.HBChannel`` in a kernel client
  (``client.hb_channel_class = HBChannel``): the same interface, judged by the timing core.
- :class:`HeartbeatKernelManager` (async) and :class:`HeartbeatIOLoopKernelManager` (sync):
  kernel managers whose kernel is dead when its process or its heart is; every such manager
  on one event loop watches through one shared :class:`~heartbeat.HeartbeatPool`.
- :class:`HeartbeatProvisioner`: the same watch for any kernel manager, chosen by a kernel
  spec (``heartbeat kernelspec``), for ``jupyter execute`` and papermill.
"""

from heartbeat import __version__
from heartbeat.jupyter.channel import HBChannel
from heartbeat.jupyter.kernel import shared_pool
from heartbeat.jupyter.manager import (
    HeartbeatBlockingKernelClient,
    HeartbeatIOLoopKernelManager,
    HeartbeatIOLoopKernelRestarter,
    HeartbeatKernelClient,
    HeartbeatKernelManager,
    HeartbeatKernelRestarter,
)
from heartbeat.jupyter.provisioner import HeartbeatProvisioner

__all__ = [
    "HBChannel",
    "HeartbeatBlockingKernelClient",
    "HeartbeatIOLoopKernelManager",
    "HeartbeatIOLoopKernelRestarter",
    "HeartbeatKernelClient",
    "HeartbeatKernelManager",
    "HeartbeatKernelRestarter",
    "HeartbeatProvisioner",
    "__version__",
    "shared_pool",
]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """jupyter_server's extension entry point, on once installed (``jupyter server extension
    disable heartbeat.jupyter`` turns it off; see :mod:`heartbeat.jupyter.extension`)."""
    return [{"module": "heartbeat.jupyter.extension"}]
