"""Hearts of the two kinds kernels have, in a thread of the test's process: a REP socket that
echoes (IRkernel's, and the messaging spec's "echoed right back from the Kernel's REP socket")
and a ROUTER that echoes (ipykernel's, xeus'). pyzmq's own sockets, not this package's Heart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq


@contextmanager
def echo_heart(
    kind: int, *, curve_secretkey: bytes | None = None, url: str = "tcp://127.0.0.1:0"
) -> Iterator[str]:
    """A heart that echoes every message on a ``kind`` socket (zmq.REP or zmq.ROUTER) bound to
    ``url``, a CURVE server with ``curve_secretkey``; yields the url it is bound to."""
    context: zmq.Context[Any] = zmq.Context()
    bound: list[str] = []
    ready = threading.Event()
    stop = threading.Event()

    def run() -> None:
        socket = context.socket(kind)
        try:
            socket.linger = 0
            if curve_secretkey is not None:
                socket.curve_server = True
                socket.curve_secretkey = curve_secretkey
            socket.bind(url)
            bound.append(socket.get(zmq.LAST_ENDPOINT).decode())
            ready.set()
            while not stop.is_set():
                if socket.poll(50):
                    # REP: one request, then its reply (the envelope is REP's own business);
                    # ROUTER: the whole envelope, the sender's routing id first, goes back.
                    socket.send_multipart(socket.recv_multipart())
        finally:
            socket.close(linger=0)
            ready.set()

    thread = threading.Thread(target=run, name=f"echo-heart-{kind}", daemon=True)
    thread.start()
    try:
        assert ready.wait(10) and bound, "the echo heart did not bind"
        yield bound[0]
    finally:
        stop.set()
        thread.join(10)
        context.term()


def announced_socket_type(host: str, port: int, timeout: float = 10.0) -> str:
    """The socket type a ZMTP 3 peer at ``host:port`` announces in its READY command (NULL
    mechanism), read by a handshake of our own as a DEALER (which REP and ROUTER both accept):
    what kind of heart a real kernel binds, seen on the wire."""
    import socket as stdlib_socket
    import struct

    with stdlib_socket.create_connection((host, port), timeout=timeout) as sock:
        # The greeting: signature, version 3.0, mechanism NULL, as-server 0, filler.
        sock.sendall(
            b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + bytes(32)
        )
        greeting = b""
        while len(greeting) < 64:
            chunk = sock.recv(64 - len(greeting))
            assert chunk, "the peer closed the connection during the greeting"
            greeting += chunk
        name, value = b"Socket-Type", b"DEALER"
        ready = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
        sock.sendall(bytes([0x04, len(ready)]) + ready)
        head = sock.recv(2)
        assert len(head) == 2 and head[0] == 0x04, head  # a short command
        body = b""
        while len(body) < head[1]:
            chunk = sock.recv(head[1] - len(body))
            assert chunk, "the peer closed the connection during its READY"
            body += chunk
    assert body.startswith(b"\x05READY"), body
    at = 6
    while at < len(body):
        size = body[at]
        key = body[at + 1 : at + 1 + size]
        at += 1 + size
        (length,) = struct.unpack(">I", body[at : at + 4])
        at += 4
        if key == b"Socket-Type":
            return body[at : at + length].decode()
        at += length
    raise AssertionError(f"no Socket-Type in {body!r}")
