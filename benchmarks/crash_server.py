"""``python -m benchmarks.crash --server``: crash to new kernel under two real ``jupyter server``
processes in one run, one stock and one with HeartbeatKernelManager (its kernel's exit watched
through a pidfd), each with a kernel opened through its websocket as JupyterLab opens it.

Each crash is a cell that kills its own kernel (SIGKILL, SIGSEGV, ``os._exit(3)``), at a random
moment of the stock restarter's 3 s polling period, the two servers' trials taken in turn. Each
is timed from the kernel's death (the clock its cell writes just before it dies) to the
websocket's ``restarting`` status and to the new kernel answering a ``kernel_info_request``
sent on that websocket. Prints median, p90 and max by cause and server; ``--json PATH`` also
writes every trial and the summary. Each kernel is in use (up past the restarter's
stable_start_time, so that its restarts keep its ports) before it first dies, and is replaced,
untimed, after restart_limit deaths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jupyter_server
from jupyter_client.restarter import KernelRestarter
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

ROOT = Path(__file__).resolve().parent.parent
OURS = "heartbeat.jupyter.HeartbeatKernelManager"
# Our server extension off in both, whatever the config says (installed is on): the stock server
# is stock, ours runs the kernel manager alone.
NO_EXTENSION = "--ServerApp.jpserver_extensions=heartbeat.jupyter=False"
SERVERS = {
    "stock": [NO_EXTENSION],
    "heartbeat": [NO_EXTENSION, f"--AsyncMappingKernelManager.kernel_manager_class={OURS}"],
}
# Each cell dies by its own hand (nothing here signals a server's child). Its last act before
# dying writes CLOCK_MONOTONIC, one clock for every process on Linux, so the kernel's death is
# timed where it happens, not from the send (which would add the cell's queueing and imports).
CAUSES = {
    "SIGKILL": ("import os, signal", "os.kill(os.getpid(), signal.SIGKILL)"),
    "SIGSEGV": ("import ctypes", "ctypes.string_at(0)"),
    "exit 3": ("import os", "os._exit(3)"),
}
# Deaths in a row a kernel survives: the restarter gives up after restart_limit restarts that
# come within stable_start_time (10 s) of each other, so a kernel is replaced after as many.
RESTARTS = int(KernelRestarter.restart_limit.default_value)
# A kernel that dies before it has been up stable_start_time is restarted on new ports (as one
# that fails while it starts: random_ports_until_alive); one that dies in use keeps its ports.
# These are kernels in use: each first runs until a restarter poll sees it up that long, which
# counts from the first poll (the restarter's _last_dead defaults to when it is first read).
SETTLE = 0.5 + (
    KernelRestarter.stable_start_time.default_value + 2 * KernelRestarter.time_to_dead.default_value
)


def clock() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base: str
    token: str
    log: Path

    async def api(self, method: str, path: str) -> Any:
        request = HTTPRequest(
            f"{self.base}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            body="{}" if method == "POST" else None,
            request_timeout=60,
        )
        body = (await AsyncHTTPClient().fetch(request)).body
        return json.loads(body) if body else None


def launch(name: str, flags: list[str], tmp: Path) -> Server:
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        # This checkout's heartbeat, whatever is installed; and no config but the flags: the
        # installation's own config dirs may enable extensions (ours among them) for everyone.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "JUPYTER_NO_CONFIG": "1",
        **{f"JUPYTER_{d.upper()}_DIR": str(tmp / name / d) for d in ("runtime", "config", "data")},
    }
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                "--ServerApp.open_browser=False",
                "--ServerApp.allow_root=True",  # CI runs as root
                f"--ServerApp.root_dir={tmp}",
                *flags,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(name, proc, f"http://127.0.0.1:{port}", token, log)


async def serving(server: Server) -> None:
    end = time.monotonic() + 60
    while True:
        try:
            await server.api("GET", "/api/status")
            break
        except (OSError, HTTPClientError) as exc:
            # Refused, or closed unanswered (599) while the server starts; any answer is one.
            if isinstance(exc, HTTPClientError) and exc.code != 599:
                raise
            if server.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{server.name} server did not come up") from None
            await asyncio.sleep(0.2)
    # The data dirs are the installation's too: a python3 spec with a provisioner of its own
    # (ours, say) would make the stock server's kernels not stock.
    spec = (await server.api("GET", "/api/kernelspecs"))["kernelspecs"]["python3"]["spec"]
    if spec.get("metadata", {}).get("kernel_provisioner"):
        raise RuntimeError(f"the python3 kernel spec names a provisioner: {spec['metadata']}")


def message(msg_type: str, content: dict[str, Any]) -> tuple[str, str]:
    """A shell message as the websocket's JSON protocol carries it, and its msg_id."""
    msg_id = secrets.token_hex(8)
    header = {"msg_id": msg_id, "username": "bench", "session": "bench"}
    header |= {"msg_type": msg_type, "version": "5.3"}
    body = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
    return json.dumps({**body, "channel": "shell", "buffers": []}), msg_id


