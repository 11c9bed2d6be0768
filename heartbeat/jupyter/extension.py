"""The jupyter_server extension ``heartbeat.jupyter``: on once installed (the wheel's
``etc/jupyter/jupyter_server_config.d/heartbeat.jupyter.json``); ``jupyter server extension
disable heartbeat.jupyter`` turns it off.

It turns on:

- :class:`~heartbeat.jupyter.HeartbeatKernelManager` for every kernel the server starts
  (what ``--AsyncMappingKernelManager.kernel_manager_class=...`` does alone);
- :class:`~heartbeat.jupyter.websocket.DeathNoticeConnection` for the kernels' websockets,
  so that the cell running when its kernel dies shows why (in JupyterLab, Notebook 7);
- the kernel-death event's schema on the server's event bus.

What the user configured wins: a ``kernel_manager_class`` or
``kernel_websocket_connection_class`` set in config is kept (and said so in the log), and
nothing is changed for a gateway, whose kernels are another server's.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.gateway.gateway_client import GatewayClient
from traitlets import TraitError
from traitlets.config import Config
from traitlets.utils.importstring import import_item

from heartbeat.jupyter.events import register
from heartbeat.jupyter.kernel import HeartbeatSettings

MANAGER = "heartbeat.jupyter.manager.HeartbeatKernelManager"
CONNECTION = "heartbeat.jupyter.websocket.DeathNoticeConnection"
# Where a kernel_manager_class can be configured for the server's MappingKernelManager.
_MANAGER_SECTIONS = (
    "MultiKernelManager",
    "AsyncMultiKernelManager",
    "MappingKernelManager",
    "AsyncMappingKernelManager",
)


def _configured(config: Config, sections: tuple[str, ...], name: str) -> str | None:
    for section in sections:
        if section in config and name in config[section]:
            return str(config[section][name])
    return None


def _link_jupyter_server_extension(serverapp: Any) -> None:
    # Linking comes before the server makes its kernel manager and web app, so what is set here
    # is what they are made with.
    log = serverapp.log
    # The server makes this singleton (with itself as parent) only after linking: made now,
    # it is the one the server then gets.
    if GatewayClient.instance(parent=serverapp).gateway_enabled:
        log.info("kernel-heartbeat: kernels are a gateway's; its kernels are not watched here")
        return
    chosen = _configured(serverapp.config, _MANAGER_SECTIONS, "kernel_manager_class")
    if chosen is None:
        serverapp.update_config(
            Config({"AsyncMappingKernelManager": {"kernel_manager_class": MANAGER}})
        )
    elif chosen != MANAGER and not chosen.startswith("heartbeat."):
        log.warning(
            "kernel-heartbeat: kernel_manager_class is configured as %s: kept, so kernels' "
            "hearts are not watched by kernel-heartbeat",
            chosen,
        )
    websocket = _configured(serverapp.config, ("ServerApp",), "kernel_websocket_connection_class")
    if websocket is None:
        serverapp.kernel_websocket_connection_class = CONNECTION
    elif websocket != CONNECTION:
        log.info(
            "kernel-heartbeat: kernel_websocket_connection_class is configured as %s: kept, so "
            "a running cell is not told why its kernel died",
            websocket,
        )


def _check_settings(serverapp: Any) -> None:
    """Exit, with one line, when the kernels' heartbeat settings are refused (an interval past
    time_to_dead / 2, say): at the server's start, rather than at each kernel's."""
    manager = serverapp.kernel_manager
    kind = import_item(str(manager.kernel_manager_class))
    if not (isinstance(kind, type) and issubclass(kind, HeartbeatSettings)):
        return
    try:
        # Made as the server makes its kernels' managers, so configured as they would be.
        kind(parent=manager, log=serverapp.log)
    except TraitError as exc:
        serverapp.log.critical(
            "kernel-heartbeat: the settings of %s are refused: %s; the server is not started",
            kind.__name__,
            exc,
        )
        serverapp.exit(1)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    _check_settings(serverapp)
    # Registered now, so that the event bus lists it before the first death.
    register(serverapp.event_logger)
    serverapp.log.info(
        "kernel-heartbeat: kernels' hearts watched by %s; a dying kernel's running cell is "
        "told why (%s)",
        serverapp.kernel_manager.kernel_manager_class,
        serverapp.kernel_websocket_connection_class.__name__,
    )
