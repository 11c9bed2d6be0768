"""One ping, synchronously: for liveness probes and scripts, not for watching."""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from heartbeat import _validate


def curve_client(socket: zmq.Socket[Any], serverkey: bytes | None) -> None:
    """Make ``socket`` a CURVE client of the server whose public key is ``serverkey``.

    With None, only the key pair is set: the server key must be set before each connect().
    """
    public, secret = zmq.curve_keypair()  # ephemeral: the server authenticates itself only
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    if serverkey is not None:
        socket.curve_serverkey = serverkey


def ping(
    url: str,
    timeout: float = 2.0,
    *,
    curve_serverkey: bytes | None = None,
    context: zmq.Context[Any] | None = None,
) -> float | None:
    """Ping the heart at ``url`` once; return the round trip in seconds, None on no answer.

    Returns within ``timeout`` seconds (plus a few milliseconds) whatever the peer does.

    >>> from heartbeat import Heart
    >>> with Heart() as heart:
    ...     ping(heart.url) is not None
    True
    """
    endpoint = _validate.endpoint(url, bind=False)
    wait = _validate.number("timeout", timeout)
    ctx = context if context is not None else zmq.Context.instance()
    token = os.urandom(8)
    with ctx.socket(zmq.REQ) as sock:
        sock.linger = 0
        if endpoint.is_ipv6:
            sock.ipv6 = True
        if curve_serverkey is not None:
            curve_client(sock, curve_serverkey)
        try:
            sock.connect(url)
        except zmq.ZMQError as exc:
            raise ValueError(f"cannot connect to {url!r}: {exc.strerror}") from None
        start = time.monotonic()
        sock.send(token)
        while (left := start + wait - time.monotonic()) > 0:
            if sock.poll(int(left * 1000) + 1) and sock.recv() == token:
                return time.monotonic() - start
        return None
