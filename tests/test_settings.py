"""Settings refused when they are configured, not at each kernel's start; and a kernel whose watch
cannot start (out of file descriptors) is ended and reaped, not left running unlisted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Config

from heartbeat.jupyter import (
    HeartbeatIOLoopKernelManager,
    HeartbeatKernelManager,
    HeartbeatProvisioner,
)
from tests.conftest import free_port, run_python
from tests.test_headless import install_kernelspec
from tests.test_jupyter_server import CONFIG_LINE, serve

REFUSED = "interval must be at most time_to_dead / 2 = 1.5 s (time_to_dead 3 s)"
SETTINGS = [HeartbeatKernelManager, HeartbeatIOLoopKernelManager, HeartbeatProvisioner]


@pytest.mark.parametrize("kind", SETTINGS, ids=lambda kind: kind.__name__)
def test_a_bad_pair_is_refused_when_configured_naming_both_and_the_rule(kind: Any) -> None:
    for refused in (
        lambda: kind(interval=2.0),
        lambda: kind(config=Config({kind.__name__: {"interval": 2.0}})),
        lambda: kind(config=Config({"HeartbeatSettings": {"interval": 2.0}})),
    ):
        with pytest.raises(TraitError, match=re.escape(REFUSED)):
            refused()
    made = kind(time_to_dead=5.0, interval=2.0)
    with pytest.raises(TraitError, match=r"time_to_dead / 2 = 1\.5 s .* got 2\.0"):
        made.time_to_dead = 3.0  # the other way round: the pair is refused all the same
    assert (made.time_to_dead, made.interval) == (5.0, 2.0)
    made.interval = None  # the default follows time_to_dead
    made.time_to_dead = 3.0


@pytest.mark.parametrize("order", ["interval first", "time_to_dead first"])
def test_a_valid_pair_passes_whatever_order_its_config_comes_in(order: str) -> None:
    pair = {"interval": 2.0, "time_to_dead": 5.0}
    if order == "time_to_dead first":
        pair = dict(reversed(pair.items()))
    km = HeartbeatKernelManager(config=Config({"HeartbeatKernelManager": pair}))
    assert (km.time_to_dead, km.interval) == (5.0, 2.0)
    km = HeartbeatKernelManager(**pair)
    assert (km.time_to_dead, km.interval) == (5.0, 2.0)


# Run in a fresh interpreter whose soft RLIMIT_NOFILE is lowered just before the start: a pool
# then refuses the heart (it keeps 64 descriptors for everything else), while the launch, which
# needs a few, goes through. Prints what the start raised and this process's children left.
_EMFILE = """
import asyncio, json, os, resource, signal, sys
from jupyter_client.manager import AsyncKernelManager
from heartbeat.jupyter import HeartbeatKernelManager

def children():
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if int(fields[1]) == os.getpid():
            found.append([int(entry), fields[0]])
    return found

async def main():
    if sys.argv[1].startswith("manager"):
        km = HeartbeatKernelManager(kernel_name="python3", first_beat=30.0)
    else:
        km = AsyncKernelManager(kernel_name="python3-heartbeat")
    if sys.argv[1] == "manager, at a restart":
        await km.start_kernel()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (60, hard))
    try:
        if sys.argv[1] == "manager, at a restart":
            await km.restart_kernel(now=True)
        else:
            await km.start_kernel()
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    left = children()
    print(json.dumps({"error": error, "left": left}), flush=True)
    for pid, _ in left:  # our own children: ended here, whatever the test says
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if error is None:
        await km.shutdown_kernel(now=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("owner", ["manager", "manager, at a restart", "provisioner"])
def test_a_watch_that_cannot_start_ends_the_kernel_just_launched(
    owner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_kernelspec(tmp_path, monkeypatch, first_beat=30.0)
    done = run_python(_EMFILE, timeout=120, args=[owner])
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.splitlines()[-1])
    assert said["error"] is not None and said["error"].startswith("OSError: cannot watch")
    assert "RLIMIT_NOFILE" in said["error"], said
    # Without the clean-up, the ipykernel runs on (state R or S), and nobody lists it.
    assert said["left"] == [], said


def kernels_of(pid: int) -> list[str]:
    """The command lines of ``pid``'s children that are kernels (a server has other children:
    a language server's, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(fields[1]) == pid and "kernel" in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_a_bad_pair_leaves_no_kernel_behind_when_the_extension_is_not_there(
    tmp_path: Path,
) -> None:
    # The manager named by hand: each start is refused, before any process is launched (each
    # POST left an ipykernel running, unlisted, until the server exited).
    with serve(tmp_path, CONFIG_LINE, "--HeartbeatKernelManager.interval=2") as server:
        for _ in range(2):
            with pytest.raises(urllib.error.HTTPError) as refused:
                server.api("POST", "/api/kernels")
            assert refused.value.code == 500
            refused.value.close()
        assert server.api("GET", "/api/kernels") == []
        time.sleep(0.5)  # a kernel launched would still be there: nothing here ends it
        assert kernels_of(server.proc.pid) == []
    assert REFUSED in server.log.read_text()


def test_a_server_with_a_bad_pair_does_not_start_and_says_why_in_one_line(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config" / "jupyter_server_config.d"
    config.mkdir(parents=True)
    (config / "heartbeat.jupyter.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"heartbeat.jupyter": True}}})
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    argv = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={free_port()}",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_root=True",
        f"--ServerApp.root_dir={tmp_path}",
        "--HeartbeatKernelManager.interval=2",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "kernel-heartbeat:" in line]
    assert line.startswith("[C ") and line.endswith(
        f"{REFUSED} so a heart is pinged twice "
        "before it is judged, got 2.0; the server is not started"
    ), line
    assert "the settings of HeartbeatKernelManager are refused" in line
    assert "Traceback" not in done.stderr, done.stderr
