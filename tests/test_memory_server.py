"""A real out-of-memory kill under a real ``jupyter server`` that shares its memory cgroup with
its kernel and is *larger* than it: stock, the OOM killer takes the server (every kernel and
its unsaved state with it); ours, the kernel (its processes' ``oom_score_adj`` raised), and the
server, alive, says how much the kernel used. The kernel dies by its own hand (a cell)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests import cgroups
from tests.cgroups import joiner
from tests.conftest import scaled
from tests.test_headless import install_kernelspec
from tests.test_jupyter_server import Server, execute_request, serve
from tests.test_metrics import metrics_of, scrape
from tests.test_server_deaths import SETTINGS, close, connect, notices, run_until_restart

# The server holds BALLAST besides its own ~100 MiB; an idle ipykernel ~60 MiB. The cell grows
# its kernel by 80 MiB/s until the cgroup's LIMIT: the kernel is then ~200 MiB, the server ~400.
LIMIT = 640 << 20
BALLAST = 300 << 20
GROW = "import time\nx = []\nwhile True:\n    x.append(b'x' * (16 << 20))\n    time.sleep(0.2)\n"


def memory_cgroup(limit: int) -> contextlib.AbstractContextManager[Path]:
    """A memory cgroup limited to ``limit`` bytes (v1 or v2: :mod:`tests.cgroups`); what is
    left in it after 30 s (a server of the test's) is SIGKILLed, then it is removed."""
    return cgroups.memory_cgroup(limit, kill_after=30)


def ballast(tmp_path: Path) -> None:
    """A server config that makes the server hold BALLAST bytes, touched (counted by the
    cgroup), for as long as it runs."""
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    (config / "jupyter_server_config.py").write_text(
        f"import sys\nsys.heartbeat_test_ballast = b'b' * {BALLAST}\n"
    )


async def ready(server: Server, kid: str) -> None:
    """Once the kernel answers (its websocket opens): on a loaded machine its start can take
    longer than a websocket client's default 20 s."""
    url = server.base.replace("http", "ws") + f"/api/kernels/{kid}/channels"
    headers = {"Authorization": f"token {server.token}"}
    request = HTTPRequest(
        url, headers=headers, connect_timeout=scaled(120), request_timeout=scaled(120)
    )
    await close(await websocket_connect(request))


def wait_for(predicate: object, timeout: float, what: str) -> None:
    end = time.monotonic() + scaled(timeout)
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, what
        time.sleep(0.1)


async def grow_until_the_server_ends(server: Server, kid: str) -> None:
    """Run GROW in kernel ``kid`` and read its channels until the server's end closes them."""
    await ready(server, kid)
    conn = await connect(server, f"/api/kernels/{kid}/channels")
    try:
        await conn.write_message(execute_request(GROW))
        while await asyncio.wait_for(conn.read_message(), timeout=scaled(60)) is not None:
            pass
    finally:
        conn.close()


@pytest.mark.slow
def test_stock_the_oom_killer_takes_the_server_larger_than_its_kernel(tmp_path: Path) -> None:
    # The comparison: what the next test's mechanism changes. Stock jupyter_server, no extension.
    ballast(tmp_path)
    with (
        memory_cgroup(LIMIT) as group,
        serve(tmp_path, preexec_fn=joiner(group)) as server,
    ):
        kid = server.api("POST", "/api/kernels")["id"]

        asyncio.run(grow_until_the_server_ends(server, kid))
        wait_for(lambda: server.proc.poll() is not None, 60, "the server outlived the OOM")
        assert server.proc.returncode == -signal.SIGKILL
        oom = cgroups.oom_kills(group)
        assert oom >= 1, oom


def test_the_oom_killer_takes_the_kernel_not_the_server_which_says_how_much(
    tmp_path: Path,
) -> None:
    ballast(tmp_path)
    with (
        memory_cgroup(LIMIT) as group,
        serve(tmp_path, *SETTINGS, extension=True, preexec_fn=joiner(group)) as server,
    ):
        kid = server.api("POST", "/api/kernels")["id"]

        async def scenario() -> tuple[str, list[Any]]:
            await ready(server, kid)
            found = await run_until_restart(server, kid, GROW)
            await close(await connect(server, f"/api/kernels/{kid}/channels"))
            return found

        msg_id, seen = asyncio.run(scenario())
        assert server.proc.poll() is None, "the server died"
        metrics = scrape(metrics_of(server))["values"]
        assert server.api("GET", f"/api/kernels/{kid}")["id"] == kid
        server.delete_kernel(kid)
        oom = cgroups.oom_kills(group)
    assert server.proc.returncode == 0 or server.proc.returncode == -signal.SIGTERM
    assert oom == 1, oom
    log = server.log.read_text(errors="replace")
    # The event (its peak) emitted as its schema says: no callback of the death failed.
    assert "ValidationError" not in log and "callback" not in log, log
    lines = log.splitlines()
    ours = [line for line in lines if f"Kernel {kid}: " in line]
    # Warned before the kill (the log; memory_warning 0.9), then its death with its peak.
    [warned] = [line for line in ours if "(memory_warning)" in line]
    assert re.search(r"memory cgroup uses [\d.]+ MiB of its 640.0 MiB limit", warned)
    [died] = [line for line in ours if " died: " in line]
    found = re.search(
        r"died: it was killed by SIGKILL \(9\)(: its memory cgroup recorded an out-of-memory "
        r"kill|, out of memory: the kernel log names it as the out-of-memory killer's victim|, "
        r"likely out of memory: .* share that cgroup): this kernel used at least ([\d.]+) MiB "
        r"at its peak; its cgroup's limit is "
        r"640.0 MiB, shared with 1 other process; restarting it$",
        died,
    )
    assert found, died
    # More than an idle kernel: its growth was read, up to near what the server left it.
    assert 150 < float(found.group(2)) < 640, died
    assert ours.index(warned) < ours.index(died)
    # The running cell: warned on its stderr, once, then told of its death with its peak.
    told = [
        m["content"]["text"]
        for m in seen
        if m.get("msg_type") == "stream" and m["parent_header"].get("msg_id") == msg_id
    ]
    assert len(told) == 1, seen
    assert re.fullmatch(
        r"KernelMemory: This kernel's memory cgroup uses [\d.]+ MiB of its 640.0 MiB limit; at "
        r"the limit the largest kernel is killed by the out-of-memory killer.\n",
        told[0],
    ), told
    [notice] = notices(seen, msg_id)
    assert "this kernel used at least" in notice and "shared with 1 other process" in notice
    # /metrics: its peak in the histogram, no kernel named.
    assert metrics["heartbeat_oom_peak_bytes_count", ()] == 1
    assert 150 << 20 < metrics["heartbeat_oom_peak_bytes_sum", ()] < LIMIT


def test_memory_interrupt_interrupts_the_cell_and_the_kernel_lives_on(tmp_path: Path) -> None:
    # Opted in at 0.8 of the limit: the cell ends with KeyboardInterrupt before the OOM killer
    # acts, and the kernel's earlier state survives.
    ballast(tmp_path)
    interrupt = "--HeartbeatKernelManager.memory_interrupt=0.8"
    with (
        memory_cgroup(LIMIT) as group,
        serve(tmp_path, *SETTINGS, interrupt, extension=True, preexec_fn=joiner(group)) as server,
    ):
        kid = server.api("POST", "/api/kernels")["id"]

        async def scenario() -> list[Any]:
            await ready(server, kid)
            conn = await connect(server, f"/api/kernels/{kid}/channels")
            try:
                replies = []
                for code in ("kept = 42", GROW, "print(kept)"):
                    request = execute_request(code)
                    msg_id = json.loads(request)["header"]["msg_id"]
                    await conn.write_message(request)
                    seen: list[Any] = []
                    # Its reply (shell) and its idle status (iopub: after its outputs), in
                    # whichever order the two channels bring them.
                    while not (
                        any(m["msg_type"] == "execute_reply" for m in seen)
                        and any(
                            m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                            for m in seen
                        )
                    ):
                        raw = await asyncio.wait_for(conn.read_message(), timeout=scaled(60))
                        assert raw is not None, "websocket closed"
                        msg = json.loads(raw)
                        if msg["parent_header"].get("msg_id") == msg_id:
                            seen.append(msg)
                    replies.append(sorted(seen, key=lambda m: m["msg_type"] == "execute_reply"))
                return replies
            finally:
                await close(conn)

        replies = asyncio.run(scenario())
        oom = cgroups.oom_kills(group)
        server.delete_kernel(kid)
    assert oom == 0, oom
    grown = replies[1]
    assert grown[-1]["content"]["status"] == "error"
    assert grown[-1]["content"]["ename"] == "KeyboardInterrupt", grown[-1]
    streams = [m["content"]["text"] for m in grown if m["msg_type"] == "stream"]
    assert any(t.startswith("KernelMemory: Interrupted: this kernel's memory") for t in streams)
    printed = [m["content"]["text"] for m in replies[2] if m["msg_type"] == "stream"]
    assert printed == ["42\n"], replies[2]
    lines = server.log.read_text(errors="replace").splitlines()
    assert any(f"Kernel {kid}: interrupted: " in line for line in lines)
    assert not any(" died: " in line for line in lines)


def test_a_headless_kernels_memory_interrupt_through_its_provisioner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The kernel spec's provisioner (jupyter execute, papermill, nbclient) under a stock
    # manager: memory_interrupt from the kernel spec's provisioner config.
    install_kernelspec(tmp_path, monkeypatch, first_beat=10.0)
    spec = tmp_path / "data" / "kernels" / "python3-heartbeat" / "kernel.json"
    data = json.loads(spec.read_text())
    data["metadata"]["kernel_provisioner"]["config"]["memory_interrupt"] = 0.7
    spec.write_text(json.dumps(data))

    async def scenario(group: Path) -> list[dict[str, Any]]:
        km = AsyncKernelManager(kernel_name="python3-heartbeat")
        await km.start_kernel(preexec_fn=joiner(group))
        client = km.client()
        try:
            client.start_channels()
            await client.wait_for_ready(timeout=scaled(120))
            replies = []
            for code in ("kept = 42", GROW, "kept"):
                reply = await client.execute(code, reply=True, timeout=scaled(120))
                replies.append(reply["content"])
            return replies
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    with memory_cgroup(256 << 20) as group, caplog.at_level(logging.WARNING):
        replies = asyncio.run(scenario(group))
        oom = cgroups.oom_kills(group)
    assert oom == 0, oom
    assert replies[0]["status"] == "ok"
    assert replies[1]["status"] == "error" and replies[1]["ename"] == "KeyboardInterrupt"
    assert replies[2]["status"] == "ok"  # the kernel lived on, `kept` with it (no NameError)
    said = [r.getMessage() for r in caplog.records]
    assert any(": interrupted: this kernel's memory cgroup uses" in m for m in said), said
    assert not any(" died: " in m for m in said), said
