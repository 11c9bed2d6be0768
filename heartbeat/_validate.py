"""Checks on user input that raise errors a person can act on: numbers, urls and CURVE keys,
as plain values (no zmq, no loop: the pure core uses them too).

Every public entry point validates here *before* it creates a socket or a timer, so bad input
never leaves anything half-started and never surfaces as a traceback from inside zmq.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
from dataclasses import dataclass

# libzmq's own check of a tcp url it connects to (socket_base.cpp): the host starts with a
# letter, a digit or '[', and goes on with letters, digits, '.', '-' and '_'. A url that passed
# here and not there would fail inside zmq, as a traceback, not as bad input.
_HOST_RE = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9_.-]*|\[[0-9A-Fa-f:.]+\])$")
#: The longest ipc path a socket address holds (sun_path: 108 bytes with its NUL).
MAX_IPC_PATH = 107
#: The shortest time_to_dead a monitor times on a real loop: its timers wake a millisecond or
#: more late, and a timer later than (time_to_dead - interval) / 2 is forgiven as the monitor's
#: own stall; below this, every wake-up would be forgiven and no death ever declared.
MIN_TIME_TO_DEAD = 0.05

#: What a url should look like, as every error about one says it.
EXPECTED_URL = "'tcp://host:port', 'ipc://path' or 'inproc://name'"


# Names of the loopback addresses: the usual one, and Debian's and Ubuntu's for ::1.
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


@dataclass(frozen=True)
class Endpoint:
    """A parsed zmq endpoint: ``transport`` is tcp, ipc or inproc."""

    transport: str
    host: str
    port: int | None

    @property
    def is_ipv6(self) -> bool:
        """True when the host is a bracketed IPv6 literal (zmq needs IPV6 set for it)."""
        return self.host.startswith("[")

    @property
    def is_name(self) -> bool:
        """True for a tcp host given by name (``localhost``, ``kernels.example``): it is
        resolved off the loop (heartbeat/_resolve.py), never by zmq, which would block its I/O
        thread, and every other socket's, on each connection attempt."""
        if self.transport != "tcp":
            return False
        try:
            ipaddress.ip_address(self.host.strip("[]"))
        except ValueError:
            return True
        return False

    @property
    def is_loopback(self) -> bool:
        """True for endpoints only this machine can reach."""
        if self.transport != "tcp":
            return True
        host = self.host.strip("[]").lower()
        if host in _LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


#: Connections to a heart that is not on this machine, unless told otherwise. On a lossy link
#: TCP retransmits a lost segment after a backoff that doubles each time (200 ms, 400 ms, ...),
#: and every later ping on that connection waits behind it; a ping sent on another connection
#: does not. With the monitor's default interval of ttd / (2 * paths), four give a heart eight
#: chances a time_to_dead (docs/lossy-links.md has the measurements behind four).
REMOTE_PATHS = 4
#: The most connections one monitor may make to its heart.
MAX_PATHS = 8


def paths(value: object, where: Endpoint, *, here: bool | None = None) -> int:
    """How many connections to make to the heart at ``where``: ``value``, or by default one on
    this machine (nothing is lost there) and ``REMOTE_PATHS`` beyond. ``here``: whether
    ``where`` is on this machine, as the caller found (``heartbeat._local``); None: whether
    it is loopback, ipc or inproc."""
    if value is None:
        local = where.is_loopback if here is None else here
        return 1 if local else REMOTE_PATHS
    expected = f"an int from 1 to {MAX_PATHS} (connections to the heart) or None"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"paths must be {expected}, got {value!r}")
    if not 1 <= value <= MAX_PATHS:
        raise ValueError(f"paths must be {expected}, got {value!r}")
    return value


