"""The stack hook works for an ordinary user: no ptrace, only a signal from a process to its
own child of the same user (Yama's ptrace_scope and CAP_SYS_PTRACE do not come into it).

Run as ``nobody`` (when the suite runs as root) with the system's Python, which has only the
standard library: the hook and the reading of the dump need nothing else. The kernel is a stand-in
``ipykernel_launcher`` module whose main thread holds the GIL in ``pause()`` for ever."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import asyncio, json, os, subprocess, sys, time
from heartbeat.jupyter._stacks import prepare
from heartbeat import _tracebacks

env = dict(os.environ)
cmd, stacks = prepare([sys.executable, "-m", "ipykernel_launcher"], env, "k")
proc = subprocess.Popen(cmd, env=env, cwd=os.path.dirname(os.path.abspath(__file__)),
                        stdout=subprocess.PIPE, text=True)
assert proc.stdout.readline().strip() == "holding the GIL"
time.sleep(0.5)  # in pause() by now
dump = asyncio.run(stacks.take(proc))
header = stacks.header()
alive = proc.poll() is None
proc.kill(); proc.wait()
main = None if dump is None else dump.main(header)
print(json.dumps({
    "uid": os.getuid(),
    "why_not": stacks.why_not,
    "main": None if main is None else _tracebacks.innermost(main),
    "alive_after": alive,
}))
stacks.close()
"""

LAUNCHER = "import ctypes\nprint('holding the GIL', flush=True)\nctypes.PyDLL(None).pause()\n"


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory anyone can read: the two modules the test needs, stubs of their packages,
    the script and the stand-in launcher."""
    top = Path(tempfile.mkdtemp(prefix="heartbeat-unprivileged-"))
    try:
        (top / "heartbeat" / "jupyter").mkdir(parents=True)
        (top / "heartbeat" / "__init__.py").write_text("")
        (top / "heartbeat" / "jupyter" / "__init__.py").write_text("")
        shutil.copy(ROOT / "heartbeat" / "_tracebacks.py", top / "heartbeat")
        shutil.copy(ROOT / "heartbeat" / "jupyter" / "_stacks.py", top / "heartbeat" / "jupyter")
        (top / "script.py").write_text(SCRIPT)
        (top / "ipykernel_launcher.py").write_text(LAUNCHER)
        for path in [top, *top.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_an_ordinary_user_gets_its_kernels_stacks_without_interrupting_it(world: Path) -> None:
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    argv = [python, str(world / "script.py")]
    if os.getuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to run as nobody")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(world), "TMPDIR": "/tmp"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["uid"] != 0
    assert seen["why_not"] is None, seen
    # The main thread's line: in the stand-in launcher, line 3 (pause), still there afterwards.
    assert "ipykernel_launcher.py:3 in <module>" in seen["main"], seen
    assert seen["alive_after"], "taking the stack interrupted the kernel"
