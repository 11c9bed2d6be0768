"""What watching kernels' memory costs the server: N real processes (``sleep``, each in a
session of its own, as jupyter_client starts kernels) watched by N ``MemoryGuard``s on one
event loop, as a server with N kernels does.

Two layouts side by side: every kernel in the server's own memory cgroup (a JupyterHub pod, a
container: kernels that share a cgroup share one reading of it), and each in a cgroup of its
own (v1, made here; one reading each). Prints, for each, the CPU this process spent: starting
the N watches (each marks its kernel's session for the OOM killer, scanning ``/proc``, then
again 1 s and 5 s later, with its address-space limit), and then steady watching (an idle
cgroup is read every 5 s), as a share of one core, in a table. Usage::

    python -m benchmarks.memory_watch                    # 1000 kernels, 30 s steady
    python -m benchmarks.memory_watch --kernels 50 --seconds 6
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
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


def cgroups_each(count: int) -> list[Path] | None:
    """``count`` v1 memory cgroups under this process's own (one a kernel, as a spawner that
    gives each kernel its own limit); None where they cannot be made (not v1, not writable)."""
    from heartbeat.jupyter._proc import memory_cgroup_of

    mine = memory_cgroup_of(os.getpid())
    if mine is None or mine.version != 1:
        return None
    made: list[Path] = []
    try:
        for i in range(count):
            group = mine.path / f"heartbeat-bench-{os.getpid()}-{i}"
            group.mkdir()
            made.append(group)
            (group / "memory.limit_in_bytes").write_text(str(1 << 30))
    except OSError:
        remove(made)
        return None
    return made


def remove(groups: list[Path]) -> None:
    for group in groups:
        with contextlib.suppress(OSError):
            group.rmdir()


def start(count: int, groups: list[Path] | None) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        join = None
        if groups is not None:
            path = groups[i] / "cgroup.procs"

            def join(path: Path = path) -> None:
                path.write_text(str(os.getpid()))

        procs.append(subprocess.Popen(["sleep", "3600"], start_new_session=True, preexec_fn=join))
    return procs


def run(kernels: int, seconds: float, layout: str) -> dict[str, Any] | None:
    groups = None
    if layout == "a cgroup each":
        groups = cgroups_each(kernels)
        if groups is None:
            return None
    procs = start(kernels, groups)
    try:
        result = asyncio.run(measure(procs, seconds))
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
        if groups is not None:
            remove(groups)
    return {"layout": layout, **result}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_watch")
    parser.add_argument("--kernels", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    # Side by side: every kernel in the server's cgroup (a JupyterHub pod, a container: one
    # reading for all), and each in a cgroup of its own (one reading each).
    results = []
    for layout in ("one cgroup for all", "a cgroup each"):
        result = run(args.kernels, args.seconds, layout)
        if result is None:
            print(f"# {layout}: not run (no cgroup v1 memory controller to make them in)")
            continue
        print(json.dumps(result))
        results.append(result)
    print(
        f"{'layout':<20} {'kernels':>8} {'marked':>7} {'start ms':>9} {'re-marks ms':>12} "
        f"{'steady % core':>14}"
    )
    for r in results:
        print(
            f"{r['layout']:<20} {r['kernels']:>8} {r['marked']:>7} "
            f"{r['start_ms_per_kernel']:>9.2f} {r['remarks_ms_per_kernel']:>12.2f} "
            f"{100 * r['steady_core_share']:>14.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