def number(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is a finite positive number (or zero if allowed)."""
    expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be {expected} (seconds), got {value!r}")
    result = float(value)
    if not math.isfinite(result) or result < 0 or (result == 0 and not allow_zero):
        raise ValueError(f"{name} must be {expected} (seconds), got {value!r}")
    return result


def time_to_dead(value: object) -> float:
    """``value`` as a time_to_dead a monitor can time on a real loop: a finite number of at
    least ``MIN_TIME_TO_DEAD`` seconds."""
    result = number("time_to_dead", value)
    if result < MIN_TIME_TO_DEAD:
        raise ValueError(
            f"time_to_dead must be at least {MIN_TIME_TO_DEAD} s, the shortest a monitor's "
            f"loop can time (its timers wake a millisecond or more late), got {value!r}"
        )
    return result


def interval(value: object, time_to_dead: float) -> float:
    """``value`` as the seconds between pings to a heart judged after ``time_to_dead`` (already
    checked): a finite number > 0, at most ``time_to_dead / 2``, so that a heart is pinged
    twice before it is judged."""
    result = number("interval", value)
    most = time_to_dead / 2
    if result > most:
        raise ValueError(
            f"interval must be at most time_to_dead / 2 = {most:g} s (time_to_dead "
            f"{time_to_dead:g} s) so a heart is pinged twice before it is judged, got {value!r}"
        )
    return result


def endpoint(url: object, *, bind: bool) -> Endpoint:
    """Parse ``url`` as ``tcp://host:port``, ``ipc://path`` or ``inproc://name``.

    ``bind`` allows port 0 (let the system pick) and ``*`` as the host; a peer we connect to
    needs a real host and a port from 1 to 65535.
    """
    expected = EXPECTED_URL
    if not isinstance(url, str):
        raise TypeError(f"url must be a str like {expected}, got {url!r}")
    transport, sep, rest = url.partition("://")
    if not sep or transport not in ("tcp", "ipc", "inproc"):
        raise ValueError(f"url {url!r} is not a zmq endpoint: expected {expected}")
    if transport in ("ipc", "inproc"):
        if not rest or "\x00" in rest:
            raise ValueError(f"url {url!r} has no {transport} name: expected {expected}")
        if transport == "ipc" and len(rest.encode("utf-8", "surrogateescape")) > MAX_IPC_PATH:
            raise ValueError(
                f"url {url!r} has an ipc path of {len(rest.encode('utf-8', 'surrogateescape'))} "
                f"bytes: expected at most {MAX_IPC_PATH} (what a unix socket address holds)"
            )
        return Endpoint(transport, rest, None)
    host, colon, port_text = rest.rpartition(":")
    if colon and ":" in host and not host.startswith("["):
        # An IPv6 literal without brackets, as jupyter_client writes one ("tcp://::1:5555",
        # from KernelManager.ip "::1"): zmq takes it so; kept here in the bracketed form.
        with contextlib.suppress(ValueError):  # not an address: refused below, with the rest
            host = f"[{ipaddress.IPv6Address(host)}]"
    if not colon or not host or not _HOST_RE.match(host):
        raise ValueError(
            f"url {url!r} has no valid host: expected 'tcp://host:port', the host an address "
            "or a name of letters, digits, '.', '-' and '_' that starts with a letter or digit"
        )
    if host == "*" and not bind:
        raise ValueError(f"url {url!r}: '*' can only be bound, connect to a real host")
    lowest = 0 if bind else 1
    if not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
        raise ValueError(
            f"url {url!r} has port {port_text!r}: expected a number from {lowest} to 65535"
        )
    return Endpoint("tcp", host, int(port_text))


# Z85 (ZeroMQ RFC 32), the text form of CURVE keys: 4 bytes become 5 of these characters.
_Z85 = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def _z85(raw: bytes) -> bytes:
    out = bytearray()
    for i in range(0, len(raw), 4):
        value = int.from_bytes(raw[i : i + 4], "big")
        out += bytes(_Z85[value // 85**k % 85] for k in range(4, -1, -1))
    return bytes(out)


#: What a CURVE key in text should look like, as every error about one says it.
EXPECTED_CURVE_KEY = "a 40-character Z85 CURVE key (as zmq.curve_keypair() makes)"


def is_z85_key(value: bytes) -> bool:
    """True for 40 bytes of the Z85 alphabet: a CURVE key that zmq can decode."""
    return len(value) == 40 and all(byte in _Z85 for byte in value)


def curve_key(name: str, value: object) -> bytes:
    """Return a CURVE key as 40 Z85 bytes; accepts Z85 (str or bytes) or 32 raw bytes."""
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be a CURVE key as bytes or str, got {value!r}")
    if len(value) == 32:
        return _z85(value)
    if len(value) != 40:
        raise ValueError(
            f"{name} must be {EXPECTED_CURVE_KEY} or 32 raw bytes, got {len(value)} bytes"
        )
    if not is_z85_key(value):
        # zmq would refuse it at connect() with a bare EINVAL, as if the url were wrong.
        raise ValueError(f"{name} must be {EXPECTED_CURVE_KEY}: {value!r} is not Z85")
    return value
