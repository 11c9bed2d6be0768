"""Every death of a real ipykernel under a real ``jupyter server`` with our extension enabled,
explained where each kind of user looks: the running cell (the kernel websocket), the server
log, the event bus (``/api/events/subscribe``) and ``/metrics``. Each kernel dies by its own
hand (a cell): nothing here signals the server's child."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from heartbeat.jupyter import _kmsg
from heartbeat.jupyter.events import SCHEMA_ID
from tests.cgroups import joiner
from tests.conftest import scaled
from tests.test_death_causes import WRAPPED
from tests.test_deaths import a_memory_cgroup
from tests.test_jupyter_server import Server, execute_request, serve
from tests.test_metrics import metrics_of, scrape

# time_to_dead 1 s; first_beat 1 s: a kernel is up well after that (its websocket opens once it
# answers kernel_info), and the freezing cell waits past it anyway.
SETTINGS = ("--HeartbeatKernelManager.time_to_dead=1", "--HeartbeatKernelManager.first_beat=1")

# (cell, cause kind, the cell's notice, the server log line's ending)
DEATHS = [
    (
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "signal",
        "The kernel was killed by SIGKILL (9). Restarting it.",
        r"process \d+ died: it was killed by SIGKILL \(9\); restarting it",
    ),
    (
        "import ctypes; ctypes.string_at(0)",
        "signal",
        # The Python line it crashed on (the stack hook's faulthandler), the cell's last.
        "The kernel was killed by SIGSEGV (11) at ctypes/__init__.py:",
        r"process \d+ died: it was killed by SIGSEGV \(11\) at ctypes/__init__\.py:\d+ in "
        r"string_at <- cell:1 in <module>; restarting it",
    ),
    (
        "import os; os._exit(3)",
        "exited",
        "The kernel exited with code 3. Restarting it.",
        r"process \d+ died: it exited with code 3; restarting it",
    ),
    (
        "import os, signal, time; time.sleep(1.5); os.kill(os.getpid(), signal.SIGSTOP)",
        "stopped",
        "The kernel was frozen: its process was stopped (SIGSTOP, or a debugger) while its "
        "heart was silent for ",
        r"heart at tcp://\S+ is dead: no reply for [\d.]+ s \(time_to_dead 1 s\); it was "
        r"frozen: its process was stopped \(SIGSTOP, or a debugger\) while its heart was silent "
        r"for [\d.]+ s; killed its process \d+; restarting it",
    ),
]


def deaths_by_cause(values: dict[Any, float]) -> dict[str, int]:
    """The non-zero death counts of a scrape (tests/test_metrics.py's ``scrape``), by cause."""
    return {
        dict(labels)["cause"]: int(value)
        for (sample, labels), value in values.items()
        if sample == "heartbeat_kernel_deaths_total" and value
    }


async def connect(server: Server, path: str) -> WebSocketClientConnection:
    url = server.base.replace("http", "ws") + path
    headers = {"Authorization": f"token {server.token}"}
    return await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=scaled(30)))


async def close(conn: WebSocketClientConnection) -> None:
    conn.close()
    # The close handshake, so that the socket is closed before the loop ends.
    with contextlib.suppress(asyncio.TimeoutError):
        while await asyncio.wait_for(conn.read_message(), timeout=10) is not None:
            pass


async def run_until_restart(server: Server, kid: str, code: str) -> tuple[str, list[Any]]:
    """Run a cell that kills its kernel; the request's msg_id and every message the websocket
    carried up to the kernel's "restarting" status."""
    conn = await connect(server, f"/api/kernels/{kid}/channels")  # open: the kernel answers
    try:
        request = execute_request(code)
        await conn.write_message(request)
        seen: list[Any] = []
        while True:
            raw = await asyncio.wait_for(conn.read_message(), timeout=scaled(30))
            assert raw is not None, "websocket closed"
            msg = json.loads(raw)
            seen.append(msg)
            if msg.get("msg_type") == "status" and msg["content"]["execution_state"] in (
                "restarting",
                "dead",
            ):
                return json.loads(request)["header"]["msg_id"], seen
    finally:
        await close(conn)


def notices(seen: list[Any], msg_id: str) -> list[str]:
    """The error outputs the cell of ``msg_id`` was given, as JupyterLab shows them."""
    return [
        "\n".join(m["content"]["traceback"])
        for m in seen
        if m.get("msg_type") == "error" and m["parent_header"].get("msg_id") == msg_id
    ]


async def collect(events: WebSocketClientConnection, into: list[Any]) -> None:
    while (raw := await events.read_message()) is not None:
        into.append(json.loads(raw))


