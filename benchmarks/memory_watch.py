"""What watching kernels' memory costs the server: N real processes (``sleep``, each in a
session of its own, as jupyter_client starts kernels) watched by N ``MemoryGuard``s on one
event loop, as a server with N kernels does.

Prints the CPU this process spent: starting the N watches (each marks its kernel's session for
the OOM killer, scanning ``/proc``, then again 1 s and 5 s later), and then a second of steady
watching (each idle kernel's cgroup and ``/proc/<pid>/status`` read every 5 s), as a share of
one core. Usage::

    python -m benchmarks.memory_watch                    # 1000 kernels, 30 s steady
    python -m benchmarks.memory_watch --kernels 50 --seconds 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from heartbeat.jupyter._memory_watch import REMARK_AFTER, MemoryGuard


async def measure(procs: list[subprocess.Popen[bytes]], seconds: float) -> dict[str, Any]:
    log = logging.getLogger("benchmarks.memory_watch")
    guards = [MemoryGuard() for _ in procs]
    cpu0, wall0 = time.process_time(), time.monotonic()
    for guard, proc in zip(guards, procs, strict=True):
        guard.start(proc, oom_score_adj=1000, warning=0.9, interrupt=None, log=log)
    start_cpu = time.process_time() - cpu0
    # The re-marks after 1 s and 5 s, then the steady state.
    await asyncio.sleep(max(REMARK_AFTER) + 1 - (time.monotonic() - wall0))
    remark_cpu = time.process_time() - cpu0 - start_cpu
    cpu1, wall1 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    steady_cpu = time.process_time() - cpu1
    steady_wall = time.monotonic() - wall1
    for guard in guards:
        guard.stop()
    marked = sum(
        Path(f"/proc/{p.pid}/oom_score_adj").read_text().strip() == "1000"
        for p in procs
        if p.poll() is None
    )
    return {
        "kernels": len(procs),
        "marked": marked,
        "start_ms_per_kernel": 1000 * start_cpu / len(procs),
        "remarks_ms_per_kernel": 1000 * remark_cpu / len(procs),
        "steady_core_share": steady_cpu / steady_wall,
        "steady_seconds": steady_wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_watch")
    parser.add_argument("--kernels", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    procs = [
        subprocess.Popen(["sleep", "3600"], start_new_session=True) for _ in range(args.kernels)
    ]
    try:
        result = asyncio.run(measure(procs, args.seconds))
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
    print(json.dumps(result))
    print(
        f"{result['kernels']} kernels ({result['marked']} marked): start "
        f"{result['start_ms_per_kernel']:.2f} ms CPU each, re-marks "
        f"{result['remarks_ms_per_kernel']:.2f} ms each; steady "
        f"{100 * result['steady_core_share']:.2f} % of one core over "
        f"{result['steady_seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
