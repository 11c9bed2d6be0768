"""What the cause of a death is decided from, read from the system: ``/proc``, the memory
cgroup's files, a TCP connect to a remote heart. Each reader returns None (or says
"unreachable") where it cannot tell; the deciding is in :mod:`heartbeat._cause`."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from heartbeat import _cause as cause

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryCgroup:
    """Where a process's memory cgroup's files are: cgroup ``version`` 1 or 2, in ``path``."""

    version: int
    path: Path

    def read(self) -> cause.Memory | None:
        """Its counters now; None when its files cannot be read (gone, or not these)."""
        names = (
            ("memory.events", "memory.max")
            if self.version == 2
            else ("memory.oom_control", "memory.limit_in_bytes")
        )
        try:
            events, limit = ((self.path / name).read_text() for name in names)
            return cause.memory(self.version, events, limit)
        except (OSError, ValueError):
            return None


def read_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, T, Z...); None: not Linux, or gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return cause.stat_state(stat.read())
    except (OSError, ValueError):
        return None


def memory_cgroup_of(pid: int, root: Path = CGROUP_ROOT) -> MemoryCgroup | None:
    """The memory cgroup of a live process ``pid`` (an exited one has left its cgroup: ask at
    its start); None where there is none to read."""
    try:
        found = cause.memory_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    except (OSError, ValueError):
        return None
    if found is None:
        return None
    version, path = found
    relative = path.lstrip("/")
    if version == 1:
        candidates = [root / "memory" / relative]
    else:
        # Unified alone, or beside v1 hierarchies ("hybrid": under unified/).
        candidates = [root / relative, root / "unified" / relative]
    for candidate in candidates:
        group = MemoryCgroup(version, candidate)
        if group.read() is not None:
            return group
    return None


def probe_heart(host: str, port: int, timeout: float = 1.0) -> cause.Connection:
    """What a plain TCP connect to a heart's port says: refused, connected (its heart is
    silent), or unreachable (no route, or no answer within ``timeout`` seconds). Blocks for up
    to ``timeout``."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port must be from 1 to 65535, not {port!r}")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return cause.Connection.SILENT
    except ConnectionRefusedError:
        return cause.Connection.REFUSED
    except OSError:
        # EHOSTUNREACH, ENETUNREACH, a timeout, a name that does not resolve: no connection.
        return cause.Connection.UNREACHABLE