def test_each_death_is_explained_in_its_cell_the_server_log_and_the_event_bus(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, *SETTINGS, extension=True) as server:
        kid = server.api("POST", "/api/kernels")["id"]

        async def scenario() -> tuple[list[tuple[str, list[Any]]], list[Any]]:
            events = await connect(server, "/api/events/subscribe")
            received: list[Any] = []
            reader = asyncio.ensure_future(collect(events, received))
            try:
                runs = [await run_until_restart(server, kid, code) for code, *_ in DEATHS]
                # The last restart's new kernel answers (its websocket opens) before it is shut.
                await close(await connect(server, f"/api/kernels/{kid}/channels"))
                return runs, received
            finally:
                # The reader alone reads it: it sees the close handshake end (None).
                events.close()
                await asyncio.wait_for(reader, 10)

        runs, received = asyncio.run(scenario())
        metrics = scrape(metrics_of(server))["values"]
    lines = server.log.read_text(errors="replace").splitlines()
    everything = "\n".join(lines)
    # One step set it up: the extension says what it turned on.
    assert "kernel-heartbeat: kernels' hearts watched by heartbeat.jupyter.manager." in everything
    for (msg_id, seen), (_, _, notice, _) in zip(runs, DEATHS, strict=True):
        # The running cell was told why, once, before the restart dialog's status.
        told_all = notices(seen, msg_id)
        assert len(told_all) == 1, (notice, seen)
        [told] = told_all
        assert told.startswith(f"KernelDied: {notice}"), (told, seen)
        error_at = next(i for i, m in enumerate(seen) if m.get("msg_type") == "error")
        assert seen[-1]["content"]["execution_state"] == "restarting"
        assert error_at < len(seen) - 1
    # The server log: one line a death, in the server's format, naming kernel and cause.
    ours = [line for line in lines if f"Kernel {kid}: " in line]
    assert len(ours) == len(DEATHS), everything
    for line, (*_, ending) in zip(ours, DEATHS, strict=True):
        assert re.match(r"\[W \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ServerApp\] ", line), line
        assert re.search(rf"Kernel {kid}: {ending}$", line), line
    # The event bus: one event a death, with our schema, its cause as data.
    deaths = [e for e in received if e.get("schema_id") == SCHEMA_ID]
    assert [e["cause"] for e in deaths] == [kind for _, kind, *_ in DEATHS], received
    assert [e["signal_name"] for e in deaths[:2]] == ["SIGKILL", "SIGSEGV"]
    assert deaths[2]["exit_code"] == 3 and deaths[3]["silence"] >= 1.0
    assert all(e["kernel_id"] == kid and e["restarting"] for e in deaths), deaths
    for event, (_, _, notice, _) in zip(deaths, DEATHS, strict=True):
        assert event["msg"].startswith(notice), event
    # /metrics: counted by cause, with no kernel named.
    assert deaths_by_cause(metrics) == {"signal": 2, "exited": 1, "stopped": 1}, metrics


# The server and its kernels share the cgroup: the server needs about a third of this, an idle
# kernel less; the cell asks for twice it, and the kernel, the largest, is the one killed.
SERVER_OOM_LIMIT = 512 << 20


def test_an_out_of_memory_kill_is_explained_with_its_cgroups_limit(tmp_path: Path) -> None:
    with (
        a_memory_cgroup(SERVER_OOM_LIMIT) as group,
        serve(tmp_path, *SETTINGS, extension=True, preexec_fn=joiner(group)) as server,
    ):
        kid = server.api("POST", "/api/kernels")["id"]

        async def scenario() -> tuple[str, list[Any]]:
            found = await run_until_restart(server, kid, f"x = bytearray({2 * SERVER_OOM_LIMIT})")
            await close(await connect(server, f"/api/kernels/{kid}/channels"))
            return found

        msg_id, seen = asyncio.run(scenario())
        metrics = scrape(metrics_of(server))["values"]
        server.delete_kernel(kid)  # just after a restart
    assert deaths_by_cause(metrics) == {"oom": 1}, metrics
    # The server shares the kernel's cgroup: its count alone makes it only likely; the kernel
    # log, where the server may read it, names the kernel itself. Its peak is said if it was
    # read within a second of its death (its one allocation came after: a lower bound).
    evidence = (
        r", out of memory: the kernel log names it as the out-of-memory killer's victim"
        if kernel_log_readable()
        else r", likely out of memory: its memory cgroup recorded an out-of-memory kill just "
        r"before, but other processes share that cgroup"
    )
    used = r"(this kernel used at least [\d.]+ MiB at its peak; )?"
    said = (
        rf"was killed by SIGKILL \(9\){evidence}: {used}its cgroup's limit is 512.0 MiB, "
        r"shared with 1 other process"
    )
    [told] = notices(seen, msg_id)
    assert re.fullmatch(rf"KernelDied: The kernel {said}. Restarting it.", told), seen
    lines = server.log.read_text(errors="replace").splitlines()
    # One death line (a memory warning, if a reading caught the allocation, is another line).
    [line] = [line for line in lines if f"Kernel {kid}: " in line and " died: " in line]
    assert re.search(rf"died: it {said}; restarting it$", line), line


