"""``heartbeat demo``: the story of the seed bug, told by a real kernel process and a monitor.

1. the kernel idles and beats; 2. its main thread holds the GIL and it still beats; 3. the
manager's own loop is blocked for longer than time_to_dead and nothing is declared; 4. the kernel
is frozen and then killed, and its death is reported within the bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

from heartbeat._console import Console, meaning, ms, rule
from heartbeat._judge import Beat, Dead, Event, Stall, StateChanged
from heartbeat.monitor import HeartMonitor

GIL_SECONDS = 5.0
IDLE_SECONDS = 3.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Story:
    """What the monitor reported, for the narration."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.beats: list[tuple[float, float | None]] = []
        self.false_alarm = False
        self.dead_at: float | None = None
        self.monitor: HeartMonitor | None = None

    def on_event(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, Beat):
            self.beats.append((now, event.rtt))
        elif isinstance(event, StateChanged):
            ttd = self.monitor.time_to_dead if self.monitor is not None else 0.0
            self.console.line(f"   state {event.old} -> {event.new}: {meaning(event.new, ttd)}")
        elif isinstance(event, Stall):
            self.console.line(
                f"   the monitor woke {event.late_by:.2f} s late: its own stall, not the "
                "kernel's silence; fresh ping, full time_to_dead"
            )
        elif isinstance(event, Dead):
            self.dead_at = now
            self.console.line(f"   DEAD: no reply for {event.silent_for:.2f} s")
        self.show()

    def show(self) -> None:
        m = self.monitor
        if m is not None:
            self.console.status(
                f"   {m.state.value:<8} last rtt {ms(m.last_rtt):>9}  beats {m.stats.count}"
            )

    def beats_since(self, t: float) -> list[float | None]:
        return [rtt for at, rtt in self.beats if at >= t]


async def _narrate(console: Console, story: Story, seconds: float) -> None:
    """Let time pass; on plain output say once a second that beats go on."""
    end = time.monotonic() + seconds
    next_line = time.monotonic() + 1.0
    while (now := time.monotonic()) < end:
        await asyncio.sleep(min(0.1, end - now))
        story.show()
        m = story.monitor
        if not console.live and m is not None and time.monotonic() >= next_line:
            next_line += 1.0
            console.line(f"   {m.state.value}, last rtt {ms(m.last_rtt)}, {m.stats.count} beats")


async def run_demo(time_to_dead: float, first_beat: float, console: Console) -> int:
    """Tell the story; return the exit code (0 when everything behaved as promised)."""
    url = f"tcp://127.0.0.1:{_free_port()}"
    story = Story(console)
    monitor = HeartMonitor(
        url, time_to_dead=time_to_dead, first_beat=first_beat, on_event=story.on_event
    )
    story.monitor = monitor
    died = asyncio.Event()
    console.line(
        f"heartbeat demo: time_to_dead {time_to_dead:g} s, first_beat {first_beat:g} s: "
        f"{rule(time_to_dead, monitor.interval)}"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "heartbeat._standin",
        "--url",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        # Watch from the moment the kernel is launched, as a kernel manager does: the
        # first_beat grace is what keeps a slow start from being called a death.
        monitor.start(died.set)
        launched = time.monotonic()
        console.line(f"launched a stand-in kernel (pid {proc.pid}) and a HeartMonitor on {url}")
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=first_beat + 30)
        if not line:
            console.line("the stand-in kernel did not start")
            return 1
        while not story.beats and not died.is_set():
            await asyncio.sleep(0.01)
        if story.beats:
            took = story.beats[0][0] - launched
            # With no grace (--first-beat 0) the heart had time_to_dead to answer.
            within = (
                f"within the {first_beat:g} s grace"
                if first_beat > 0
                else f"no grace asked: within time_to_dead {monitor.time_to_dead:g} s"
            )
            console.line(f"first beat {took:.2f} s after launch ({within})")

        console.line("1. the kernel idles")
        idle = time.monotonic()
        await _narrate(console, story, IDLE_SECONDS)
        rtts = [r for r in story.beats_since(idle) if r is not None]
        console.line(
            f"   {len(rtts)} beats, rtt median {ms(sorted(rtts)[len(rtts) // 2] if rtts else None)}"
            f", max {ms(max(rtts, default=None))}"
        )

        console.line(
            f"2. the kernel's main thread holds the GIL for {GIL_SECONDS:g} s "
            "(a C call made through ctypes.PyDLL)"
        )
        proc.stdin.write(f"gil {GIL_SECONDS}\n".encode())
        await proc.stdin.drain()
        held = time.monotonic()
        await _narrate(console, story, GIL_SECONDS)
        await asyncio.wait_for(proc.stdout.readline(), timeout=30)  # the call has returned
        during = story.beats_since(held + 0.2)
        rtts = [r for r in during if r is not None]
        console.line(
            f"   {len(during)} beats while the GIL was held, slowest {ms(max(rtts, default=None))}:"
            " the heart answers from its own C thread"
        )

        block = max(2.0, 2 * time_to_dead)
        console.line(
            f"3. the manager's own loop is blocked for {block:g} s, longer than time_to_dead "
            "(a slow request, a GC pause, a laptop lid)"
        )
        time.sleep(block)  # deliberately blocks this loop, which runs the monitor
        await _narrate(console, story, 2.0)
        if died.is_set():
            story.false_alarm = True
            console.line("   FALSE ALARM: the monitor declared a live kernel dead")
            return 1
        console.line(f"   no false alarm: state {monitor.state.value}")

        console.line(f"4. the kernel is frozen with SIGSTOP (pid {proc.pid})")
        os.kill(proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        bound = time_to_dead + monitor.interval
        await asyncio.wait_for(died.wait(), timeout=first_beat + bound + 30)
        assert story.dead_at is not None
        # A reply can still land between our reading the clock and the freeze taking hold.
        last_beat = max((t for t, _ in story.beats if t <= story.dead_at), default=launched)
        console.line(
            f"   detected {story.dead_at - last_beat:.2f} s after the last beat "
            f"({story.dead_at - frozen:.2f} s after the freeze); promised between "
            f"{time_to_dead:g} and {bound:g} s (time_to_dead + interval) after the last beat, "
            "plus the loop's scheduling delay"
        )
        proc.kill()
        await proc.wait()
        console.line(f"   killed the frozen kernel (pid {proc.pid})")
        console.line(
            "done: no false alarms, and the real death was reported "
            f"{story.dead_at - last_beat:.2f} s after the kernel's last beat"
        )
        return 0
    finally:
        monitor.stop()
        if proc.returncode is None:
            proc.kill()  # SIGKILL also ends a stopped process
            await proc.wait()
        console.close()


def main(time_to_dead: float, first_beat: float) -> int:
    """Run the demo on a fresh event loop; Ctrl-C cleans up and returns 130."""
    console = Console()
    try:
        return asyncio.run(run_demo(time_to_dead, first_beat, console))
    except KeyboardInterrupt:
        console.close()
        print("interrupted; the stand-in kernel was stopped", file=sys.stderr)
        return 130
    except (asyncio.TimeoutError, OSError) as exc:
        print(f"heartbeat demo: {exc!r}", file=sys.stderr)
        return 1
