"""A Python kernel's threads' stacks, read from the text ``faulthandler`` writes (sans-IO: text
in, plain data out; ``heartbeat.jupyter._stacks`` gets the text).

The kernel writes, into a file its manager made, one header line when it starts (see
``heartbeat.jupyter._stacks``), then a dump of every thread each time it is asked (a signal to
its dumper thread), and a last one if it dies of a fatal signal (SIGSEGV, SIGABRT...). A dump
lists each thread innermost call first::

    Thread 0x00007f8210a31b80 (most recent call first):
      File "/tmp/ipykernel_13706/16411275.py", line 1 in <module>
      File ".../IPython/core/interactiveshell.py", line 3508 in run_code

    Current thread 0x00007f820fbf66c0 (most recent call first):
      ...

A fatal error's dump starts with ``Fatal Python error: Segmentation fault``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

HEADER = "heartbeat-stacks"
# The runner's own frames, below the kernel's: not where anyone is stuck.
_RUNNER = ("<frozen runpy>", "<string>")
_THREAD = re.compile(
    r"^(Current thread|Thread) (0x[0-9a-fA-F]+)(?: \[.*\])? \(most recent call first\):"
)
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+|\?\?\?) in (.*)$')
# A cell's code, as ipykernel (``/tmp/ipykernel_<pid>/<hash>.py``) and IPython name it.
# A kernel's own threads (its heart, its channels, IOPub, history): not the user's.
_KERNELS_OWN = re.compile(r"/(ipykernel|IPython)/")
_CELL = re.compile(r"(^|/)ipykernel_\d+/\d+\.py$|^<ipython-input-")


@dataclass(frozen=True)
class Header:
    """What the kernel said of itself when it started: its pid, the native id of the thread
    that takes the dump signal, that signal, and its main thread's ident (as a dump shows it)."""

    pid: int
    tid: int
    signal: int
    main: int


@dataclass(frozen=True)
class Frame:
    """One call: file, line (None: unknown) and function."""

    file: str
    line: int | None
    function: str

    @property
    def in_cell(self) -> bool:
        """True for the code of a notebook cell."""
        return bool(_CELL.search(self.file))

    def __str__(self) -> str:
        where = "cell" if self.in_cell else self.file
        line = "?" if self.line is None else str(self.line)
        return f"{where}:{line} in {self.function}"


@dataclass(frozen=True)
class Thread:
    """One thread's stack, innermost call first. ``current``: the thread that wrote the dump
    (the dumper, or the one that crashed)."""

    ident: int
    current: bool
    frames: tuple[Frame, ...] = field(default=())


@dataclass(frozen=True)
class Dump:
    """One dump: its threads, and the fatal error that caused it, if any."""

    threads: tuple[Thread, ...]
    fatal: str | None = None

    def main(self, header: Header | None) -> Thread | None:
        """The main thread's stack, when the header says which it is."""
        if header is None:
            return None
        return next((t for t in self.threads if t.ident == header.main), None)

    def others(self, header: Header | None) -> tuple[Thread, ...]:
        """The other threads (the dumper's own stack left out: it only waits to be asked)."""
        main = None if header is None else header.main
        return tuple(
            t for t in self.threads if t.ident != main and not (t.current and self.fatal is None)
        )


def parse_header(line: str) -> Header | None:
    """The header line's facts; None if ``line`` is not one."""
    if not isinstance(line, str):
        raise TypeError(f"header must be a str, not {type(line).__name__}")
    words = line.split()
    if not words or words[0] != HEADER:
        return None
    fields = dict(word.split("=", 1) for word in words[1:] if "=" in word)
    try:
        return Header(
            int(fields["pid"]), int(fields["tid"]), int(fields["signal"]), int(fields["main"], 0)
        )
    except (KeyError, ValueError):
        return None


def parse(text: str) -> list[Dump]:
    """Every complete dump in ``text`` (the file's content after the header), in order."""
    if not isinstance(text, str):
        raise TypeError(f"dump text must be a str, not {type(text).__name__}")
    dumps: list[Dump] = []
    threads: list[Thread] = []
    frames: list[Frame] = []
    head: tuple[int, bool] | None = None
    fatal: str | None = None

    def close_thread() -> None:
        nonlocal head, frames
        if head is not None:
            kept = tuple(f for f in frames if f.file not in _RUNNER)
            threads.append(Thread(head[0], head[1], kept))
        head, frames = None, []

    def close_dump() -> None:
        nonlocal threads, fatal
        close_thread()
        if threads:
            dumps.append(Dump(tuple(threads), fatal))
        threads, fatal = [], None

    for line in text.splitlines():
        thread = _THREAD.match(line)
        if thread:
            close_thread()
            current = thread.group(1) == "Current thread"
            # A dump begins again where a thread already listed would come twice.
            if any(t.ident == int(thread.group(2), 16) for t in threads):
                close_dump()
            head = (int(thread.group(2), 16), current)
            continue
        frame = _FRAME.match(line)
        if frame and head is not None:
            number = frame.group(2)
            frames.append(
                Frame(frame.group(1), None if number == "???" else int(number), frame.group(3))
            )
            continue
        if line.startswith("Fatal Python error:"):
            close_dump()
            fatal = line.partition(":")[2].strip()
            continue
        if line.strip() == "" or line.startswith(HEADER):
            close_thread()
            if line.startswith(HEADER):
                close_dump()
    close_dump()
    return dumps


def innermost(thread: Thread, count: int = 3) -> str:
    """The thread's innermost frames in a line, down to the cell's line if it is in one:
    ``re/__init__.py:166 in match <- cell:1 in <module>``."""
    frames = thread.frames
    if not frames:
        return "no Python frame"
    cell = next((i for i, f in enumerate(frames) if f.in_cell), None)
    shown = list(frames[: count if cell is None else min(cell + 1, count)])
    text = " <- ".join(_short(f) for f in shown)
    if cell is not None and cell >= count:
        text += f" <- ... <- {_short(frames[cell])}"
    return text


def _short(frame: Frame) -> str:
    # The last two parts of a path say which module; the whole path is in the full stacks.
    if frame.in_cell:
        return str(frame)
    line = "?" if frame.line is None else str(frame.line)
    return f"{'/'.join(frame.file.split('/')[-2:])}:{line} in {frame.function}"


def render(dump: Dump, header: Header | None, *, brief: bool = False) -> str:
    """The whole dump as lines for a report: the main thread first, each thread innermost
    call first. ``brief`` (for a cell): the main thread down to the cell's line, and the other
    threads but the kernel's own (those in ipykernel's or IPython's code)."""
    lines: list[str] = []
    if dump.fatal:
        lines.append(f"Fatal Python error: {dump.fatal}")
    main = dump.main(header)
    others = list(dump.others(header))
    if brief:
        others = [t for t in others if not any(_KERNELS_OWN.search(f.file) for f in t.frames)]
    ordered = ([main] if main is not None else []) + others
    for thread in ordered:
        name = "main thread" if main is not None and thread is main else f"thread {thread.ident:#x}"
        if thread.current and dump.fatal:
            name += " (crashed)"
        frames = list(thread.frames)
        cell = next((i for i, f in enumerate(frames) if f.in_cell), None)
        if brief and thread is main and cell is not None:
            frames = frames[: cell + 1]
        lines.append(f"{name} (most recent call first):")
        lines.extend(f"  {f.file}, line {f.line} in {f.function}" for f in frames)
    return "\n".join(lines)
