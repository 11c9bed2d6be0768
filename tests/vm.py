"""Run part of the suite in a virtual machine whose memory controller is cgroup v2's.

This machine's memory controller may be bound to cgroup v1 (it is here: a cgroup2 mount, even in
a private mount namespace, shows only the controllers v1 does not hold), and a controller
cannot be in both. So the memory tests that need cgroup v2 run under another Linux kernel, in
QEMU, started by virtme-ng (``vng``) on this machine's own root file system, read-only, with the
same Python and packages; inside, systemd is not running and the root cgroup's unified
hierarchy has every controller, memory among them (``tests.cgroups`` makes the test cgroups
there).

Usage: ``python -m tests.vm [pytest arguments]`` (default: :data:`MEMORY_TESTS`). Exits with
pytest's status inside; 2 with one line where no VM can be started (no ``vng``, no kernel
image, no ``qemu-system-x86_64``). ``.ci/cgroup2`` installs what it needs and runs it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: The tests that make memory cgroups and kill kernels in them: their v2 run.
MEMORY_TESTS = [
    "tests/test_cgroup2.py",
    "tests/test_deaths.py::test_an_out_of_memory_kill_is_named_with_its_cgroups_limit",
    "tests/test_death_causes.py::test_a_kernel_moved_into_a_limited_cgroup_after_its_start_is_oom_killed_there",
    "tests/test_memory_server.py::test_the_oom_killer_takes_the_kernel_not_the_server_which_says_how_much",
    "tests/test_memory_server.py::test_a_headless_kernels_memory_interrupt_through_its_provisioner",
]

#: What the VM is given. Software emulation (TCG) is many times slower than the host: the
#: tests' bounds are generous, their kernels' starts minutes at worst.
CPUS = 2
#: How many times slower than the host it is, about (a kernel's start: 5 s here, 60 s there).
TIME_SCALE = 12
MEMORY = "3G"


def kernel_image() -> Path | None:
    """The newest kernel image in /boot (Debian's ``linux-image-amd64``), or None."""
    images = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    return images[-1] if images else None


def vng() -> str | None:
    """virtme-ng's command: on PATH, or beside this Python."""
    beside = Path(sys.executable).parent / "vng"
    return shutil.which("vng") or (str(beside) if beside.exists() else None)


def command(pytest_args: list[str]) -> list[str]:
    """The command that boots the VM and runs ``pytest_args`` in it; SystemExit(2) with one line
    where a piece is missing."""
    runner, image = vng(), kernel_image()
    missing = [
        what
        for what, found in (
            ("virtme-ng's vng (pip install virtme-ng)", runner),
            ("a kernel image in /boot (apt-get install linux-image-amd64)", image),
            (
                "qemu-system-x86_64 (apt-get install qemu-system-x86)",
                shutil.which("qemu-system-x86_64"),
            ),
        )
        if not found
    ]
    if missing:
        raise SystemExit(f"tests.vm: cannot start a VM: no {', no '.join(missing)}")
    assert runner is not None and image is not None
    # The root file system is the host's, read-only: whatever the tests write goes to the VM's
    # own /tmp (its Jupyter runtime files, IPython's profile, pytest's cache is off).
    inside = [
        "env",
        "PYTHONDONTWRITEBYTECODE=1",
        "JUPYTER_RUNTIME_DIR=/tmp/jupyter-runtime",
        "IPYTHONDIR=/tmp/ipython",
        f"HEARTBEAT_TEST_TIME_SCALE={TIME_SCALE}",
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-n",
        "0",
        "-rs",
        # pytest-timeout's bound, for the host, is too short under emulation.
        "--timeout",
        "1800",
        *pytest_args,
    ]
    return [
        runner,
        "--run",
        str(image),
        # KVM, where /dev/kvm exists, may still not run a nested guest (it hangs here): software
        # emulation always does.
        "--disable-kvm",
        "--cpus",
        str(CPUS),
        "--memory",
        MEMORY,
        "--cwd",
        str(REPO),
        "--",
        shlex.join(inside),
    ]


def main(argv: list[str]) -> int:
    """Boot the VM, run pytest there, return its status."""
    args = argv or MEMORY_TESTS
    cmd = command(args)
    print("tests.vm:", shlex.join(cmd), flush=True)
    env = dict(os.environ)
    env["PATH"] = f"{Path(cmd[0]).parent}:{env.get('PATH', '')}"  # vng runs virtme-run beside it
    # Through a pipe: QEMU opens its output (/proc/self/fd/1) as a file, truncating it, which
    # would erase what a log that this process's output is redirected to holds before it.
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as vm:
        out = vm.stdout
        assert out is not None
        for chunk in iter(lambda: os.read(out.fileno(), 1 << 16), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        return vm.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
