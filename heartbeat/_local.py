"""Whether a heart's host is this machine: what the monitor's defaults for a heart beyond it
(more paths, a shorter interval: docs/lossy-links.md) must not be given to.

Loopback is not all of this machine: ``0.0.0.0`` and ``::`` (a kernel ip Jupyter accepts)
connect here, and so do the machine's own addresses and name. An address is this machine's
when a socket can be bound to it (the system allows binding only local addresses): a syscall,
no packet sent, no name looked up. Names other than the machine's own and the loopback names
are taken as remote (resolving them here could block: see ``heartbeat._resolve``).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket

from heartbeat._validate import Endpoint


def on_this_machine(endpoint: Endpoint) -> bool:
    """True when connecting to ``endpoint`` reaches this machine (ipc, inproc, loopback, an
    unspecified address, one of this machine's addresses, its host name)."""
    if endpoint.is_loopback:
        return True
    return _host_is_here(endpoint.host.strip("[]").lower())


@functools.lru_cache(maxsize=256)
def _host_is_here(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host in _own_names()
    if address.is_unspecified:
        return True  # connecting to 0.0.0.0 or :: reaches this machine's loopback
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))  # EADDRNOTAVAIL for an address that is not this machine's
        return True
    return False


def _own_names() -> set[str]:
    name = socket.gethostname().lower()
    return {name, name.partition(".")[0]}
