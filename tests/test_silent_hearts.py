"""No false death for any kernel (issue 23, items 2 to 4), under a real ``jupyter server`` with
the extension on: IRkernel (Debian's, its heart answered from R's main loop) through a long
cell and idle time; xeus-python (its heart a thread) through a long busy cell, still killed when
frozen; a kernel spec that wraps ipykernel in a shell that sleeps first; an external kernel
stopped for 3 s, then its connection file removed. Each kernel that dies here dies by its own
hand (a cell), or is the test's own child (the external kernel)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tornado.websocket import WebSocketClientConnection

from heartbeat.connection import hb_url
from heartbeat.jupyter._proc import PROBE_TIMEOUT
from heartbeat.probe import ping
from tests.conftest import SLOW, kernel_spec_or_skip, parent_of, wait_for
from tests.test_jupyter_server import Server, execute_request, serve
from tests.test_metrics import metrics_of, scrape
from tests.test_remote_deaths import SLACK, TTD, kernel_apart, server_of_external_kernels
from tests.test_server_deaths import close, connect, deaths_by_cause, notices

# The line that says what a kernel is, once its kernel_info_reply is read, is a debug line.
DEBUG = "--ServerApp.log_level=DEBUG"


def kernel_pid(kernel_id: str) -> int | None:
    """The pid of the kernel's process: of those whose command line names its connection file
    (a shell, then the ipykernel it runs), the one whose parent is none of them."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"kernel-{kernel_id}.json".encode() in cmdline:
                pids[int(entry.name)] = parent_of(int(entry.name))
    return next((pid for pid, parent in pids.items() if parent not in pids), None)


