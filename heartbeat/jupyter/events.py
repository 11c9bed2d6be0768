"""Kernel deaths on jupyter_server's event bus: one event per death, with a registered schema.

jupyter_server's kernel managers (``ServerKernelManager``) carry the server's
``jupyter_events.EventLogger`` as ``event_logger``; a death of a kernel of ours is emitted
there under :data:`SCHEMA_ID` (the schema is in ``event_schemas/kernel_death/v1.yaml``,
registered on first use). Anyone listening (``event_logger.add_listener``, a handler, the
server's ``/api/events/subscribe`` websocket) gets it. Without jupyter_server's event bus,
nothing happens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from heartbeat._cause import Death

#: The ``$id`` of the kernel-death event's schema.
SCHEMA_ID = "https://kernel-heartbeat.readthedocs.io/events/kernel_death/v1"
#: Where that schema lives, for ``EventLogger.register_event_schema``.
SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "kernel_death" / "v1.yaml"


def event_data(death: Death) -> dict[str, Any]:
    """The event's data for one death (what the schema describes)."""
    cause = death.cause
    return {
        "kernel_id": death.kernel_id,
        "cause": cause.kind,
        "likely": cause.likely,
        "evidence": cause.evidence,
        "msg": death.notice(),
        "exit_code": cause.exit_code,
        "signal": cause.signal,
        "signal_name": cause.signal_name,
        "silence": cause.silence,
        "memory_limit": cause.memory_limit,
        "memory_peak": cause.memory_peak,
        "memory_others": cause.memory_others,
        "pid": death.pid,
        "restarting": death.restarting,
    }


def register(event_logger: Any) -> None:
    """Register the schema with ``event_logger`` unless it already has it. Idempotent."""
    if SCHEMA_ID not in event_logger.schemas:
        event_logger.register_event_schema(SCHEMA_PATH)


def prepare(owner: object) -> None:
    """Register the schema on the event bus of ``owner`` (a kernel manager), if it has one:
    listeners that subscribe to every schema (the server's ``/api/events/subscribe``) are
    given those registered when they subscribe."""
    event_logger = getattr(owner, "event_logger", None)
    if event_logger is not None and hasattr(event_logger, "register_event_schema"):
        register(event_logger)


def emit_death(owner: object, death: Death) -> None:
    """Emit ``death`` on the event bus of ``owner`` (a kernel manager), if it has one."""
    event_logger = getattr(owner, "event_logger", None)
    if event_logger is None or not hasattr(event_logger, "emit"):
        return
    register(event_logger)
    event_logger.emit(schema_id=SCHEMA_ID, data=event_data(death))
