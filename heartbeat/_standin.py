"""A stand-in kernel process: a Heart, and a main thread that can hog the GIL on request.

Run as ``python -m heartbeat._standin [--url URL] [--wait-bind]``. With ``--wait-bind`` it first
prints ``{"ready": pid}`` and binds only when a ``bind`` line arrives (a kernel slow to start,
timed by the caller). It prints one JSON line ``{"url": ..., "pid": ...}`` once the heart
answers, then obeys lines on stdin:

- ``gil S``: hold the GIL for S seconds in a C call (ctypes.PyDLL keeps the GIL, as a
  long-running extension call in a real kernel does); prints ``{"gil": S}`` when done;
- ``quit`` (or end of input): stop the heart and exit.

The demo and the tests use it as the kernel whose heart is watched.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys

from heartbeat.heart import Heart


def hold_gil(seconds: float) -> None:
    """Block in C for ``seconds`` without releasing the GIL."""
    libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held for the whole call
    libc.usleep(ctypes.c_uint(int(seconds * 1_000_000)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heartbeat._standin")
    parser.add_argument("--url", default="tcp://127.0.0.1:0")
    parser.add_argument("--wait-bind", action="store_true")
    args = parser.parse_args(argv)
    if args.wait_bind:
        print(json.dumps({"ready": os.getpid()}), flush=True)
        if sys.stdin.readline().strip() != "bind":
            return 0
    with Heart(args.url) as heart:
        print(json.dumps({"url": heart.url, "pid": os.getpid()}), flush=True)
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "gil":
                hold_gil(float(arg))
                print(json.dumps({"gil": float(arg)}), flush=True)
            elif command == "quit":
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
