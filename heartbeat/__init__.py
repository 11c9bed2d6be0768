"""kernel-heartbeat: tell a dead kernel from a busy one, without false alarms.

The pure core (``Judge`` and its events) imports neither zmq nor tornado; the names that need
them (``Heart``, ``HeartMonitor``, ``HeartbeatPool``) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from heartbeat._judge import Beat, Dead, Event, Judge, Ping, Stall, State, StateChanged
from heartbeat._stats import RttStats
from heartbeat._tally import Tally

if TYPE_CHECKING:
    from heartbeat.heart import Heart
    from heartbeat.monitor import HeartMonitor
    from heartbeat.pool import HeartbeatPool

_LAZY = {
    "Heart": "heartbeat.heart",
    "HeartMonitor": "heartbeat.monitor",
    "HeartbeatPool": "heartbeat.pool",
}

__all__ = [
    "Beat",
    "Dead",
    "Event",
    "Heart",
    "HeartMonitor",
    "HeartbeatPool",
    "Judge",
    "Ping",
    "RttStats",
    "Stall",
    "State",
    "StateChanged",
    "Tally",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'heartbeat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value
