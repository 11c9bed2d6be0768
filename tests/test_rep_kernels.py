"""Kernels whose hearts are REP sockets (IRkernel's) or ROUTERs (a stand-in of each kind,
xeus-python's), watched by the kernel spec's provisioner, a pool and a kernel manager: no live
kernel is declared dead, whatever its heart's socket type (tests/test_rep_hearts.py for the
transports themselves). What each kernel's heart is, is read on the wire."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from heartbeat import HeartbeatPool
from heartbeat.probe import ping
from tests.echo_hearts import announced_socket_type
from tests.test_monitor import Watch
from tests.test_rep_hearts import KINDS, until, watched

# -- the kernel spec's provisioner, with a stand-in kernel of each kind and with IRkernel --------

STANDIN = textwrap.dedent(
    """
    import json, sys, zmq
    info = json.load(open(sys.argv[1]))
    socket = zmq.Context().socket(getattr(zmq, sys.argv[2]))
    socket.bind(f"tcp://{info['ip']}:{info['hb_port']}")
    while True:
        socket.send_multipart(socket.recv_multipart())
    """
)


def install_spec(
    data: Path, name: str, argv: list[str], time_to_dead: float, first_beat: float
) -> None:
    """A kernel spec named ``name`` under ``data`` that runs ``argv``, watched by its
    provisioner (the shared pool, as the provisioner's default)."""
    spec = {
        "argv": argv,
        "display_name": name,
        "language": "python",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "heartbeat-provisioner",
                "config": {"time_to_dead": time_to_dead, "first_beat": first_beat},
            }
        },
    }
    folder = data / "kernels" / name
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(spec))


