"""Output for the command line: timestamped lines, plus a live status line on a terminal."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import TextIO

from heartbeat._judge import State


def ms(seconds: float | None) -> str:
    """A duration for people: '0.42 ms', '1.20 s', or '-'."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def rule(time_to_dead: float, interval: float) -> str:
    """The death rule in words, with the numbers in force."""
    return (
        f"a ping every {interval:g} s; dead when one goes unanswered for {time_to_dead:g} s, "
        f"late once one has waited {time_to_dead / 2:g} s"
    )


def meaning(state: State, time_to_dead: float) -> str:
    """What a state means now, for a line that reports the change to it."""
    half = time_to_dead / 2
    return {
        State.STARTING: "inside the first_beat grace",
        State.BEATING: "pings are answered",
        State.LATE: f"a ping has waited {half:g} s (half of time_to_dead) for its answer",
        State.DEAD: f"a ping went unanswered for time_to_dead ({time_to_dead:g} s)",
        State.STOPPED: "no longer watched",
        State.IDLE: "not watched yet",
    }[state]


class Console:
    """Writes event lines; on a terminal also keeps one status line redrawn beneath them."""

    def __init__(self, out: TextIO | None = None, *, json_lines: bool = False) -> None:
        self.out = out if out is not None else sys.stdout
        self.live = self.out.isatty() and not json_lines
        self.json_lines = json_lines
        self.started = time.monotonic()
        self._status = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self, text: str) -> None:
        """Print one event line, stamped with the seconds since start."""
        self._clear()
        self.out.write(f"[{self.elapsed():6.2f}s] {text}\n")
        self._draw()

    def record(self, event: str, **fields: object) -> None:
        """Print one JSON object on a line (for scripts)."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        self.out.write(json.dumps({"time": stamp, "event": event, **fields}) + "\n")
        self.out.flush()

    def status(self, text: str) -> None:
        """Replace the live status line (terminals only)."""
        if not self.live:
            return
        self._clear()
        self._status = text
        self._draw()

    def close(self) -> None:
        self._clear()
        self._status = ""
        self.out.flush()

    def _clear(self) -> None:
        if self.live and self._status:
            self.out.write("\r\x1b[K")

    def _draw(self) -> None:
        if self.live and self._status:
            self.out.write(self._status)
        self.out.flush()
