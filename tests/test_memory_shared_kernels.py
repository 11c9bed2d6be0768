"""Two real ipykernels in one real memory cgroup (a pod's, a container's: they share its limit),
each under its HeartbeatKernelManager with ``memory_interrupt`` on: one grows, the other runs a
long computation that does not. Both are warned, with how much each uses of the shared total;
only the one that grows, the out-of-memory killer's choice, is interrupted; both live on."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from heartbeat.jupyter import HeartbeatKernelManager
from heartbeat.jupyter._cgroup_reading import readings
from tests.test_deaths import joiner
from tests.test_memory_server import GROW, memory_cgroup

# Two idle ipykernels use about a quarter of this; the one that grows is interrupted at 0.75.
LIMIT = 512 << 20

# Counts, without growing, until told to stop: a tick on its stdout every half second.
BUSY = """import os, time
n = 0
while not os.path.exists({flag!r}):
    n += 1
    if n % 50 == 0:
        print('tick', n, flush=True)
    time.sleep(0.01)
print('done', n)
"""


def stream(msgs: list[Any]) -> str:
    return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")


async def collect(client: Any, msg_id: str, into: list[Any]) -> None:
    """The IOPub messages of ``msg_id``'s cell, gathered while it runs."""
    while True:
        msg = await client.get_iopub_msg(timeout=None)
        if msg["parent_header"].get("msg_id") == msg_id:
            into.append(msg)


def test_only_the_growing_kernel_of_two_sharing_a_cgroup_is_interrupted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flag = tmp_path / "stop-counting"

    async def scenario(group: Path) -> dict[str, Any]:
        kms = {
            name: HeartbeatKernelManager(
                kernel_name="python3", memory_warning=0.6, memory_interrupt=0.75
            )
            for name in ("grows", "counts")
        }
        await asyncio.gather(*(km.start_kernel(preexec_fn=joiner(group)) for km in kms.values()))
        clients = {name: km.client() for name, km in kms.items()}
        busy: list[Any] = []
        collecting = None
        try:
            for client in clients.values():
                client.start_channels()
            await asyncio.gather(*(c.wait_for_ready(timeout=120) for c in clients.values()))
            [reading] = readings()  # one reading of the cgroup for both
            assert reading.reader.path == group and len(reading.members) == 2
            for name, client in clients.items():
                reply = await client.execute(f"kept = {name!r}", reply=True, timeout=60)
                assert reply["content"]["status"] == "ok"
            # The long computation runs (its first tick seen), then the other cell grows.
            counts = clients["counts"]
            msg_id = counts.execute(BUSY.format(flag=str(flag)))
            collecting = asyncio.ensure_future(collect(counts, msg_id, busy))
            end = time.monotonic() + 60
            while "tick" not in stream(busy):
                assert time.monotonic() < end, busy
                await asyncio.sleep(0.05)
            grown = await clients["grows"].execute(GROW, reply=True, timeout=120)
            # Counting on, well after the interrupt: two more ticks (a second).
            ticks = stream(busy).count("tick")
            end = time.monotonic() + 30
            while stream(busy).count("tick") < ticks + 2:
                errors = [m["content"]["ename"] for m in busy if m["msg_type"] == "error"]
                assert not errors, f"the counting cell was interrupted: {errors}"
                assert time.monotonic() < end, f"the counting cell stopped: {stream(busy)!r}"
                await asyncio.sleep(0.05)
            flag.touch()
            counted = await counts.get_shell_msg(timeout=60)
            assert counted["parent_header"]["msg_id"] == msg_id
            after = {}
            for name, client in clients.items():
                reply = await client.execute("print(kept)", reply=True, timeout=60)
                after[name] = reply["content"]["status"]
            alive = [await km.is_alive() for km in kms.values()]
            return {
                "grown": grown["content"],
                "counted": counted["content"],
                "after": after,
                "alive": alive,
                "ids": {name: km.kernel_id for name, km in kms.items()},
                "oom": (group / "memory.oom_control").read_text(),
            }
        finally:
            if collecting is not None:
                collecting.cancel()
            for client in clients.values():
                client.stop_channels()
            await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms.values()))
            assert readings() == []  # the last one stopped closed it

    with memory_cgroup(LIMIT) as group, caplog.at_level(logging.WARNING):
        found = asyncio.run(scenario(group))
    assert re.search(r"^oom_kill 0$", found["oom"], re.M), found["oom"]
    assert found["grown"]["status"] == "error", found["grown"]
    assert found["grown"]["ename"] == "KeyboardInterrupt", found["grown"]
    assert found["counted"]["status"] == "ok", found["counted"]  # never interrupted
    assert found["after"] == {"grows": "ok", "counts": "ok"} and found["alive"] == [True, True]
    said = [r.getMessage() for r in caplog.records]
    grows, counts = (found["ids"][name] for name in ("grows", "counts"))
    # Each warned, with how much it uses of the shared total; the one that grows interrupted.
    shared = r"memory cgroup, shared with 1 other kernel, uses [\d.]+ MiB of its 512.0 MiB limit"
    for kid in (grows, counts):
        [warned] = [m for m in said if m.startswith(f"Kernel {kid}: ") and "memory_warning" in m]
        assert re.search(rf"{shared}; this kernel uses [\d.]+ MiB of it;", warned), warned
    [interrupted] = [m for m in said if ": interrupted: " in m]
    assert interrupted.startswith(f"Kernel {grows}: interrupted: "), said
    assert re.search(
        rf"{shared} \(memory_interrupt\); this kernel uses [\d.]+ MiB of it, the most", interrupted
    )
