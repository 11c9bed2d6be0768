"""What does asking N kernels whether they answer cost the manager's process? Prints a table;
never asserts speed.

Side by side in one run, each in a fresh process, against the same N kernels' control channels
(ROUTER sockets in another process answering ``kernel_info_request`` signed with a key, as
ipykernel's control thread does):

- ``none``: the manager's loop with the N control channels there and nothing asking them: the
  floor;
- ``probe``: one :class:`~heartbeat.jupyter._responsive.ResponsiveWatch` a kernel, as the kernel
  managers make them (``unresponsive_after`` 60 s: a probe every 5 s each, and ``/proc`` read at
  each tick, of a real child process).

CPU is the process's user + system time over the measured window, after a warm-up. Every
kernel answers: a report would be a false one, and is counted. Usage::

    python -m benchmarks.probe                          # 1000 kernels, 30 s
    python -m benchmarks.probe --kernels 20 --duration 3 --json out.json   # CI smoke

Compare with the heart's own cost at the same N: ``python -m benchmarks.scale --sizes 1000
--kinds pool`` (docs/scale.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

KEY = b"benchmark-key"
KINDS = ("none", "probe")


def host(n: int) -> int:
    """The kernels' side: N ROUTER sockets answering kernel_info_request; prints their ports,
    runs until its stdin closes."""
    from jupyter_client.session import Session

    session = Session(key=KEY)
    context = zmq.Context()
    sockets = []
    for _ in range(n):
        socket = context.socket(zmq.ROUTER)
        socket.linger = 0
        socket.bind_to_random_port("tcp://127.0.0.1")
        sockets.append(socket)
    ports = [int(s.last_endpoint.decode().rsplit(":", 1)[1]) for s in sockets]
    print(json.dumps(ports), flush=True)
    poller = zmq.Poller()
    for socket in sockets:
        poller.register(socket, zmq.POLLIN)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    while True:
        for socket, _ in poller.poll():
            if socket == sys.stdin.fileno():
                if not sys.stdin.readline():
                    return 0
                continue
            assert isinstance(socket, zmq.Socket)
            idents, msg = session.recv(socket, mode=zmq.NOBLOCK)
            if msg is not None:
                content = {"implementation": "ipython", "status": "ok"}
                session.send(socket, "kernel_info_reply", content, parent=msg, ident=idents)


async def measure(
    kind: str, ports: list[int], host_proc: Any, warmup: float, seconds: float
) -> dict[str, Any]:
    """One kind, in this process: CPU over the window, and what the watches saw."""
    import zmq.asyncio
    from jupyter_client.session import Session

    from heartbeat.jupyter._responsive import ResponsiveWatch

    log = logging.getLogger("benchmark")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    context = zmq.asyncio.Context()
    watches: list[ResponsiveWatch] = []
    if kind == "probe":
        for i, port in enumerate(ports):

            def connect(port: int = port) -> zmq.asyncio.Socket:
                socket = context.socket(zmq.DEALER)
                socket.linger = 0
                socket.connect(f"tcp://127.0.0.1:{port}")
                return socket

            watch = ResponsiveWatch(
                kernel_id=str(i),
                after=60.0,
                log=log,
                connect=connect,
                session=Session(key=KEY),
                process=host_proc,  # /proc read at each tick, of a real child
                stacks=None,
                why_no_stacks="benchmark",
                running=lambda: None,
            )
            watch.start()
            watches.append(watch)
    await asyncio.sleep(warmup)
    before, began = cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, took = cpu_seconds() - before, time.monotonic() - began
    reports = sum(len(w.reports) for w in watches)
    own_thread = sum(w.answers_from == "own-thread" for w in watches)
    for watch in watches:
        watch.stop()
    context.destroy(linger=0)
    return {
        "kind": kind,
        "kernels": len(ports),
        "cpu_share": cpu / took,
        "cpu_us_per_kernel_second": 1e6 * cpu / took / max(1, len(ports)),
        "false_reports": reports,
        "answered": own_thread,
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(kind: str, ports: list[int], warmup: float, seconds: float) -> int:
    """One kind in a fresh process: its result as a JSON line."""
    from tornado.ioloop import IOLoop

    async def run() -> dict[str, Any]:
        IOLoop.current()  # the watches start on the current loop, as in a server
        # A real child whose /proc the watches read, as a kernel manager reads its kernel's.
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        try:
            return await measure(kind, ports, child, warmup, seconds)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)

    print(json.dumps(asyncio.run(run())), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=None, help="default: one probe period")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--host", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.host is not None:
        return host(args.host)
    warmup = 6.0 if args.warmup is None else args.warmup
    if args.worker is not None:
        return worker(args.worker, json.loads(args.ports), warmup, args.duration)
    kernels = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.probe", "--host", str(args.kernels)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    rows = []
    try:
        assert kernels.stdout is not None and kernels.stdin is not None
        ports = json.loads(kernels.stdout.readline())
        for kind in KINDS:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.probe",
                    "--worker",
                    kind,
                    "--ports",
                    json.dumps(ports),
                    "--duration",
                    str(args.duration),
                    "--warmup",
                    str(warmup),
                ],
                capture_output=True,
                text=True,
                timeout=args.duration + warmup + 300,
                check=True,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        if kernels.stdin is not None:
            kernels.stdin.close()
        kernels.wait(30)
    head = ("kind", "kernels", "CPU % of a core", "us CPU/kernel/s", "false reports")
    print(f"{head[0]:<8}{head[1]:>9}{head[2]:>17}{head[3]:>17}{head[4]:>15}")
    for row in rows:
        print(
            f"{row['kind']:<8}{row['kernels']:>9}{100 * row['cpu_share']:>17.2f}"
            f"{row['cpu_us_per_kernel_second']:>17.1f}{row['false_reports']:>15}"
        )
    extra = rows[1]["cpu_share"] - rows[0]["cpu_share"]
    print(f"the probe costs {100 * extra:.2f} % of one core for {args.kernels} kernels")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "probe_cpu_share": extra}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
