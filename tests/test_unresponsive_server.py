"""A real ipykernel that stops answering under a real ``jupyter server`` with our extension: the
cell it is stuck in is told, with the stacks; a cell sent meanwhile is told at once instead of
waiting in silence; after an interrupt the kernel answers and the queued cell runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection

from tests.test_jupyter_server import execute_request, serve
from tests.test_server_deaths import close, connect
from tests.test_unresponsive import PAUSE_MAIN

SETTINGS = ("--HeartbeatKernelManager.unresponsive_after=3",)


async def read_until(
    conn: WebSocketClientConnection, seen: list[Any], done: Any, timeout: float = 60
) -> dict[str, Any]:
    """Read the websocket's messages into ``seen`` until one for which ``done(msg)`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        raw = await asyncio.wait_for(conn.read_message(), timeout=max(0.1, end - loop.time()))
        assert raw is not None, "websocket closed"
        msg = json.loads(raw)
        seen.append(msg)
        if done(msg):
            return dict(msg)


def told(msg: dict[str, Any], msg_id: str) -> bool:
    return (
        msg.get("msg_type") == "stream"
        and msg["parent_header"].get("msg_id") == msg_id
        and msg["content"]["text"].startswith("KernelUnresponsive: ")
    )


def test_the_stuck_cell_and_one_queued_behind_it_are_told_and_it_answers_after_an_interrupt(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, *SETTINGS, extension=True) as server:
        kid = server.api("POST", "/api/kernels")["id"]

        async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[Any]]:
            conn = await connect(server, f"/api/kernels/{kid}/channels")
            seen: list[Any] = []
            try:
                # Its KeyboardInterrupt must not abort the cell queued behind it (ipykernel's
                # stop_on_error), which is to run once the kernel answers.
                request = json.loads(execute_request("x = 1\n" + PAUSE_MAIN))
                request["content"]["stop_on_error"] = False
                stuck, stuck_id = json.dumps(request), request["header"]["msg_id"]
                await conn.write_message(stuck)
                first = await read_until(conn, seen, lambda m: told(m, stuck_id))
                queued = execute_request("1 + 1")
                queued_id = json.loads(queued)["header"]["msg_id"]
                await conn.write_message(queued)
                # At once: the kernel is known not to answer (well within its bound).
                second = await read_until(conn, seen, lambda m: told(m, queued_id), timeout=2)
                await asyncio.get_running_loop().run_in_executor(
                    None, server.api, "POST", f"/api/kernels/{kid}/interrupt"
                )
                reply = await read_until(
                    conn,
                    seen,
                    lambda m: (
                        m.get("msg_type") == "execute_reply"
                        and m["parent_header"].get("msg_id") == queued_id
                    ),
                )
                return first, second, reply, seen
            finally:
                await close(conn)

        first, second, reply, seen = asyncio.run(scenario())
        log = server.log.read_text(errors="replace")
    text = first["content"]["text"]
    assert text.startswith("KernelUnresponsive: the kernel has not answered for "), text
    assert "hung" in text and "main thread at cell:2 in <module>" in text, text
    assert "\n\nmain thread (most recent call first):\n" in text, text
    assert first["content"]["name"] == "stderr"
    assert second["content"]["text"].startswith(
        "KernelUnresponsive: this cell waits behind a kernel that has not answered for "
    )
    # Each told once; the queued cell then ran.
    assert (
        sum(
            m.get("msg_type") == "stream" and "KernelUnresponsive" in m["content"]["text"]
            for m in seen
        )
        == 2
    ), seen
    assert reply["content"]["status"] == "ok", reply
    # The server's log: the warning, then the kernel answering again.
    assert f"Kernel {kid} has not answered on its control channel" in log, log
    assert f"Kernel {kid} answers again" in log, log