def kernel_log_readable() -> bool:
    """Whether the kernel log names out-of-memory victims to this process (and so to a server
    it starts, as the same user in the same pid namespace)."""
    return _kmsg.oom_log().mark() is not None


# (cell, cause kind, likely, the server log line's ending): a wrapped kernel kills itself, then
# stops itself, then moves itself into a limited cgroup (as a cgroup rules engine, matching its
# name, would move it and not its wrapper) and asks for more than the limit there.
WRAPPED_LIMIT = 256 << 20
WRAPPED_DEATHS = [
    (
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "signal",
        r"process \d+ died: it exited with code 137, likely killed by SIGKILL \(9\) behind a "
        r"wrapper \(128 \+ 9\); restarting it",
    ),
    (
        "import os, signal, time; time.sleep(1.5); os.kill(os.getpid(), signal.SIGSTOP)",
        "stopped",
        r"heart at tcp://\S+ is dead: no reply for [\d.]+ s \(time_to_dead 1 s\); it was likely "
        r"frozen: a process under its own \(the kernel behind a wrapper\) was stopped "
        r"\(SIGSTOP, or a debugger\) while its heart was silent for [\d.]+ s; killed its "
        r"process \d+; restarting it",
    ),
    (
        # Its move is read within SAMPLE_PERIOD (1 s): the cell waits five times that first.
        "import os, time; open({procs!r}, 'w').write(str(os.getpid())); time.sleep(5); "
        f"x = bytearray({2 * WRAPPED_LIMIT})",
        "oom",
        r"process \d+ died: it exited with code 137, (likely )?killed by SIGKILL \(9\) behind a "
        r"wrapper \(128 \+ 9\), ",
    ),
]


def test_a_wrapped_kernels_deaths_and_its_oom_kill_in_a_cgroup_it_moved_to_are_named(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "data" / "kernels" / "wrapped"
    spec.mkdir(parents=True)
    argv = ["bash", "-c", WRAPPED, "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "wrapped"}))
    with (
        a_memory_cgroup(WRAPPED_LIMIT) as group,
        serve(
            tmp_path,
            *SETTINGS,
            "--MappingKernelManager.default_kernel_name=wrapped",
            extension=True,
        ) as server,
    ):
        kid = server.api("POST", "/api/kernels")["id"]
        cells = [cell.format(procs=str(group / "cgroup.procs")) for cell, *_ in WRAPPED_DEATHS]

        async def scenario() -> list[Any]:
            events = await connect(server, "/api/events/subscribe")
            received: list[Any] = []
            reader = asyncio.ensure_future(collect(events, received))
            try:
                for cell in cells:
                    await run_until_restart(server, kid, cell)
                await close(await connect(server, f"/api/kernels/{kid}/channels"))
                return received
            finally:
                events.close()
                await asyncio.wait_for(reader, 10)

        received = asyncio.run(scenario())
        metrics = scrape(metrics_of(server))["values"]
        server.delete_kernel(kid)
    lines = server.log.read_text(errors="replace").splitlines()
    everything = "\n".join(lines)
    ours = [line for line in lines if f"Kernel {kid}: " in line]
    assert len(ours) == len(WRAPPED_DEATHS), everything
    for line, (_, _, ending) in zip(ours, WRAPPED_DEATHS, strict=True):
        assert re.search(rf"Kernel {kid}: {ending}", line), line
    readable = kernel_log_readable()
    oom_said = (
        r"out of memory: the kernel log names the process it wraps as the out-of-memory killer's "
        r"victim"
        if readable
        else r"likely out of memory: its memory cgroup recorded an out-of-memory kill"
    )
    # The limit, or (where its memory was read while it lived) how much it used against it.
    assert re.search(rf"{oom_said}( \(limit 256.0 MiB\)|: .*256.0 MiB.*); restarting it$", ours[2])
    deaths = [e for e in received if e.get("schema_id") == SCHEMA_ID]
    assert [e["cause"] for e in deaths] == [kind for _, kind, _ in WRAPPED_DEATHS], received
    assert [e["likely"] for e in deaths] == [True, True, not readable], deaths
    oom_evidence = "kernel-log" if readable else "cgroup"
    assert [e["evidence"] for e in deaths] == ["exit-code", "descendant", oom_evidence], deaths
    assert [e["exit_code"] for e in deaths] == [137, None, 137], deaths
    assert [e["signal"] for e in deaths] == [9, None, 9], deaths
    assert deaths[2]["memory_limit"] == WRAPPED_LIMIT, deaths
    assert deaths_by_cause(metrics) == {"signal": 1, "stopped": 1, "oom": 1}, metrics
