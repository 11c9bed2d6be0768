"""Many hearts in one process, for the scale benchmark: one echo device bound to many ports.

Each port behaves exactly as a kernel's heart (a ROUTER echoed by a zmq device in a C thread);
sharing one device keeps 10,000 hearts affordable on 2 cores. Prints the ports as one JSON
line, then runs until its stdin closes.

    python -m benchmarks.hearts_host --count 1250
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading

import zmq


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    ctx = zmq.Context(io_threads=1)
    ctx.set(zmq.MAX_SOCKETS, 100_000)
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.sndhwm = router.rcvhwm = 100_000
    ports = [router.bind_to_random_port("tcp://127.0.0.1") for _ in range(args.count)]
    device = threading.Thread(target=_echo, args=(router,), daemon=True)
    device.start()
    print(json.dumps({"ports": ports}), flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin (or dies)
    return 0


def _echo(router: zmq.Socket[bytes]) -> None:
    with contextlib.suppress(zmq.ZMQError):
        zmq.proxy(router, router)


if __name__ == "__main__":
    sys.exit(main())
