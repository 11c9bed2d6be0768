"""A real `jupyter server` with HeartbeatKernelManager: a frozen kernel is restarted, and the
restart is visible through the REST API and the kernel's websocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import free_port, scaled

CONFIG_LINE = (
    "--AsyncMappingKernelManager.kernel_manager_class=heartbeat.jupyter.HeartbeatKernelManager"
)
# The server extension off, whatever the environment's config says: installed is on.
NO_EXTENSION = "--ServerApp.jpserver_extensions=heartbeat.jupyter=False"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    token: str
    log: Path

    def delete_kernel(self, kid: str) -> None:
        """DELETE a kernel. Just after a restart, jupyter_client may still mark it undone
        (km.ready not done: MultiKernelManager's InvalidStateError, a 500, stock and ours): the
        DELETE is then asked again, for 60 s at most (an R kernel takes seconds to start). A
        server stopped meanwhile would leave the restarted kernel running: tests that kill a
        kernel end with this."""
        for attempt in range(600):
            try:
                self.api("DELETE", f"/api/kernels/{kid}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 500 or attempt == 599:
                    raise
                time.sleep(0.1)

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            data=b"{}" if method == "POST" else None,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None


@contextlib.contextmanager
def serve(
    tmp_path: Path,
    *args: str,
    extension: bool = False,
    preexec_fn: Callable[[], None] | None = None,
    app: str = "jupyter_server",
) -> Iterator[Server]:
    """A real ``jupyter server`` on a free port with these arguments, stopped after. With
    ``extension``, its config enables ours as installing it does (the same file, in its config
    dir); without, it is disabled (installed is on). ``app``: the module run (``jupyterlab``:
    JupyterLab on a server the same flags configure)."""
    port = free_port()
    token = secrets.token_hex(16)
    config = tmp_path / "config"
    if extension:
        (config / "jupyter_server_config.d").mkdir(parents=True)
        (config / "jupyter_server_config.d" / "heartbeat.jupyter.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"heartbeat.jupyter": True}}})
        )
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
    }
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            app,
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",  # CI runs as root
            f"--ServerApp.root_dir={tmp_path}",
            *(() if extension else (NO_EXTENSION,)),
            *args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec_fn,
    )
    srv = Server(proc, f"http://127.0.0.1:{port}", token, tmp_path / "server.log")
    try:
        end = time.monotonic() + scaled(60)
        while True:
            try:
                srv.api("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < end, "jupyter server did not come up"
                time.sleep(0.2)
        yield srv
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serve(
        tmp_path,
        CONFIG_LINE,
        "--HeartbeatKernelManager.time_to_dead=1",
        "--HeartbeatKernelManager.first_beat=10",
    ) as srv:
        yield srv


def kernel_pid(kernel_id: str) -> int | None:
    """The pid of the ipykernel whose command line names this kernel's connection file."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(f"kernel-{kernel_id}.json".encode() in part for part in cmdline):
            return int(entry.name)
    return None


def test_a_frozen_kernel_is_restarted_by_jupyter_server(server: Server) -> None:
    kernel = server.api("POST", "/api/kernels")
    kid = kernel["id"]
    end = time.monotonic() + 60
    while (old := kernel_pid(kid)) is None:
        assert time.monotonic() < end, "no kernel process"
        time.sleep(0.1)

    start = time.monotonic()

    async def scenario() -> tuple[list[str], float, float]:
        ws_url = server.base.replace("http", "ws") + f"/api/kernels/{kid}/channels"
        request = HTTPRequest(
            ws_url, headers={"Authorization": f"token {server.token}"}, connect_timeout=30
        )
        conn = await websocket_connect(request)
        states: list[str] = []
        try:
            # Wait for the kernel to be up (it reports idle), well past first_beat.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                kinfo = server.api("GET", f"/api/kernels/{kid}")
                if kinfo["execution_state"] == "idle":
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(max(0.0, 10.5 - (time.monotonic() - start)))
            os.kill(old, signal.SIGSTOP)
            frozen = time.monotonic()
            while "restarting" not in states:
                left = frozen + 60 - time.monotonic()
                assert left > 0, f"no restart; states seen: {states}"
                raw = await asyncio.wait_for(conn.read_message(), timeout=left)
                assert raw is not None, "websocket closed"
                msg = json.loads(raw)
                if msg.get("msg_type") == "status":
                    states.append(msg["content"]["execution_state"])
            return states, frozen, time.monotonic()
        finally:
            conn.close()
            # Wait for the close handshake, so the socket is closed before this loop ends.
            with contextlib.suppress(asyncio.TimeoutError):
                while await asyncio.wait_for(conn.read_message(), timeout=10) is not None:
                    pass

    states, frozen, restarted = asyncio.run(scenario())
    # Death within the bound, plus the restarter's prompt poll and its own latency.
    assert restarted - frozen <= 1.5 * 1.0 + 5.0
    end = time.monotonic() + 60
    while (new := kernel_pid(kid)) in (None, old):
        assert time.monotonic() < end, "no new kernel process"
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)
    # The REST API still lists the same kernel, now running in a new process, and idle again.
    end = time.monotonic() + 60
    while (info := server.api("GET", f"/api/kernels/{kid}"))["execution_state"] != "idle":
        assert time.monotonic() < end, f"kernel not back: {info}"
        time.sleep(0.2)
    assert info["id"] == kid and new != old
    assert "restarting" in states
    server.api("DELETE", f"/api/kernels/{kid}")

    # The server's own log: one line for the death, formatted as the server's lines are,
    # naming the kernel, the silence measured and what its process was doing.
    lines = server.log.read_text(errors="replace").splitlines()
    ours = [line for line in lines if "heart" in line.lower()]
    assert len(ours) == 1, "\n".join(lines)
    [death] = ours
    assert re.match(r"\[W \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ServerApp\] ", death), death
    assert f"Kernel {kid}: heart at tcp://127.0.0.1:" in death, death
    silence = float(death.split("no reply for ")[1].split(" s")[0])
    assert 1.0 <= silence <= 1.5 + 5.0, death
    assert "it was frozen: its process was stopped (SIGSTOP, or a debugger)" in death, death
    assert f"; killed its process {old}; restarting it" in death, death
    # jupyter_client's restarter says the rest, once, and keeps the ports of a kernel that beat.
    assert sum("restarting kernel (1/5), keep random ports" in line for line in lines) == 1


