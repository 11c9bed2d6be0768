"""kernel-heartbeat: tell a dead kernel from a busy one, without false alarms."""

from heartbeat._judge import Beat, Dead, Event, Judge, Ping, Stall, State, StateChanged
from heartbeat._stats import RttStats
from heartbeat.heart import Heart
from heartbeat.monitor import HeartMonitor
from heartbeat.pool import HeartbeatPool

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
]
__version__ = "0.1.0"