async def provisioned_and_idle(
    name: str, idle: float, pool_too: bool
) -> tuple[Any, list[Watch], float, str]:
    """Start kernel ``name``; once its provisioner's monitor has a reply (60 s at most), leave it
    idle for ``idle`` seconds, also watched by a pool of the test's own if ``pool_too``.
    Returns the provisioner, that pool's watch, how long the first reply took, and the socket
    type the kernel's heart announces."""
    from jupyter_client.manager import AsyncKernelManager

    from heartbeat.connection import hb_url

    km = AsyncKernelManager(kernel_name=name)
    pool = HeartbeatPool()
    await km.start_kernel()
    started = time.monotonic()
    try:
        provisioner = km.provisioner
        monitor = provisioner._monitor  # type: ignore[union-attr]
        assert monitor is not None
        end = started + 60
        while monitor.stats.count == 0 and provisioner.last_death is None:  # type: ignore[union-attr]
            assert time.monotonic() < end, "the provisioner's monitor never had a reply"
            await asyncio.sleep(0.05)
        first = time.monotonic() - started
        info = km.get_connection_info()
        kind = announced_socket_type(str(info["ip"]), int(info["hb_port"]))
        watches: list[Watch] = []
        if pool_too:
            url = hb_url(dict(info), "the kernel").url
            watches.append(watched(url, pool, time_to_dead=3.0, first_beat=5.0))
            watches[0].start()
        await asyncio.sleep(idle)
        assert km.provisioner is provisioner and await km.is_alive()
        for watch in watches:
            watch.monitor.stop()
        return provisioner, watches, first, kind
    finally:
        pool.close()
        await km.shutdown_kernel(now=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_provisioner_watches_a_kernel_whose_heart_is_rep_or_router(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    argv = [sys.executable, "-c", STANDIN, "{connection_file}", kind]
    install_spec(tmp_path / "data", "standin", argv, time_to_dead=1.0, first_beat=5.0)
    provisioner, _, first, announced = asyncio.run(provisioned_and_idle("standin", 4.0, False))
    assert announced == kind
    assert provisioner.last_death is None and first <= 5.0, (provisioner.last_death, first)


def ir_argv() -> list[str]:
    """IRkernel's kernel spec's argv (Debian's r-cran-irkernel), installed if it is not."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return list(KernelSpecManager().get_kernel_spec("ir").argv)
    except NoSuchKernel:
        import subprocess

        subprocess.run(["R", "-e", "IRkernel::installspec(user=FALSE)"], check=True, timeout=120)
        return list(KernelSpecManager().get_kernel_spec("ir").argv)


def test_an_idle_irkernel_is_never_dead_to_the_provisioner_a_pool_or_a_kernel_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # IRkernel's heart is a REP socket. Two IRkernels idle for the same 15 s, time_to_dead 3:
    # one launched by the kernel spec's provisioner (the shared pool of the loop) and also
    # watched by a pool of the test's own; one under HeartbeatKernelManager (the shared pool,
    # as jupyter_server's extension has it). Their start (R, then the package) takes a few
    # seconds: the first_beat covers it; the test judges from the first reply on.
    from heartbeat.jupyter import HeartbeatKernelManager

    argv = ir_argv()
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    install_spec(tmp_path / "data", "ir-heartbeat", argv, time_to_dead=3.0, first_beat=30.0)

    async def scenario() -> tuple[Any, list[Watch], str, Any, bool]:
        km = HeartbeatKernelManager(kernel_name="ir", time_to_dead=3.0, first_beat=30.0)
        await km.start_kernel()
        try:
            monitor = km._heart_monitor
            assert monitor is not None
            idle = provisioned_and_idle("ir-heartbeat", 15.0, True)
            provisioner, watches, _, kind = await idle  # the kernel manager's idles meanwhile
            assert monitor.stats.count > 0, "the kernel manager's monitor never had a reply"
            return provisioner, watches, kind, km.last_death, await km.is_alive()
        finally:
            await km.shutdown_kernel(now=True)

    provisioner, [watch], kind, manager_death, alive = asyncio.run(scenario())
    assert kind == "REP"  # what makes this test one of a REP heart
    assert provisioner.last_death is None, provisioner.last_death
    assert watch.died == [] and len(watch.beats()) >= 8, watch.events
    assert manager_death is None and alive, manager_death


def test_xeus_pythons_heart_is_a_router_and_keeps_the_pools_one_socket() -> None:
    # xeus-zmq binds its heart as a ROUTER (its REP is an inproc socket for the stop message).
    from jupyter_client.manager import AsyncKernelManager

    from heartbeat.connection import hb_url

    async def scenario() -> tuple[str, Watch, int]:
        km = AsyncKernelManager(kernel_name="xpython")
        pool = HeartbeatPool()
        await km.start_kernel()
        try:
            info = km.get_connection_info()
            url = hb_url(dict(info), "the kernel").url
            assert await until(lambda: ping(url, timeout=0.5) is not None, timeout=60)
            kind = announced_socket_type(str(info["ip"]), int(info["hb_port"]))
            watch = watched(url, pool, time_to_dead=1.0, first_beat=3.0)
            watch.start()
            assert await until(lambda: len(watch.beats()) >= 4)
            dealers = pool.dealers
            watch.monitor.stop()
            return kind, watch, dealers
        finally:
            pool.close()
            await km.shutdown_kernel(now=True)

    kind, watch, dealers = asyncio.run(scenario())
    assert kind == "ROUTER" and dealers == 0 and watch.died == []


def test_an_idle_irkernel_under_jupyter_server_with_the_extension_is_never_restarted(
    tmp_path: Path,
) -> None:
    # The report: under `jupyter server` with the extension, an idle IRkernel was declared
    # dead every ~9 s (time_to_dead 3; first_beat 5), restarted, and removed. first_beat 10 here:
    # room for R's start on a loaded machine; a heart never reached would die 14.5 s in.
    import urllib.request

    from tests.test_jupyter_server import kernel_pid, serve

    ir_argv()  # the kernel spec is there
    settings = ["--HeartbeatKernelManager.time_to_dead=3", "--HeartbeatKernelManager.first_beat=10"]
    with serve(tmp_path, *settings, extension=True) as server:
        request = urllib.request.Request(
            f"{server.base}/api/kernels",
            method="POST",
            headers={"Authorization": f"token {server.token}"},
            data=json.dumps({"name": "ir"}).encode(),
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            kid = json.loads(response.read())["id"]
        started = time.monotonic()
        end = started + 60
        while (pid := kernel_pid(kid)) is None:
            assert time.monotonic() < end, "no IRkernel process"
            time.sleep(0.1)
        # No client: the server reports the kernel "starting" until one asks; its heart is
        # watched from the start all the same.
        time.sleep(max(15.0, started + 17.0 - time.monotonic()))
        kernel = server.api("GET", f"/api/kernels/{kid}")
        log = server.log.read_text()
        assert kernel_pid(kid) == pid, log  # never restarted
        assert kernel["execution_state"] in ("starting", "idle"), (kernel, log)
        assert "is dead" not in log and "died" not in log, log
        server.delete_kernel(kid)
