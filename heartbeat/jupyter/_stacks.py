"""Where a Python kernel is stuck: each thread's stack, taken without stopping the kernel, and the
line a crash died on.

How (docs/busy-forever.md says it for users):

- py-spy and gdb read another process's memory, which needs ptrace rights that an ordinary user
  lacks under Yama's default ``ptrace_scope=1`` (and a container without ``CAP_SYS_PTRACE``).
  Code inside the kernel needs no rights: ``faulthandler`` dumps every thread's Python stack from
  a C signal handler, without the GIL, so it works while a thread holds the GIL forever.
- The code gets into the kernel through its command: ``python -m ipykernel_launcher ...``
  becomes ``python -c <HOOK> ipykernel_launcher ...``, where HOOK installs faulthandler then runs
  the module as ``-m`` would (``runpy``, ``sys.path[0]`` the working directory). Not a
  ``sitecustomize`` on ``PYTHONPATH`` (it would shadow the environment's own, and reach every
  Python the user starts from the kernel), nor ``--IPKernelApp.exec_lines`` (a command-line list
  replaces the user's configured one). The hook imports nothing of this package: the kernel's
  Python may not have it. Only the file's path crosses, as ``HEARTBEAT_STACKS_FILE``, which the
  hook removes from the kernel's environment at once.
- The dump is asked with a real-time signal (``SIGRTMAX - 2``: neither ipykernel nor Python
  uses it) sent with ``tgkill`` to a thread of the hook's own that only waits: a signal sent to
  the process would go to the main thread and cut short the very call it is stuck in (a
  ``pause()``, a ``sleep()``). It is sent only to our local child
  (``heartbeat.jupyter.kernel.local_child``), only to the thread the kernel named, and only while
  the kernel catches it (``SigCgt``): its default action would end the kernel.
- ``faulthandler.enable`` into the same file gives a SIGSEGV or SIGABRT its Python frame.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Any

from heartbeat import _tracebacks
from heartbeat._tracebacks import Dump, Header

ENV = "HEARTBEAT_STACKS_FILE"
_LAUNCHERS = ("ipykernel_launcher", "ipykernel")

# Runs as ``python -c HOOK <module> <args>``, in the kernel's own Python (any version from 3.8).
HOOK = f"""\
import os, sys
def _heartbeat_stacks():
    path = os.environ.pop({ENV!r}, None)
    if not path:
        return
    try:
        import faulthandler, signal, threading
        out = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
        faulthandler.enable(file=out, all_threads=True)
        signum = signal.SIGRTMAX - 2
        faulthandler.register(signum, file=out, all_threads=True, chain=False)
        main = threading.main_thread().ident
        def wait():
            out.write("{_tracebacks.HEADER} pid=%d tid=%d signal=%d main=%#x\\n"
                      % (os.getpid(), threading.get_native_id(), signum, main))
            threading.Event().wait()
        threading.Thread(target=wait, name="heartbeat-stacks", daemon=True).start()
    except Exception as exc:
        sys.stderr.write("heartbeat: this kernel's stacks cannot be had: %r\\n" % (exc,))
_heartbeat_stacks()
del _heartbeat_stacks
import runpy
if sys.path and sys.path[0] == "":
    sys.path[0] = os.getcwd()
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""

# tgkill(2)'s number: Python has no call for a thread of another process.
_TGKILL = {
    "x86_64": 234,
    "amd64": 234,
    "aarch64": 131,
    "arm64": 131,
    "riscv64": 131,
    "loongarch64": 131,
    "i386": 270,
    "i686": 270,
    "ppc64le": 250,
    "ppc64": 250,
    "s390x": 241,
}

#: How long a dump may take to appear once asked.
DUMP_TIMEOUT = 3.0


def hooked(cmd: list[str]) -> list[str] | None:
    """``cmd`` with the hook in, if it runs ipykernel as ``python [options] -m
    ipykernel_launcher ...``; None otherwise (nothing else is known to be Python)."""
    i = 1
    while i < len(cmd):
        arg = cmd[i]
        if arg == "-m":
            if i + 1 < len(cmd) and cmd[i + 1] in _LAUNCHERS:
                return [*cmd[:i], "-c", HOOK, *cmd[i + 1 :]]
            return None
        if arg in ("-X", "-W"):
            i += 2
        elif arg.startswith("-") and arg != "-":
            i += 1
        else:
            return None
    return None