def execute_request(code: str) -> str:
    """An execute_request as the kernel websocket's JSON protocol carries it."""
    header = {
        "msg_id": secrets.token_hex(8),
        "username": "test",
        "session": secrets.token_hex(8),
        "msg_type": "execute_request",
        "version": "5.3",
    }
    content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
    return json.dumps(
        {
            "header": header,
            "parent_header": {},
            "metadata": {},
            "content": {**content, "user_expressions": {}, "stop_on_error": True},
            "channel": "shell",
            "buffers": [],
        }
    )


# Cells by which a kernel dies by its own hand: nothing here signals the server's child.
DEATHS = [
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL (9)"),
    ("import ctypes; ctypes.string_at(0)", "was killed by SIGSEGV (11)"),
    ("import os; os._exit(3)", "exited with code 3"),
]


def test_each_process_death_is_one_line_of_the_server_log_with_its_cause(server: Server) -> None:
    kid = server.api("POST", "/api/kernels")["id"]

    async def die(code: str | None) -> float:
        ws_url = server.base.replace("http", "ws") + f"/api/kernels/{kid}/channels"
        request = HTTPRequest(
            ws_url, headers={"Authorization": f"token {server.token}"}, connect_timeout=30
        )
        conn = await websocket_connect(request)
        try:
            # The websocket opens once the kernel answers (jupyter_server asks it for its
            # kernel_info first), so the cell reaches a running kernel.
            if code is None:
                return 0.0  # connected: the restarted kernel answers
            # Past two of its heart's pings (every 0.5 s at time_to_dead 1): a kernel that dies
            # before its heart first answered is left to the restarter's own poll, as stock
            # (tests/test_deaths.py pins that); this one dies running.
            await asyncio.sleep(1.0)
            await conn.write_message(execute_request(code))
            sent = time.monotonic()
            while True:
                left = sent + 30 - time.monotonic()
                assert left > 0, "no restart"
                raw = await asyncio.wait_for(conn.read_message(), timeout=left)
                assert raw is not None, "websocket closed"
                msg = json.loads(raw)
                state = msg.get("content", {}).get("execution_state")
                if msg.get("msg_type") == "status" and state == "restarting":
                    return time.monotonic() - sent
        finally:
            conn.close()
            with contextlib.suppress(asyncio.TimeoutError):
                while await asyncio.wait_for(conn.read_message(), timeout=10) is not None:
                    pass

    # Seen at once, not at the restarter's poll every 3 s (tests/test_deaths.py proves that by
    # killing just after a poll; here the phase is chance, so this bound is only a sanity check).
    # The time counts the cell's own round trip through the server too: 2 s holds on a loaded
    # 2-core machine (1.8 s was seen with four other suites running beside this one).
    took = [asyncio.run(die(code)) for code, _ in DEATHS]
    assert max(took) <= 2.0, took
    # A DELETE while jupyter_client's restart is under way fails in MultiKernelManager
    # (km.ready not done: InvalidStateError): first wait for the last restart to finish.
    asyncio.run(die(None))
    # The websocket opens once the new kernel answers, a little before jupyter_client marks
    # the restart done: a DELETE in between still gets that 500, so it is asked again.
    server.delete_kernel(kid)
    lines = server.log.read_text(errors="replace").splitlines()
    ours = [line for line in lines if f"Kernel {kid}: process " in line]
    assert len(ours) == len(DEATHS), "\n".join(lines)
    for line, (_, words) in zip(ours, DEATHS, strict=True):
        assert re.match(r"\[W \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ServerApp\] ", line), line
        assert re.search(
            rf"Kernel {kid}: process \d+ died: it {re.escape(words)}(?: at .+)?; restarting it$",
            line,
        ), line
    hearts = [line for line in lines if "heart at " in line]
    assert not hearts, "\n".join(lines)  # no second line, by the heart
