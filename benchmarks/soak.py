"""Soak: real hearts frozen, killed and restarted at random, and the manager stalling, for a
given time. Checks the promise: every real death reported within its bound, no live heart ever
reported dead. Prints the counts; exits 1 on any violation.

    python -m benchmarks.soak --hearts 8 --duration 60 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from heartbeat import Beat, Event, HeartMonitor, Stall

TTD = 1.0
FIRST_BEAT = 3.0
# The contract: dead within time_to_dead + interval (the default, TTD / 2) of `since`: the
# last beat, the grace's end, or the end of a stall the monitor forgave (docs/how-it-decides.md).
BOUND = TTD + TTD / 2
SLACK = 1.0  # scheduling slack allowed on top of the bound on a loaded machine


@dataclass
class Heart:
    """One real kernel-like process with a Heart, and what we did to it."""

    url: str = ""  # where the current process's heart listens
    proc: subprocess.Popen[str] | None = None
    truth: str = "alive"  # alive | frozen | killed
    fault_at: float = 0.0  # when the current fault began
    last_beat: float = 0.0
    grace_end: float = 0.0
    stall_end: float = 0.0  # when this heart's monitor last forgave its own stall
    monitor: HeartMonitor | None = None
    stalls: list[tuple[float, float]] = field(default_factory=list)

    def launch(self) -> None:
        # Each life binds a port the system picks: a port chosen beforehand and bound again
        # after a kill may meanwhile be some other connection's ephemeral port (or a monitor's
        # own, reconnecting to it).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heartbeat._standin", "--url", "tcp://127.0.0.1:0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = json.loads(self.proc.stdout.readline())["url"]
        self.truth = "alive"

    def end(self) -> None:
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.proc = None


class Soak:
    def __init__(self, hearts: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.hearts = [Heart() for _ in range(hearts)]
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.violations: list[str] = []
        self.stall_windows: list[tuple[float, float]] = []

    def watch(self, heart: Heart) -> None:
        def on_event(event: Event) -> None:
            if isinstance(event, Beat):
                heart.last_beat = time.monotonic()
            elif isinstance(event, Stall):
                # The monitor saw its own loop stall (ours, or a loaded machine's): it starts
                # counting afresh from now, as the contract says, so the bound does too.
                now = time.monotonic()
                heart.stall_end = now
                self.stall_windows.append((now - event.late_by, now))

        heart.monitor = HeartMonitor(
            heart.url, time_to_dead=TTD, first_beat=FIRST_BEAT, on_event=on_event
        )
        heart.grace_end = time.monotonic() + FIRST_BEAT
        heart.stall_end = 0.0
        heart.monitor.start(lambda: self.on_dead(heart))

    def on_dead(self, heart: Heart) -> None:
        now = time.monotonic()
        if heart.truth == "alive":
            self.counts["false deaths"] += 1
            self.violations.append(f"{heart.url} reported dead while alive")
            return
        self.counts["deaths reported"] += 1
        # Measured from the monitor's `since`: no death may come before it, and a stall the
        # monitor forgave restarts its count (a stall that began after the heart's last beat
        # forgives the silence before it too; subtracting only the stall's length would not).
        since = max(heart.last_beat, heart.grace_end, heart.stall_end)
        latency = now - since
        self.latencies.append(latency)
        if latency > BOUND + SLACK:
            self.violations.append(f"{heart.url} reported {latency:.2f} s after its `since`")
        heart.truth = "reported"

    async def act(self) -> None:
        heart = self.rng.choice(self.hearts)
        roll = self.rng.random()
        if roll < 0.15:
            # The manager stalls (a slow request, GC, a laptop lid).
            pause = self.rng.uniform(0.5, 3.0)
            start = time.monotonic()
            time.sleep(pause)
            self.stall_windows.append((start, time.monotonic()))
            self.counts["manager stalls"] += 1
        elif heart.truth != "alive" or heart.proc is None:
            return
        elif roll < 0.45:
            # A freeze short enough that the heart is never silent for time_to_dead.
            os.kill(heart.proc.pid, signal.SIGSTOP)
            await asyncio.sleep(self.rng.uniform(0.05, 0.3 * TTD))
            os.kill(heart.proc.pid, signal.SIGCONT)
            self.counts["short freezes"] += 1
        elif roll < 0.7:
            heart.truth, heart.fault_at = "frozen", time.monotonic()
            os.kill(heart.proc.pid, signal.SIGSTOP)
            self.counts["long freezes"] += 1
        else:
            heart.truth, heart.fault_at = "killed", time.monotonic()
            heart.end()
            self.counts["kills"] += 1

    async def recover(self) -> None:
        """Give reported-dead hearts a new life: thaw or restart, and watch again."""
        for heart in self.hearts:
            if heart.truth == "reported":
                if heart.proc is not None:
                    heart.end()  # a frozen kernel is killed, as a restarter would
                heart.launch()
                self.watch(heart)
                self.counts["restarts"] += 1
            elif heart.truth in ("frozen", "killed"):
                bound = (
                    BOUND
                    + SLACK
                    + FIRST_BEAT
                    + 5
                    + sum(b - a for a, b in self.stall_windows if b > heart.fault_at)
                )
                if time.monotonic() - heart.fault_at > bound:
                    self.violations.append(f"{heart.url}: {heart.truth} but never reported")
                    heart.truth = "reported"

    async def run(self, duration: float) -> None:
        for heart in self.hearts:
            heart.launch()
            self.watch(heart)
        await asyncio.sleep(FIRST_BEAT + 1)
        end = time.monotonic() + duration
        try:
            while time.monotonic() < end:
                await self.act()
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
                await self.recover()
        finally:
            for heart in self.hearts:
                if heart.monitor is not None:
                    heart.monitor.stop()
                if heart.proc is not None:
                    os.kill(heart.proc.pid, signal.SIGCONT)
                heart.end()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--hearts", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    soak = Soak(args.hearts, args.seed)
    asyncio.run(soak.run(args.duration))
    print(f"soak: {args.hearts} hearts, {args.duration:g} s, seed {args.seed}")
    for name in (
        "short freezes",
        "long freezes",
        "kills",
        "manager stalls",
        "restarts",
        "deaths reported",
        "false deaths",
    ):
        print(f"  {name:<16} {soak.counts[name]}")
    if soak.latencies:
        print(
            f"  detection, s     max {max(soak.latencies):.2f} after the last beat, grace end"
            f" or forgiven stall; bound {BOUND + SLACK:g}"
        )
    for violation in soak.violations:
        print(f"  VIOLATION: {violation}")
    print(f"{len(soak.violations)} violations")
    return 1 if soak.violations else 0


if __name__ == "__main__":
    sys.exit(main())