class Kernel:
    """One kernel of a server, and its websocket."""

    def __init__(self, server: Server, kernel_id: str, conn: WebSocketClientConnection) -> None:
        self.server, self.id, self.conn = server, kernel_id, conn

    @classmethod
    async def start(cls, server: Server) -> Kernel:
        kernel_id = (await server.api("POST", "/api/kernels"))["id"]
        url = server.base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        headers = {"Authorization": f"token {server.token}"}
        conn = await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=60))
        kernel = cls(server, kernel_id, conn)
        await kernel.answers()
        return kernel

    async def read(self, until: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.read_message(), max(0.0, until - time.monotonic()))
        if raw is None:
            raise RuntimeError(f"{self.server.name}: the kernel's websocket closed")
        return dict(json.loads(raw))

    async def answers(self) -> float:
        """When the kernel answered a kernel_info_request, sent now and every second after:
        one sent while the kernel is down waits in zmq's queue for the new kernel (in runs here
        the first was always the one answered), but one that was lost must not hang a trial."""
        asked: set[str] = set()
        end = time.monotonic() + 60
        while True:
            request, msg_id = message("kernel_info_request", {})
            asked.add(msg_id)
            await self.conn.write_message(request)
            with contextlib.suppress(asyncio.TimeoutError):
                resend = time.monotonic() + 1.0
                while time.monotonic() < resend:
                    msg = await self.read(resend)
                    parent = msg.get("parent_header", {}).get("msg_id")
                    if msg.get("msg_type") == "kernel_info_reply" and parent in asked:
                        return clock()
            if time.monotonic() > end:
                raise RuntimeError(f"{self.server.name}: the kernel does not answer")

    async def crash(self, cause: str, stamp: Path) -> tuple[float, float]:
        """Seconds from the kernel's death to the "restarting" status, and to an answer."""
        setup, act = CAUSES[cause]
        clock_now = "time.clock_gettime(time.CLOCK_MONOTONIC)"
        code = f"{setup}, time\nopen({str(stamp)!r}, 'w').write(repr({clock_now}))\n{act}"
        content = {"code": code, "silent": False, "store_history": False}
        content |= {"allow_stdin": False, "user_expressions": {}, "stop_on_error": True}
        await self.conn.write_message(message("execute_request", content)[0])
        end = time.monotonic() + 60
        while True:
            msg = await self.read(end)
            if msg.get("msg_type") == "status":
                state = msg["content"]["execution_state"]
                if state == "restarting":
                    restarting = clock()
                    break
                if state == "dead":
                    raise RuntimeError(f"{self.server.name}: the kernel was not restarted")
        answered = await self.answers()
        died = float(stamp.read_text())  # written and closed before the kernel died
        return restarting - died, answered - died

    async def shut_down(self) -> None:
        self.conn.close()
        # Wait for the close handshake, so the socket is closed before the loop ends.
        with contextlib.suppress(asyncio.TimeoutError):
            while await asyncio.wait_for(self.conn.read_message(), timeout=10) is not None:
                pass
        for attempt in range(50):
            try:
                await self.server.api("DELETE", f"/api/kernels/{self.id}")
                return
            except HTTPClientError as exc:
                # The new kernel answers a little before jupyter_client marks its restart done;
                # a DELETE in between fails with a 500 (km.ready not done): ask again.
                if exc.code != 500 or attempt == 49:
                    raise
                await asyncio.sleep(0.1)


