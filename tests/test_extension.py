"""The server extension's rules (what it turns on, what it leaves as the user configured it) on a
real, uninitialised ServerApp, and the running-cell bookkeeping of the kernel websocket, step by
step (pure: headers in, the running request out)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.serverapp import ServerApp
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from traitlets.config import Config

from heartbeat._cause import Cause, Death
from heartbeat.jupyter import _jupyter_server_extension_points
from heartbeat.jupyter.extension import _link_jupyter_server_extension
from heartbeat.jupyter.websocket import DeathNoticeConnection, RunningCell, death_error


def header(msg_id: str, msg_type: str = "execute_request") -> dict[str, Any]:
    return {"msg_id": msg_id, "msg_type": msg_type}


def linked(config: dict[str, Any]) -> ServerApp:
    # The gateway's settings are a singleton, made by the first server of the process: here each
    # test's server is the first.
    GatewayClient.clear_instance()
    app = ServerApp(config=Config(config))
    try:
        _link_jupyter_server_extension(app)
    finally:
        GatewayClient.clear_instance()
    return app


def test_the_extension_point_names_the_module_that_links_it() -> None:
    assert _jupyter_server_extension_points() == [{"module": "heartbeat.jupyter.extension"}]


def test_enabled_alone_it_turns_on_our_kernel_manager_and_the_death_notice() -> None:
    app = linked({})
    section = app.config.AsyncMappingKernelManager
    assert section.kernel_manager_class == "heartbeat.jupyter.manager.HeartbeatKernelManager"
    assert app.kernel_websocket_connection_class is DeathNoticeConnection


def test_what_the_user_configured_is_kept() -> None:
    mine = "jupyter_server.services.kernels.kernelmanager.ServerKernelManager"
    app = linked(
        {
            "MappingKernelManager": {"kernel_manager_class": mine},
            "ServerApp": {"kernel_websocket_connection_class": ZMQChannelsWebsocketConnection},
        }
    )
    assert app.config.MappingKernelManager.kernel_manager_class == mine
    assert "kernel_manager_class" not in app.config.AsyncMappingKernelManager
    assert app.kernel_websocket_connection_class is ZMQChannelsWebsocketConnection


def test_a_gateways_kernels_are_left_alone() -> None:
    app = linked({"GatewayClient": {"url": "http://127.0.0.1:9"}})
    assert "kernel_manager_class" not in app.config.AsyncMappingKernelManager
    # Not set: its default (the gateway's connection) is the server's to make.
    assert not app.trait_has_value("kernel_websocket_connection_class")


def test_the_running_request_is_the_one_iopub_says_the_kernel_is_busy_with() -> None:
    cell = RunningCell()
    a, b = header("a"), header("b")
    cell.requested(a)
    cell.requested(b)
    cell.status("busy", a)
    assert cell.running is a
    cell.status("idle", a)  # done; b is next but its busy status is not seen yet
    assert cell.running is b
    cell.status("busy", b)
    cell.replied(header("r", "execute_reply"), b)
    assert cell.running is b  # still busy: its idle status is what ends it
    cell.status("idle", b)
    assert cell.running is None


def test_without_its_busy_status_the_oldest_request_without_a_reply_is_running() -> None:
    cell = RunningCell()
    a, b = header("a"), header("b")
    cell.requested(a)
    cell.requested(b)
    cell.requested(header("k", "kernel_info_request"))  # not a cell
    assert cell.running is a
    cell.replied(header("r", "execute_reply"), a)
    assert cell.running is b
    cell.clear()
    assert cell.running is None


def test_another_clients_request_counts_only_by_its_busy_status() -> None:
    cell = RunningCell()
    theirs = header("theirs")
    cell.status("busy", theirs)  # IOPub is every client's
    assert cell.running is theirs
    cell.status("busy", header("k", "kernel_info_request"))  # not a cell: no change
    assert cell.running is theirs


def test_requests_without_replies_are_bounded() -> None:
    cell = RunningCell()
    for n in range(5000):
        cell.requested(header(str(n)))
    assert len(cell._pending) <= 1000
    assert cell.running is not None and int(cell.running["msg_id"]) >= 4000


def test_the_cells_error_output_is_the_deaths_notice() -> None:
    death = Death("k", Cause("oom", signal=9, memory_limit=2 << 30), time=0.0, restarting=True)
    content = death_error(death)
    notice = (
        "The kernel was killed by SIGKILL (9): its memory cgroup recorded an out-of-memory "
        "kill (limit 2.0 GiB). Restarting it."
    )
    assert content == {
        "ename": "KernelDied",
        "evalue": notice,
        "traceback": [f"KernelDied: {notice}"],
    }


DISABLE = "jupyter server extension disable heartbeat.jupyter"
ENABLE = "jupyter server extension enable heartbeat.jupyter"
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_installed_is_on_and_the_disable_command_turns_it_off_where_jupyter_server_looks(
    tmp_path: Path,
) -> None:
    # An environment of its own (seeing this one's packages), with this project installed in
    # it as a user would: the install puts the extension's entry, enabled, in its etc/jupyter,
    # and the real commands then write there, not in the environment the suite runs in.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    entry = venv / "etc/jupyter/jupyter_server_config.d/heartbeat.jupyter.json"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}

    def jupyter(*args: str) -> str:
        # `jupyter server ...` is jupyter_server's app: run by this environment's python.
        argv = [python, "-m", "jupyter_server", *args]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    def listed() -> str:
        said = jupyter("extension", "list")
        # "heartbeat.jupyter enabled", then its validation's lines
        return next(line for line in said.splitlines() if "heartbeat.jupyter" in line)

    def entered() -> object:
        return json.loads(entry.read_text())["ServerApp"]["jpserver_extensions"]

    assert entered() == {"heartbeat.jupyter": True}
    assert re.search(r"heartbeat\.jupyter\s+\S*enabled", listed())
    # Loaded by a server of that environment: one it refuses the settings of does not start.
    argv = [python, "-m", "jupyter_server", "--HeartbeatKernelManager.interval=2"]
    argv += ["--ServerApp.port=0", "--ServerApp.allow_root=True", "--ServerApp.open_browser=False"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "kernel-heartbeat: the settings of" in done.stderr, done
    said = jupyter(*DISABLE.split()[2:])
    assert "heartbeat.jupyter" in said and "disabled" in said, said
    assert entered() == {"heartbeat.jupyter": False}
    assert re.search(r"heartbeat\.jupyter\s+\S*disabled", listed())
    said = jupyter(*ENABLE.split()[2:])
    assert "heartbeat.jupyter" in said and "OK" in said, said
    assert entered() == {"heartbeat.jupyter": True}
    assert re.search(r"heartbeat\.jupyter\s+\S*enabled", listed())
