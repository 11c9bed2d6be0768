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
