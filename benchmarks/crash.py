"""Crash to new kernel, ours against stock, side by side in one run; two modes.

``--server`` (what a user sees): two real ``jupyter server`` processes, stock and with
HeartbeatKernelManager, each crash a cell that kills its own kernel (SIGKILL, SIGSEGV,
``os._exit(3)``), timed from the kernel's death to the websocket's ``restarting`` status and to
the new kernel answering on it; see benchmarks/crash_server.py.

Without ``--server``: the kernel managers themselves, in this process, under
HeartbeatKernelManager (its kernel's exit watched through a pidfd) and under jupyter_client's
stock AsyncIOLoopKernelManager (its restarter polls every 3 s). Each kill signals the process
the manager's LocalProvisioner launched (its ``Popen``: this process's own child), at a random
moment of the restarter's polling period. Prints, for each manager, the times from the kill to
the new process and to the new kernel's answer to ``kernel_info``: median and max. Usage::

    python -m benchmarks.crash --server      # 3 crashes of each cause on each server
    python -m benchmarks.crash --server --crashes 10 --json crash.json
    python -m benchmarks.crash               # the managers: 5 kills each
    python -m benchmarks.crash --kills 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from jupyter_client.ioloop.manager import AsyncIOLoopKernelManager

from benchmarks import crash_server
from heartbeat.jupyter import HeartbeatKernelManager


async def until(condition: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise RuntimeError(what)
        await asyncio.sleep(0.005)


async def answers(km: Any) -> None:
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
    finally:
        client.stop_channels()


async def crashes(cls: type, kills: int, rng: random.Random) -> list[tuple[float, float]]:
    """(kill to new process, kill to new kernel answering) for each of ``kills`` kills."""
    km = cls(kernel_name="python3")
    await km.start_kernel()
    times = []
    try:
        await answers(km)
        for _ in range(kills):
            # Past stable_start_time (10 s) is not needed: the restart limit is 5 a burst,
            # and a kill's moment in the 3 s polling period is what varies.
            await asyncio.sleep(rng.uniform(0.0, 3.0))
            process = km.provisioner.process
            assert process.pid == km.provisioner.pid and process.poll() is None
            os.kill(process.pid, signal.SIGKILL)  # our own child, not reaped: its pid is ours
            killed = time.monotonic()
            await until(lambda: km.provisioner.pid != process.pid, 60, "not restarted")  # noqa: B023
            replaced = time.monotonic() - killed
            await asyncio.wait_for(km.ready, 60)
            await answers(km)
            times.append((replaced, time.monotonic() - killed))
    finally:
        await km.shutdown_kernel(now=True)
    return times


def row(name: str, times: list[tuple[float, float]]) -> str:
    new = [t[0] for t in times]
    up = [t[1] for t in times]
    return (
        f"{name:<32} {statistics.median(new):>8.3f} {max(new):>8.3f} "
        f"{statistics.median(up):>8.3f} {max(up):>8.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crash")
    parser.add_argument(
        "--server", action="store_true", help="stock jupyter_server against ours, two real servers"
    )
    parser.add_argument(
        "--crashes", type=int, help="--server: crashes of each cause on each server (3)"
    )
    parser.add_argument("--json", type=Path, help="--server: also write the trials here")
    parser.add_argument("--logs", type=Path, help="--server: keep the servers' logs here")
    parser.add_argument("--kills", type=int, help="kills per manager, at most 5 (5)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.server:
        if args.kills is not None:
            parser.error("--kills is for the managers' mode; --server takes --crashes")
        if args.crashes is not None and args.crashes < 1:
            parser.error("--crashes must be at least 1")
        return crash_server.main(args.crashes or 3, args.seed, args.json, args.logs)
    if args.crashes is not None or args.json or args.logs:
        parser.error("--crashes, --json and --logs go with --server")
    args.kills = 5 if args.kills is None else args.kills
    if not 1 <= args.kills <= 5:
        parser.error("--kills must be from 1 to 5 (jupyter_client's restart_limit)")
    rng = random.Random(args.seed)
    results = {}
    for name, cls in (
        ("HeartbeatKernelManager", HeartbeatKernelManager),
        ("AsyncIOLoopKernelManager (stock)", AsyncIOLoopKernelManager),
    ):
        results[name] = asyncio.run(crashes(cls, args.kills, rng))
    print(f"SIGKILL to new kernel, {args.kills} kills each (seconds)")
    print(f"{'manager':<32} {'process':>8} {'':>8} {'answers':>8}")
    print(f"{'':<32} {'median':>8} {'max':>8} {'median':>8} {'max':>8}")
    for name, times in results.items():
        print(row(name, times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
