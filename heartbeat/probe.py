"""One ping, synchronously: for liveness probes and scripts, not for watching."""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from heartbeat import _resolve, _sockets, _validate

# The longest single wait handed to zmq's poll, in seconds.
_POLL_STEP = 60.0


def ping(
    url: str,
    timeout: float = 2.0,
    *,
    curve_serverkey: bytes | str | None = None,
    context: zmq.Context[Any] | None = None,
) -> float | None:
    """Ping the heart at ``url`` once; return the round trip in seconds, None on no answer.

    Returns within ``timeout`` seconds (plus a few milliseconds) whatever the peer does. A host
    name is resolved within that time too, to every address it has (both families); the ping
    goes to the first that takes a connection (docs/beyond-one-machine.md).

    >>> from heartbeat import Heart
    >>> with Heart() as heart:
    ...     ping(heart.url) is not None
    True
    """
    endpoint = _validate.endpoint(url, bind=False)
    wait = _validate.number("timeout", timeout)
    key = (
        None if curve_serverkey is None else _validate.curve_key("curve_serverkey", curve_serverkey)
    )
    token = os.urandom(8)
    start = time.monotonic()
    target = url
    if endpoint.is_name:
        found = _resolve.resolve_now(endpoint, wait)
        if found is None:
            return None  # the name did not resolve within the timeout: no answer
        target = found
    socket = _sockets.open_socket(
        context,
        zmq.REQ,
        what=f"cannot open a socket to ping {url}",
        interval=wait,
        ipv6=endpoint.is_ipv6,
        curve=key is not None,
    )
    with socket as sock:
        _sockets.connect(sock, target, curve_serverkey=key)
        sent = time.monotonic()  # the round trip leaves the name's resolution out
        sock.send(token)
        while (left := start + wait - time.monotonic()) > 0:
            # In steps zmq's poll can take (its timeout is a C int of milliseconds): a timeout
            # of a billion seconds is a long wait, not an OverflowError from inside zmq.
            if sock.poll(int(min(left, _POLL_STEP) * 1000) + 1) and sock.recv() == token:
                return time.monotonic() - sent
        return None
