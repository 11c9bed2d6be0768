"""Many hearts in one process, for the scale benchmark: one echo device bound to many ports.

Each port behaves exactly as a kernel's heart (a ROUTER echoed by a zmq device in a C thread);
sharing one device keeps 10,000 hearts affordable on 2 cores. With ``--rep``, each port is a
REP socket of its own, as IRkernel's heart (a REP answers its own connections only, so no
device can share it): one thread polls them all and echoes. Prints the ports as one JSON
line, then runs until its stdin closes.

    python -m benchmarks.hearts_host --count 1250 [--rep]
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
    parser.add_argument("--rep", action="store_true", help="REP hearts, one socket each")
    args = parser.parse_args()
    ctx = zmq.Context(io_threads=1)
    ctx.set(zmq.MAX_SOCKETS, 100_000)
    if args.rep:
        reps = [ctx.socket(zmq.REP) for _ in range(args.count)]
        ports = [rep.bind_to_random_port("tcp://127.0.0.1") for rep in reps]
        threading.Thread(target=_echo_each, args=(reps,), daemon=True).start()
        print(json.dumps({"ports": ports}), flush=True)
        sys.stdin.read()
        return 0
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


def _echo_each(reps: list[zmq.Socket[bytes]]) -> None:
    poller = zmq.Poller()
    for rep in reps:
        poller.register(rep, zmq.POLLIN)
    with contextlib.suppress(zmq.ZMQError):
        while True:
            for rep, _ in poller.poll():
                rep.send_multipart(rep.recv_multipart())


if __name__ == "__main__":
    sys.exit(main())
