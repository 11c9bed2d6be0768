"""Real ipykernels under an address-space limit (RLIMIT_AS: 'ulimit -v' in the kernel spec's
wrapper, as a batch system's or a user's script sets it), each under its
HeartbeatKernelManager, a cell growing its address space: warned (the log, the manager's
listeners: the running cell's websocket) before the cell's MemoryError; with memory_interrupt,
its cell interrupted before it, the kernel living on with its variables."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from heartbeat import _address_space
from heartbeat.jupyter import HeartbeatKernelManager
from heartbeat.jupyter._kernel_memory import address_space, kernel_pids
from tests.conftest import SLOW
from tests.test_deaths import joiner
from tests.test_memory_server import memory_cgroup
from tests.test_memory_watch import until

# An idle ipykernel's address space is ~750 MiB (its threads' stacks and malloc arenas, mostly
# reserved, not used); 1.25 GiB leaves its cells ~500 MiB.
LIMIT = 1280 << 20

# Grows its address space (bytes(n) is calloc'd: reserved, not touched: little resident memory)
# by 160 MiB/s until it fails; gives it back before saying when (monotonic: this machine's).
GROW = """import time
x = []
try:
    while True:
        x.append(bytes(16 << 20))
        time.sleep(0.1)
except MemoryError:
    x.clear()
    print('failed at', time.monotonic())
    raise
"""


def test_the_kernels_process_nearest_its_own_limit_is_read_and_no_other_process(
    tmp_path: Path,
) -> None:
    # A kernel (its session): a shell with no limit, and a worker it forked with one of its own;
    # a bystander with a lower limit, ours but in no kernel's session, is not read.
    kernel = subprocess.Popen(
        ["sh", "-c", "(ulimit -v 400000; exec sleep 60) & exec sleep 61"], start_new_session=True
    )
    bystander = subprocess.Popen(["sh", "-c", "ulimit -v 300000; exec sleep 62"])
    try:
        until(lambda: len(kernel_pids(kernel)) == 2, "the worker was not forked")

        def asleep(pid: int) -> bool:  # exec'd and its libraries loaded: its size is final
            status = Path(f"/proc/{pid}/status").read_text()
            return Path(f"/proc/{pid}/comm").read_text() == "sleep\n" and "State:\tS" in status

        until(lambda: all(asleep(pid) for pid in kernel_pids(kernel)), "not asleep")
        [worker] = [pid for pid in kernel_pids(kernel) if pid != kernel.pid]
        size = _address_space.size(Path(f"/proc/{worker}/status").read_text())
        assert address_space(kernel_pids(kernel), kernel.pid) == (size, 400000 << 10)
        assert address_space([kernel.pid], kernel.pid) is None  # unlimited: nothing to read
        # Not in the kernel's session: left out, whatever its limit.
        assert address_space([kernel.pid, bystander.pid], kernel.pid) is None
    finally:
        os.killpg(kernel.pid, signal.SIGKILL)  # its session's group: the worker too
        bystander.kill()
        for proc in (kernel, bystander):
            proc.wait()


def ulimit_kernelspec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec whose argv wraps ipykernel in a shell that sets its RLIMIT_AS first."""
    where = tmp_path / "share" / "kernels" / "python3-ulimit"
    where.mkdir(parents=True)
    wrapped = f"ulimit -v {LIMIT >> 10}; exec {sys.executable} -m ipykernel_launcher -f "
    spec = {
        "argv": ["bash", "-c", wrapped + "{connection_file}"],
        "display_name": "Python 3 (ulimit -v)",
        "language": "python",
    }
    (where / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    return "python3-ulimit"


async def run(
    km: HeartbeatKernelManager,
    told: list[tuple[float, Any]],
    cells: tuple[str, ...] = ("kept = 42", GROW, "print(kept)"),
    **start: Any,
) -> list[dict[str, Any]]:
    """Start ``km``'s kernel (with ``start``), run ``cells``: each one's reply content, with the
    text it printed ("printed"); what ``km.memory`` told, with when, into ``told``."""
    km.memory.add_listener(lambda event: told.append((time.monotonic(), event)))
    await km.start_kernel(**start)
    client = km.client()
    try:
        client.start_channels()
        await client.wait_for_ready(timeout=120)
        replies = []
        for code in cells:
            msg_id = client.execute(code)
            printed = []
            while True:
                msg = await client.get_iopub_msg(timeout=60)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    printed.append(msg["content"]["text"])
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
            reply = await client.get_shell_msg(timeout=60)
            while reply["parent_header"]["msg_id"] != msg_id:  # wait_for_ready's extra asks
                reply = await client.get_shell_msg(timeout=60)
            replies.append({**reply["content"], "printed": "".join(printed)})
        return replies
    finally:
        client.stop_channels()
        await km.shutdown_kernel(now=True)


def test_a_kernel_under_ulimit_v_is_warned_before_its_memory_error_or_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = ulimit_kernelspec(tmp_path, monkeypatch)
    warned = HeartbeatKernelManager(kernel_name=name)  # memory_warning: 0.9, the default
    stopped = HeartbeatKernelManager(kernel_name=name, memory_interrupt=0.8)
    told: dict[str, list[tuple[float, Any]]] = {"warned": [], "stopped": []}

    async def scenario() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(run(warned, told["warned"]), run(stopped, told["stopped"]))

    with caplog.at_level(logging.WARNING):
        grown, interrupted = asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records]
    words = (
        r"this kernel's address space is 1\.\d GiB of its 1\.2 GiB limit \(RLIMIT_AS, 'ulimit -v'\)"
    )

    # Warned: once, in the log and to its listeners, before its cell's MemoryError.
    assert grown[1]["status"] == "error" and grown[1]["ename"] == "MemoryError", grown[1]
    failed = re.search(r"failed at ([\d.]+)", grown[1]["printed"])
    assert failed, grown[1]
    [(at, event)] = told["warned"]
    assert isinstance(event, _address_space.Warn), event
    assert at < float(failed.group(1)), "warned after the MemoryError"
    assert event.usage >= 0.9 * LIMIT and event.limit == LIMIT
    [line] = [m for m in said if m.startswith(f"Kernel {warned.kernel_id}: ") and "space" in m]
    assert re.fullmatch(
        rf"Kernel {warned.kernel_id}: {words}; at the limit its allocations fail \(MemoryError; "
        r"native code may abort\) \(memory_warning\)",
        line,
    ), line
    assert grown[2]["status"] == "ok" and grown[2]["printed"] == "42\n"

    # Interrupted at 0.8, before any MemoryError; the kernel lives on, `kept` with it.
    assert interrupted[0]["status"] == "ok"
    assert interrupted[1]["status"] == "error", interrupted[1]
    assert interrupted[1]["ename"] == "KeyboardInterrupt", interrupted[1]
    assert "failed at" not in interrupted[1]["printed"]
    assert interrupted[2]["status"] == "ok" and interrupted[2]["printed"] == "42\n"
    # (Warned too, where its reading passed 0.9 before the interrupt ended the cell.)
    events = [event for _, event in told["stopped"]]
    assert all(isinstance(e, _address_space.Warn | _address_space.Interrupt) for e in events)
    [event] = [e for e in events if isinstance(e, _address_space.Interrupt)]
    assert event.usage >= 0.8 * LIMIT and event.limit == LIMIT
    [line] = [m for m in said if m.startswith(f"Kernel {stopped.kernel_id}: interrupted: ")]
    assert re.fullmatch(
        rf"Kernel {stopped.kernel_id}: interrupted: {words} \(memory_interrupt\); interrupted "
        r"before its allocations fail at the limit \(MemoryError\); interrupting it",
        line,
    ), line


