"""Where a pool's memory goes: its resident size beat by beat, against a bare ROUTER loop.

Both ping the same hearts (in other processes) every 0.2 s; the bare loop has no monitor, no
judge and no statistics, only zmq. Prints one row per kind: RSS (MiB) after every 50 beats.
A growth both show is zmq's, not ours. Usage::

    python -m benchmarks.memory                 # 2000 hearts, 450 beats each
    python -m benchmarks.memory --hearts 200 --beats 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable

from benchmarks.scale import bare_loop, rss_mib, spawn_hearts, stop_hearts

EVERY = 0.2  # seconds between two pings of one heart
STEP = 50  # beats between two samples


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--worker", choices=("pool", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--hearts", type=int, default=2000)
    parser.add_argument("--beats", type=int, default=450, help="per heart, a multiple of 50")
    args = parser.parse_args()
    if args.worker:
        urls = json.loads(sys.stdin.readline())
        samples = asyncio.run(measure(args.worker, urls, args.beats))
        print(json.dumps(samples), flush=True)
        return 0
    procs, urls = spawn_hearts(args.hearts)
    rows = {}
    try:
        for kind in ("bare", "pool"):
            command = [sys.executable, "-m", "benchmarks.memory", "--worker", kind]
            worker = subprocess.run(
                [*command, "--beats", str(args.beats)],
                input=json.dumps(urls) + "\n",
                capture_output=True,
                text=True,
                check=True,
            )
            rows[kind] = json.loads(worker.stdout)
    finally:
        stop_hearts(procs)
    steps = range(STEP, args.beats + 1, STEP)
    print(f"RSS in MiB of one process pinging {args.hearts} hearts every {EVERY} s")
    print(f"{'beats':<6}" + "".join(f"{n:>7}" for n in steps))
    for kind, samples in rows.items():
        print(f"{kind:<6}" + "".join(f"{mib:>7.0f}" for mib in samples))
    return 0


async def measure(kind: str, urls: list[str], beats: int) -> list[float]:
    stop = start_pool(urls) if kind == "pool" else start_bare(urls)
    samples = []
    for _ in range(beats // STEP):
        await asyncio.sleep(STEP * EVERY)
        samples.append(rss_mib())
    stop()
    return samples


def start_pool(urls: list[str]) -> Callable[[], None]:
    from heartbeat import HeartbeatPool

    pool = HeartbeatPool()
    for url in urls:
        pool.watch(url, time_to_dead=2 * EVERY, first_beat=3.0).start()
    return pool.close


def start_bare(urls: list[str]) -> Callable[[], None]:
    stop: Callable[[], None] = bare_loop(urls, every=EVERY, ticks=1)
    return stop


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