async def server_crashes(
    servers: dict[str, Server], crashes: int, rng: random.Random, tmp: Path
) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = []
    kernels: dict[str, Kernel] = {}
    try:
        await asyncio.gather(*(serving(s) for s in servers.values()))
        order = list(servers)
        for n, cause in enumerate(c for _ in range(crashes) for c in CAUSES):
            if n % RESTARTS == 0:  # untimed: new kernels, in use past SETTLE
                for kernel in kernels.values():
                    await kernel.shut_down()
                started = await asyncio.gather(*(Kernel.start(s) for s in servers.values()))
                kernels = dict(zip(servers, started, strict=True))
                await asyncio.sleep(SETTLE)
            # In turn, and each first every other time, so that the machine's load (shared,
            # here) falls on both alike.
            for name in order if n % 2 == 0 else order[::-1]:
                kernel = kernels[name]
                # At a random moment of the stock restarter's 3 s polling period.
                await asyncio.sleep(rng.uniform(0.0, 3.0))
                restarting, answers = await kernel.crash(cause, tmp / f"died-{n}-{name}")
                trials.append(
                    {"server": name, "cause": cause, "restarting": restarting, "answers": answers}
                )
        for kernel in kernels.values():
            await kernel.shut_down()
    finally:
        for server in servers.values():
            server.proc.send_signal(signal.SIGTERM)  # our own child, not yet reaped
            try:
                server.proc.wait(30)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
    return trials


SPREAD = ("median", "p90", "max")


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[math.ceil(0.9 * len(ordered)) - 1]  # nearest rank: a time that was measured
    return {"median": statistics.median(ordered), "p90": p90, "max": ordered[-1]}


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in SERVERS:
        summary[name] = {}
        for cause in [*CAUSES, "all"]:
            mine = [t for t in trials if t["server"] == name and cause in ("all", t["cause"])]
            summary[name][cause] = {m: spread([t[m] for t in mine]) for m in MEASURES}
    return summary


MEASURES = {"restarting": '"restarting"', "answers": "kernel answers"}


def print_server_table(crashes: int, summary: dict[str, Any]) -> None:
    each = f"{crashes} crash{'es' * (crashes > 1)} of each cause on each server, in turn"
    server = f"jupyter_server {jupyter_server.__version__}"
    print(f"Crash to new kernel, {server}: {each} (seconds from the kernel's death)")
    print(f"{'':<24} {'stock jupyter_server':<26} {'HeartbeatKernelManager':<26}")
    columns = f"{'median':>8} {'p90':>8} {'max':>8}"
    print(f"{'cause':<8} {'until':<15} {columns}  {columns}")
    for cause in [*CAUSES, "all"]:
        for measure, words in MEASURES.items():
            cells = [
                " ".join(f"{summary[name][cause][measure][k]:>8.3f}" for k in SPREAD)
                for name in SERVERS
            ]
            print(f"{cause:<8} {words:<15} {'  '.join(cells)}")


def main(crashes: int, seed: int, json_path: Path | None, logs: Path | None) -> int:
    with tempfile.TemporaryDirectory(prefix="crash-bench-") as tmp:
        servers = {name: launch(name, flags, Path(tmp)) for name, flags in SERVERS.items()}
        try:
            trials = asyncio.run(server_crashes(servers, crashes, random.Random(seed), Path(tmp)))
        except BaseException:
            for name, server in servers.items():
                text = server.log.read_text(errors="replace")[-4000:]
                print(f"-- the end of the {name} server's log:\n{text}", file=sys.stderr)
            raise
        finally:
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                for server in servers.values():
                    shutil.copy(server.log, logs)
        lines = {name: server.log.read_text(errors="replace") for name, server in servers.items()}
    # The death lines say which manager each server ran: ours writes one for each death, stock
    # none (so no config of the installation's slipped in). A kernel's ports are chosen free
    # and bound later by the kernel (again at a restart that keeps them): something else on the
    # machine may take one in between, and the kernel then dies (one death more) or lives
    # without its heart. That is counted, so that a run's odd times can be told from the
    # managers'.
    death = re.compile(r"Kernel \S+: process \d+ died: ")
    death_lines = {name: len(death.findall(text)) for name, text in lines.items()}
    clashes = {name: text.count("Address already in use") for name, text in lines.items()}
    # Which restarts kept their kernel's ports, as kernels in use do (see SETTLE).
    kept = {name: text.count("), keep random ports") for name, text in lines.items()}
    summary = summarize(trials)
    print_server_table(crashes, summary)
    print(f"death lines in the servers' logs: {death_lines}")
    print(f"restarts that kept the kernel's ports: {kept}")
    print(f"ports a kernel could not bind (Address already in use): {clashes}")
    if json_path:
        result = {
            "jupyter_server": jupyter_server.__version__,
            "crashes": crashes,
            "seed": seed,
            "measure": "seconds from the kernel's death (the clock its cell wrote just before "
            'killing it) to the websocket\'s "restarting" status (restarting) and to an answer '
            "to a kernel_info_request on the websocket (answers)",
            "death_lines": death_lines,
            "ports_kept": kept,
            "port_clashes": clashes,
            "trials": trials,
            "summary": summary,
        }
        json_path.write_text(json.dumps(result, indent=1))
    return 0