# Grows its resident memory (touched bytes) as well as its address space: 160 MiB/s.
GROW_TOUCHED = GROW.replace("bytes(16 << 20)", "b'x' * (16 << 20)")


# The full form only (HEARTBEAT_SLOW=1): ~6 s more, for two watches each tested above (the
# cgroup's in tests/test_memory_server.py), on the default suite's budget.
@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="the full form only (HEARTBEAT_SLOW=1)")
def test_a_kernel_under_both_a_cgroup_limit_and_ulimit_v_is_warned_of_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Its cgroup's 700 MiB (warned at 0.7: ~490 MiB resident) and its address space's 1.25 GiB
    # (~875 MiB: ~130 MiB grown past an idle kernel's) both pass the warning before the
    # MemoryError (~500 MiB grown): each watched on its own, each told once, in its own words.
    name = ulimit_kernelspec(tmp_path, monkeypatch)
    km = HeartbeatKernelManager(kernel_name=name, memory_warning=0.7)
    told: list[tuple[float, Any]] = []

    async def scenario(group: Path) -> list[dict[str, Any]]:
        return await run(km, told, (GROW_TOUCHED,), preexec_fn=joiner(group))

    with memory_cgroup(700 << 20) as group, caplog.at_level(logging.WARNING):
        [grown] = asyncio.run(scenario(group))
        oom = (group / "memory.oom_control").read_text()
    assert re.search(r"^oom_kill 0$", oom, re.M), oom
    assert grown["status"] == "error" and grown["ename"] == "MemoryError", grown
    failed = re.search(r"failed at ([\d.]+)", grown["printed"])
    assert failed, grown
    assert all(at < float(failed.group(1)) for at, _ in told), "warned after the MemoryError"
    kinds = sorted(type(event).__module__ for _, event in told)
    assert kinds == ["heartbeat._address_space", "heartbeat._memory"], told
    said = [r.getMessage() for r in caplog.records if "(memory_warning)" in r.getMessage()]
    assert len(said) == 2, said
    assert any("address space is " in m and "of its 1.2 GiB limit (RLIMIT_AS" in m for m in said)
    assert any("memory cgroup uses " in m and "of its 700.0 MiB limit" in m for m in said)