class StackFile:
    """The file one kernel writes its stacks to, made private to this process's user, and
    what is read from it. ``why_not`` says, once something is known, why no stack can be had."""

    def __init__(self, kernel_id: str | None) -> None:
        # Mode 0700; removed by close(), or when this is collected (the manager made a new one
        # or is gone), or at exit, quietly (TemporaryDirectory would warn there).
        directory = tempfile.mkdtemp(prefix="heartbeat-stacks-")
        self._remove = weakref.finalize(self, shutil.rmtree, directory, True)
        self.path = Path(directory) / f"{kernel_id or 'kernel'}.txt"
        self.path.touch(mode=0o600)
        self.why_not: str | None = None
        self._crash_read = 0

    def close(self) -> None:
        """Remove the file (a kernel still writing to it keeps its open file)."""
        self._remove()

    def header(self) -> Header | None:
        """What the kernel said of itself, once its hook has run."""
        try:
            with self.path.open(encoding="utf-8", errors="replace") as text:
                return _tracebacks.parse_header(text.readline())
        except OSError:
            return None

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return -1

    def _read_from(self, offset: int) -> str:
        try:
            with self.path.open("rb") as file:
                file.seek(offset)
                return file.read().decode("utf-8", "replace")
        except OSError:
            return ""

    async def take(self, process: subprocess.Popen[Any] | None) -> Dump | None:
        """Ask our local child ``process`` for its stacks and read them; None (and
        ``why_not``) when they cannot be had."""
        header = self._can_ask(process)
        if header is None or process is None:
            return None
        offset = self._size()
        try:
            _tgkill(process.pid, header.tid, header.signal)
        except OSError as exc:
            self.why_not = f"its dumper thread could not be signalled: {exc}"
            return None
        loop = asyncio.get_running_loop()
        end = loop.time() + DUMP_TIMEOUT
        size = self._size()
        while loop.time() < end:
            await asyncio.sleep(0.05)
            now = self._size()
            if now > offset and now == size:
                break  # written, and not growing: faulthandler writes it at once, in one go
            size = now
        dumps = _tracebacks.parse(self._read_from(offset))
        if not dumps:
            self.why_not = f"it wrote no stack within {DUMP_TIMEOUT:.0f} s of being asked"
            return None
        return dumps[-1]

    def crash(self) -> Dump | None:
        """The dump of a fatal error (SIGSEGV, SIGABRT...) the kernel wrote, if any, once."""
        text = self._read_from(0)
        fatal = [d for d in _tracebacks.parse(text) if d.fatal is not None]
        if len(fatal) <= self._crash_read:
            return None
        self._crash_read = len(fatal)
        return fatal[-1]

    def _can_ask(self, process: subprocess.Popen[Any] | None) -> Header | None:
        if process is None:
            self.why_not = "its process is no child of this one (only our own kernels are asked)"
            return None
        if process.poll() is not None:
            self.why_not = "its process has exited"
            return None
        header = self.header()
        if header is None:
            self.why_not = (
                "it did not install the stack hook (not started as `python -m "
                "ipykernel_launcher`, or its Python could not: see its stderr)"
            )
            return None
        if header.pid != process.pid:
            self.why_not = f"its stack file names process {header.pid}, not {process.pid}"
            return None
        if platform.machine().lower() not in _TGKILL:
            self.why_not = f"this machine's architecture ({platform.machine()}) is not known here"
            return None
        if not _catches(process.pid, header.signal):
            # Its default action would end the kernel: never sent then.
            self.why_not = f"it no longer catches signal {header.signal}"
            return None
        return header


def _catches(pid: int, signum: int) -> bool:
    # /proc/<pid>/status: SigCgt is the mask of signals with a handler (bit n-1 for signal n).
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _tgkill(pid: int, tid: int, signum: int) -> None:
    # Only the thread ``tid`` of process ``pid`` (our child, checked by the caller) gets it: the
    # kernel refuses a tid that is not in that process (ESRCH).
    libc = ctypes.CDLL(None, use_errno=True)
    number = _TGKILL[platform.machine().lower()]
    if libc.syscall(number, pid, tid, signum) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def prepare(
    cmd: list[str], env: dict[str, str], kernel_id: str | None
) -> tuple[list[str], StackFile | None]:
    """The command to launch, and the stack file (None when the kernel is not one the hook
    knows how to enter: ``why`` is then logged by the caller)."""
    hooked_cmd = hooked(cmd)
    if hooked_cmd is None:
        return cmd, None
    stacks = StackFile(kernel_id)
    env[ENV] = str(stacks.path)
    return hooked_cmd, stacks