def start(server: Server, name: str) -> tuple[str, int]:
    """POST a kernel of spec ``name``; its id and the pid of its process."""
    request = urllib.request.Request(
        f"{server.base}/api/kernels",
        method="POST",
        headers={"Authorization": f"token {server.token}"},
        data=json.dumps({"name": name}).encode(),
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        kid = str(json.loads(response.read())["id"])
    assert wait_for(lambda: kernel_pid(kid) is not None, 60), "no kernel process"
    pid = kernel_pid(kid)
    assert pid is not None
    return kid, pid


async def run(conn: WebSocketClientConnection, code: str, timeout: float = 120) -> list[Any]:
    """Run a cell on the kernel's websocket; every message up to its reply and its idle."""
    request = execute_request(code)
    msg_id = json.loads(request)["header"]["msg_id"]
    await conn.write_message(request)
    seen: list[Any] = []
    replied = idle = False
    end = time.monotonic() + timeout
    while not (replied and idle):
        raw = await asyncio.wait_for(conn.read_message(), timeout=end - time.monotonic())
        assert raw is not None, f"websocket closed; seen {seen}"
        msg = json.loads(raw)
        seen.append(msg)
        if (msg.get("parent_header") or {}).get("msg_id") != msg_id:
            continue
        replied = replied or msg["msg_type"] == "execute_reply"
        idle = idle or (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
    return seen


async def until_status(conn: WebSocketClientConnection, state: str, timeout: float) -> list[Any]:
    seen: list[Any] = []
    end = time.monotonic() + timeout
    while True:
        raw = await asyncio.wait_for(conn.read_message(), timeout=end - time.monotonic())
        assert raw is not None, f"websocket closed; seen {seen}"
        msg = json.loads(raw)
        seen.append(msg)
        if msg.get("msg_type") == "status" and msg["content"]["execution_state"] == state:
            return seen


def reply_of(seen: list[Any]) -> dict[str, Any]:
    [reply] = [m for m in seen if m["msg_type"] == "execute_reply"]
    return dict(reply["content"])


def ours(server: Server, kid: str) -> list[str]:
    """The server log's lines about this kernel written by this library."""
    lines = server.log.read_text(errors="replace").splitlines()
    return [line for line in lines if f"Kernel {kid}: " in line]


def deaths_in(lines: list[str]) -> list[str]:
    return [line for line in lines if " is dead" in line or " died: " in line]


def restarts_in(server: Server) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if "restarting kernel" in line]


# -- IRkernel: its heart is answered from R's main loop ------------------------------------------

# The defaults (the shared pool, which reaches IRkernel's REP heart), and a socket of the
# kernel's own.
SETTINGS = {"defaults": (), "own-socket": ("--HeartbeatKernelManager.shared_pool=False",)}


@pytest.mark.slow  # 30 to 60 s: a 10 s cell, 10 s idle, a restart
# Its own socket (shared_pool=False) in the full form only (HEARTBEAT_SLOW=1): a minute more,
# and the REP heart's own DEALER is the lone monitor's, tested on its own in test_rep_hearts.
@pytest.mark.parametrize(
    "settings",
    [
        name
        if name == "defaults"
        else pytest.param(
            name, marks=pytest.mark.skipif(not SLOW, reason="the full form only (HEARTBEAT_SLOW=1)")
        )
        for name in SETTINGS
    ],
)
def test_an_irkernel_cell_and_idle_time_are_no_death_and_its_kill_is_named_at_once(
    tmp_path: Path, settings: str
) -> None:
    kernel_spec_or_skip("ir")
    with serve(tmp_path, *SETTINGS[settings], DEBUG, extension=True) as server:
        kid, pid = start(server, "ir")

        request = execute_request("tools::pskill(Sys.getpid(), tools::SIGKILL)")

        async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
            conn = await connect(server, f"/api/kernels/{kid}/channels")
            try:
                # What it is, learned from its kernel_info_reply on its shell (IRkernel answers
                # none on control) once its heart has answered: before, the silence is no death
                # either, only said in other words.
                learned = "implementation 'IRkernel'"
                assert wait_for(lambda: learned in "\n".join(ours(server, kid)), 60), ours(
                    server, kid
                )
                # Silent for 10 s, its process running: 4.5 s was its death before.
                long = await run(conn, "Sys.sleep(10); cat('slept')")
                await asyncio.sleep(10)  # idle: the subject of the test, not a wait for it
                after = await run(conn, "cat(Sys.getpid())")
                await conn.write_message(request)
                killed = await until_status(conn, "restarting", 30)
                return long, after, killed
            finally:
                await close(conn)

        long, after, killed = asyncio.run(scenario())
        lines = ours(server, kid)
        server.delete_kernel(kid)  # after its restart: a server stopped during one leaks it
    everything = "\n".join(lines)
    assert reply_of(long)["status"] == "ok", long
    assert any(m["msg_type"] == "stream" and m["content"]["text"] == "slept" for m in long)
    # The same process throughout: nothing killed or restarted it.
    [said] = [m["content"]["text"] for m in after if m["msg_type"] == "stream"]
    assert int(said) == pid, (said, pid)
    # Its silence was seen, said once in words that fit R, and its end too.
    assert "implementation 'IRkernel', language 'R'" in everything, everything
    [silent] = [line for line in lines if "heart silent for" in line]
    assert f"its process {pid} runs: not a death, watching on: IRkernel answers its heart" in (
        silent
    ), silent
    assert "below Python" not in everything
    assert any("heart answers again after" in line for line in lines), everything
    # One death: the kill, named (signal) at once by the process's exit, in the cell too.
    [death] = deaths_in(lines)
    assert re.search(
        rf"process {pid} died: it was killed by SIGKILL \(9\); restarting it$", death
    ), death
    [notice] = notices(killed, json.loads(request)["header"]["msg_id"])
    assert notice.startswith("KernelDied: The kernel was killed by SIGKILL (9). Restarting it.")


# -- xeus-python: its heart is a thread of xeus' ----------------------------------------------

BUSY = "import time\nend = time.monotonic() + 10\nwhile time.monotonic() < end:\n    pass\n"


@pytest.mark.slow  # about 50 s: a 10 s cell, a freeze, a restart
def test_a_busy_xeus_python_cell_is_no_death_and_a_frozen_one_still_is(tmp_path: Path) -> None:
    kernel_spec_or_skip("xpython")
    with serve(tmp_path, DEBUG, extension=True) as server:
        kid, pid = start(server, "xpython")

        async def scenario() -> tuple[list[Any], list[Any], float]:
            conn = await connect(server, f"/api/kernels/{kid}/channels")
            try:
                long = await run(conn, BUSY + "print('busy done')")
                # Known to be xeus (threaded) by now: the kind line is written after its reply.
                assert wait_for(
                    lambda: "implementation 'xeus-python'" in "\n".join(ours(server, kid)), 30
                ), ours(server, kid)
                frozen = time.monotonic()
                request = execute_request("import os, signal; os.kill(os.getpid(), signal.SIGSTOP)")
                await conn.write_message(request)
                stopped = await until_status(conn, "restarting", 60)
                return long, stopped, time.monotonic() - frozen
            finally:
                await close(conn)

        long, stopped, took = asyncio.run(scenario())
        lines = ours(server, kid)
        server.delete_kernel(kid)  # after its restart: a server stopped during one leaks it
    everything = "\n".join(lines)
    assert reply_of(long)["status"] == "ok", long
    assert "its heart answers while it is busy, so: a silent heart is its death" in everything
    assert not [line for line in lines if "heart silent for" in line], everything
    [death] = deaths_in(lines)  # the freeze alone, at time_to_dead (3 s) plus its interval
    assert re.search(
        r"is dead: no reply for [\d.]+ s \(time_to_dead 3 s\); it was frozen: its process was "
        rf"stopped \(SIGSTOP, or a debugger\) while its heart was silent for [\d.]+ s; killed its "
        rf"process {pid}; restarting it$",
        death,
    ), death
    assert took < 3.0 + 1.5 + 2 * SLACK, took
    assert any(m["msg_type"] == "error" for m in stopped), stopped


# -- a kernel spec that wraps ipykernel in a shell that sleeps first -------------------------------

SLOW_START = 10.0  # past first_beat + time_to_dead (5 + 3 s), the defaults


def test_a_kernel_slower_to_start_than_first_beat_and_time_to_dead_comes_up(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "data" / "kernels" / "slow-python"
    spec.mkdir(parents=True)
    # No exec: the shell stays the kernel's process, as conda run or module load leave it (the
    # command after it keeps bash from exec'ing the last command of its -c string itself).
    kernel = f"{sys.executable} -m ipykernel_launcher -f {{connection_file}}"
    line = f"sleep {SLOW_START:g}; {kernel}; exit $?"
    kernel = {"argv": ["bash", "-c", line], "display_name": "slow", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    with serve(tmp_path, extension=True) as server:
        started = time.monotonic()
        kid, pid = start(server, "slow-python")

        async def scenario() -> list[Any]:
            # The websocket opens once the kernel answers kernel_info (jupyter_server waits up
            # to its kernel_info_timeout, 60 s).
            conn = await connect(server, f"/api/kernels/{kid}/channels")
            try:
                return await run(conn, "import os; print(os.getppid())")
            finally:
                await close(conn)

        seen = asyncio.run(scenario())
        up = time.monotonic() - started

        def answered() -> bool:
            said = ours(server, kid)
            return any(
                re.search(r"heart answered, [\d.]+ s after the kernel started", x) for x in said
            )

        # Its monitor hears it at its next ping (at most an interval after the kernel binds).
        assert wait_for(answered, 30), ours(server, kid)
        lines = ours(server, kid)
        restarts = restarts_in(server)
    everything = "\n".join(lines)
    assert up >= SLOW_START, up
    [said] = [m["content"]["text"] for m in seen if m["msg_type"] == "stream"]
    assert int(said) == pid, (said, pid)  # the first shell's kernel: never killed nor restarted
    assert deaths_in(lines) == [] and restarts == [], everything
    [waiting] = [line for line in lines if "has not answered" in line]
    assert re.search(
        rf"heart has not answered in [\d.]+ s since the kernel started; its process {pid} "
        r"runs: waiting for it to come up \(a slow start is no death\)$",
        waiting,
    ), waiting


# -- an external kernel: stalled once, then its connection file removed -----------------------


def test_an_external_kernel_stopped_for_3_s_recovers_and_is_forgotten_with_its_file(
    tmp_path: Path,
) -> None:
    external = tmp_path / "external"
    external.mkdir()
    with kernel_apart(external) as proc:
        info = json.loads((external / "kernel-apart.json").read_text())
        assert wait_for(lambda: ping(hb_url(info, "").url, 1.0) is not None, 60), "no heart"
        with server_of_external_kernels(tmp_path, external, DEBUG) as server:
            [kernel] = server.api("GET", "/api/kernels")  # it lists, and so watches, the file
            kid = kernel["id"]
            known = "implementation 'ipython'"
            assert wait_for(lambda: known in "\n".join(ours(server, kid)), 60), ours(server, kid)

            async def websocket_opens() -> None:
                await close(await connect(server, f"/api/kernels/{kid}/channels"))

            asyncio.run(websocket_opens())
            os.kill(proc.pid, signal.SIGSTOP)  # the test's own child: a debugger, a blip
            stopped = time.monotonic()
            assert wait_for(lambda: deaths_in(ours(server, kid)), 3 * TTD + PROBE_TIMEOUT + SLACK)
            time.sleep(max(0.0, stopped + 3.0 - time.monotonic()))  # the stall: 3 s
            os.kill(proc.pid, signal.SIGCONT)
            assert wait_for(lambda: "recovered" in "\n".join(ours(server, kid)), 30), ours(
                server, kid
            )
            asyncio.run(websocket_opens())  # alive again: a new websocket connects
            counted = deaths_by_cause(scrape(metrics_of(server))["values"])
            # Its connection file removed: forgotten, no longer watched, nothing more said.
            (external / "kernel-apart.json").unlink()
            assert server.api("GET", "/api/kernels") == []
            gone = "connection file gone: no longer watched"
            assert wait_for(lambda: gone in "\n".join(ours(server, kid)), 30), ours(server, kid)
            proc.kill()
            proc.wait(30)
            # What a death would take to be said (first_beat, time_to_dead, the probe), twice.
            time.sleep(2 * (1.0 + TTD + PROBE_TIMEOUT))
            lines = ours(server, kid)
            counted_after = deaths_by_cause(scrape(metrics_of(server))["values"])
    everything = "\n".join(lines)
    # One death, one line, one count, though silent over several of the monitor's runs.
    [death] = deaths_in(lines)
    assert "its heart was silent for" in death and "though its port accepts connections" in death
    assert death.endswith("not restarting it (it was not started by this manager)"), death
    assert counted == counted_after == {"remote-silent": 1}, (counted, counted_after)
    [recovered] = [line for line in lines if "recovered" in line]
    assert re.search(
        r"heart answers again after [\d.]+ s of silence: the kernel recovered", recovered
    )
    assert everything.index(death) < everything.index(recovered) < everything.index(gone)
