"""A real ipykernel that stops answering is reported, as hung or busy in native code, with where
its main thread is; one that is only busy (sleeping, a Python loop, a thread pool) never is.

Real kernels, real time, a small ``unresponsive_after``; the long forms behind
``HEARTBEAT_SLOW=1`` (marked slow: CI runs their short form)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from heartbeat.jupyter import HeartbeatKernelManager
from heartbeat.jupyter import _responsive_shown as shown
from tests.conftest import SLOW, gone

AFTER = 3.0
# A report comes within the bound plus a probe period, a tick and the stack's taking; generous.
REPORT_WITHIN = AFTER + 30

PAUSE_MAIN = "import ctypes; ctypes.PyDLL(None).pause()"
PAUSE_THREAD = (
    "import ctypes, threading\n"
    "threading.Thread(target=ctypes.PyDLL(None).pause, daemon=True).start()"
)
# Catastrophic backtracking: _sre computes, holding the GIL, for longer than any test waits.
BACKTRACK = "import re\nre.match('(a+)+$', 'a' * 64 + 'b')"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@asynccontextmanager
async def kernel(after: float = AFTER, **settings: Any) -> AsyncIterator[tuple[Any, Any, Records]]:
    """A HeartbeatKernelManager's ipykernel and a client of it, its log recorded."""
    records = Records()
    log = logging.getLogger(f"test-unresponsive-{id(records)}")
    log.setLevel(logging.DEBUG)
    log.addHandler(records)
    km = HeartbeatKernelManager(kernel_name="python3", unresponsive_after=after, **settings)
    km.log = log
    client = None
    try:
        await km.start_kernel()
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        yield km, client, records
    finally:
        if client is not None:
            client.stop_channels()
        await km.shutdown_kernel(now=True)


async def until(condition: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"{what} within {timeout} s"
        await asyncio.sleep(0.05)


def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    """A value on prometheus_client's default registry (what /metrics shows)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels or {})


def warnings_of(records: Records) -> list[str]:
    return [line for line in records.lines(logging.WARNING) if "has not answered" in line]


def test_a_main_thread_holding_the_gil_in_pause_is_hung_then_answers_after_an_interrupt() -> None:
    events: list[dict[str, Any]] = []
    gauges: list[float | None] = []

    async def listen(logger: Any, schema_id: str, data: Any) -> None:
        events.append(dict(data))

    async def scenario() -> tuple[list[str], list[str], Any]:
        async with kernel() as (km, client, records):
            km.event_logger.register_event_schema(shown.SCHEMA_PATH)
            km.event_logger.add_listener(schema_id=shown.SCHEMA_ID, listener=listen)
            episodes = sample("heartbeat_unresponsive_episodes_total", {"kind": "hung"}) or 0
            gauges.append(sample("heartbeat_kernels_unresponsive"))
            client.execute("x = 1\n" + PAUSE_MAIN)
            await until(lambda: km.unresponsive is not None, REPORT_WITHIN, "reported")
            report = km.unresponsive
            await until(lambda: len(events) == 1, 10, "the event")
            gauges.append(sample("heartbeat_kernels_unresponsive"))
            hung = sample("heartbeat_unresponsive_episodes_total", {"kind": "hung"})
            assert hung == episodes + 1
            # SIGINT ends the pause(): the cell ends with KeyboardInterrupt, the kernel answers.
            await km.interrupt_kernel()
            await until(lambda: km.unresponsive is None, 60, "answering again")
            await until(lambda: records.lines(logging.INFO)[-1:] != [], 10, "a line")
            await until(lambda: len(events) == 2, 10, "the second event")
            gauges.append(sample("heartbeat_kernels_unresponsive"))
            return warnings_of(records), records.lines(logging.INFO), report

    warnings, infos, report = asyncio.run(scenario())
    # On the event bus: when it stopped answering (with its stacks), when it answered again.
    assert [e["state"] for e in events] == ["unresponsive", "answering"], events
    assert events[0]["kind"] == "hung" and "cell:2" in events[0]["main_frames"]
    assert events[0]["stacks"].startswith("main thread")
    # On /metrics: one more kernel unresponsive while it was, none after.
    assert gauges[0] is not None, "not on /metrics while no kernel is unresponsive"
    assert gauges[1] == gauges[0] + 1 and gauges[2] == gauges[0], gauges
    assert len(warnings) == 1, warnings
    assert "hung" in warnings[0] and "main thread at" in warnings[0]
    assert "cell:2 in <module>" in warnings[0], warnings[0]
    assert report.event.kind == "hung"
    assert any("answers again" in line for line in infos), infos
    # Each thread's stack, the main thread first, in the INFO line after it.
    (stacks,) = [line for line in infos if "stacks" in line]
    assert "main thread (most recent call first):\n  /tmp/ipykernel_" in stacks


def test_a_cell_computing_in_c_with_the_gil_is_busy_in_native_code() -> None:
    async def scenario() -> tuple[list[str], Any]:
        async with kernel() as (km, client, records):
            client.execute(BACKTRACK)
            await until(lambda: km.unresponsive is not None, REPORT_WITHIN, "reported")
            return warnings_of(records), km.unresponsive

    warnings, report = asyncio.run(scenario())
    assert len(warnings) == 1, warnings
    assert report.event.kind == "native", report.event
    assert "busy in native code" in warnings[0]
    assert "re/__init__.py" in warnings[0] and "cell:2 in <module>" in warnings[0], warnings[0]


def test_an_idle_kernel_whose_thread_holds_the_gil_forever_is_reported_with_that_thread() -> None:
    async def scenario() -> tuple[list[str], Any]:
        async with kernel() as (km, client, records):
            client.execute(PAUSE_THREAD)
            await until(lambda: km.unresponsive is not None, REPORT_WITHIN, "reported")
            return warnings_of(records), km.unresponsive

    warnings, report = asyncio.run(scenario())
    assert len(warnings) == 1, warnings
    assert report.event.kind == "hung"
    stacks = report.stacks()
    assert stacks is not None and stacks.startswith("main thread")
    # The thread that holds the GIL is there, in ctypes' call (its Python frame: threading's run).
    assert "threading.py" in stacks


@pytest.mark.slow
def test_a_kernel_only_busy_is_never_reported() -> None:
    # Sleeping, a pure-Python loop, a thread pool's sleeps and numpy: each answers on control
    # while its cell runs, for many times the bound. The kernels at once: the wait paid once.
    seconds = 60 if SLOW else 15
    cells = [
        f"import time; time.sleep({seconds})",
        f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass",
        "from concurrent.futures import ThreadPoolExecutor\nimport time\n"
        f"with ThreadPoolExecutor(4) as pool: list(pool.map(time.sleep, [{seconds}] * 4))",
    ]
    if importlib.util.find_spec("numpy") is not None:
        # Native calls that release the GIL (BLAS), back to back.
        cells.append(
            "import time, numpy as np\na = np.random.rand(600, 600)\n"
            f"end = time.monotonic() + {seconds}\nwhile time.monotonic() < end: a @ a"
        )

    async def one(code: str) -> tuple[list[str], str]:
        async with kernel() as (km, client, records):
            msg_id = client.execute(code)
            reply = await client.get_shell_msg(timeout=seconds + 120)
            while reply["parent_header"].get("msg_id") != msg_id:
                reply = await client.get_shell_msg(timeout=seconds + 120)
            assert km._responsive is not None and km._responsive.core.answers_from == "own-thread"
            return warnings_of(records), reply["content"]["status"]

    async def scenario() -> list[tuple[list[str], str]]:
        return list(await asyncio.gather(*(one(code) for code in cells)))

    for (warnings, status), code in zip(asyncio.run(scenario()), cells, strict=True):
        assert status == "ok", code
        assert warnings == [], (code, warnings)


def test_a_crash_names_the_python_line_it_died_on() -> None:
    async def scenario() -> list[str]:
        async with kernel(autorestart=False) as (km, client, records):
            client.execute("import ctypes\nctypes.string_at(0)")
            await until(lambda: km.last_death is not None, 60, "the death seen")
            return records.lines(logging.WARNING)

    warnings = asyncio.run(scenario())
    (crash,) = [line for line in warnings if "died" in line]
    assert re.search(
        r"died: it was killed by SIGSEGV \(11\) at ctypes/__init__\.py:\d+ in string_at "
        r"<- cell:2 in <module>; not restarting it",
        crash,
    ), crash


def test_off_when_unresponsive_after_is_none_or_zero() -> None:
    assert HeartbeatKernelManager(unresponsive_after=0).unresponsive_after is None
    assert HeartbeatKernelManager(unresponsive_after=None).unresponsive_after is None
    assert HeartbeatKernelManager().unresponsive_after == 60
    with pytest.raises(Exception, match="unresponsive_after"):
        HeartbeatKernelManager(unresponsive_after=-1)

    async def scenario() -> tuple[list[str], Any]:
        async with kernel(after=0) as (km, client, records):
            client.execute(PAUSE_MAIN)
            await asyncio.sleep(2 * AFTER + 2)
            assert km._responsive is None
            return warnings_of(records), km.unresponsive

    assert asyncio.run(scenario()) == ([], None)


def test_opt_in_a_kernel_unresponsive_too_long_is_killed_and_restarted_its_cause_unresponsive() -> (
    None
):
    async def scenario() -> tuple[Any, list[str], int, int, bool]:
        async with kernel(kill_unresponsive_after=AFTER + 2) as (km, client, records):
            first = km.provisioner.pid
            client.execute(PAUSE_MAIN)
            await until(lambda: km.last_death is not None, REPORT_WITHIN + 30, "killed")
            await until(lambda: km.provisioner and km.provisioner.pid != first, 60, "restarted")
            await asyncio.wait_for(km.ready, 60)
            alive = await client.is_alive()  # the client of the old kernel: it is dead
            return km.last_death, records.lines(logging.WARNING), first, km.provisioner.pid, alive

    death, warnings, first, second, alive = asyncio.run(scenario())
    assert death.cause.kind == "unresponsive", death
    assert death.cause.silence >= AFTER + 2
    assert death.restarting and second != first and not alive
    (line,) = [w for w in warnings if "died" in w]
    assert "did not answer for" in line and "killed for it; restarting it" in line, line
    # Reported (with its stack) before it was killed.
    order = [w for w in warnings if "has not answered" in w or "died" in w]
    assert "main thread at" in order[0] and "It is killed if it has not answered after" in order[0]
    assert "killing it" in order[1] and "died" in order[-1]


@pytest.mark.timeout(240)
def test_a_headless_run_with_the_kernelspec_ends_on_a_hung_kernel_with_its_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from heartbeat.cli import main as heartbeat_main
    from tests.test_headless import notebook, pid_cell, run_timed

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    argv = ["kernelspec", "--first-beat", "10", "--unresponsive-after", str(AFTER)]
    assert heartbeat_main([*argv, "--kill-unresponsive-after", str(AFTER + 2)]) == 0
    nb = notebook(tmp_path / "nb.ipynb", pid_cell(tmp_path), "x = 1\n" + PAUSE_MAIN)
    started = time.monotonic()
    code, lines = run_timed(
        ["jupyter", "execute", "--kernel_name=python3-heartbeat", str(nb)], dict(os.environ), 200
    )
    text = "".join(line for _, line in lines)
    assert code != 0 and "DeadKernelError" in text, text
    # Ended by the kill, not by a cell timeout (nbclient has none): the bound and some slack.
    assert time.monotonic() - started < 120, text
    assert "has not answered on its control channel" in text and "main thread at" in text, text
    assert "killing it; its threads' stacks:\nmain thread" in text, text
    assert "cell:2 in <module>" in text, text
    assert "did not answer for" in text and "killed for it" in text, text
    assert gone(int((tmp_path / "pid").read_text()))


def test_irkernel_which_never_answers_on_control_is_never_reported_even_idle() -> None:
    from tests.conftest import kernel_spec_or_skip

    kernel_spec_or_skip("ir")

    async def scenario() -> list[str]:
        records = Records()
        log = logging.getLogger(f"test-unresponsive-ir-{id(records)}")
        log.addHandler(records)
        # R starts slowly on a loaded machine, and its heart is in its main loop: a long grace.
        km = HeartbeatKernelManager(kernel_name="ir", unresponsive_after=AFTER, first_beat=60.0)
        km.log = log
        client = None
        try:
            await km.start_kernel()
            client = km.client()
            client.start_channels()
            await client.wait_for_ready(timeout=120)
            # As jupyter_server keeps it from the kernel's status: idle, all along.
            km.execution_state = "idle"
            await asyncio.sleep(4 * AFTER)
            assert km._responsive is not None and km._responsive.answers_from is None
            return records.lines(logging.WARNING)
        finally:
            if client is not None:
                client.stop_channels()
            await km.shutdown_kernel(now=True)

    assert asyncio.run(scenario()) == []


SYNC_MANAGER = """
import asyncio, json, time
from heartbeat.jupyter import HeartbeatIOLoopKernelManager

async def main():
    # The sync manager and its restarter run on the loop that is running here.
    km = HeartbeatIOLoopKernelManager(kernel_name="python3", unresponsive_after=3.0)
    km.start_kernel()
    client = km.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=60)
        client.execute("import ctypes; ctypes.PyDLL(None).pause()")
        end = time.monotonic() + 60
        while km.unresponsive is None:
            assert time.monotonic() < end, "not reported"
            await asyncio.sleep(0.05)
        return {"kind": km.unresponsive.event.kind, "main": km.unresponsive.main_frames()}
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)

print(json.dumps(asyncio.run(main())))
"""


def test_the_sync_manager_reports_a_hung_kernel_too() -> None:
    import json

    from tests.conftest import run_python

    result = run_python(SYNC_MANAGER, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen == {"kind": "hung", "main": "cell:1 in <module>"}, seen


@pytest.mark.slow
def test_the_probe_benchmark_runs_and_reports_no_kernel_that_answers(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "probe.json"
    argv = [sys.executable, "-m", "benchmarks.probe", "--kernels", "20", "--duration", "2"]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [*argv, "--json", str(out)], cwd=root, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["kind"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["probe"]["answered"] == 20 and rows["probe"]["false_reports"] == 0, rows
    assert "the probe costs" in done.stdout


def test_a_kernel_the_hook_cannot_enter_is_reported_without_stacks_saying_why_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import sys

    # ipykernel started otherwise than `python -m ipykernel_launcher`: no hook in it.
    spec = tmp_path / "kernels" / "python3-other"
    spec.mkdir(parents=True)
    launch = "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()"
    argv = [sys.executable, "-c", launch, "-f", "{connection_file}"]
    kernel_json = {"argv": argv, "display_name": "other", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel_json))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))

    async def scenario() -> list[str]:
        records = Records()
        log = logging.getLogger(f"test-unresponsive-other-{id(records)}")
        log.addHandler(records)
        km = HeartbeatKernelManager(kernel_name="python3-other", unresponsive_after=AFTER)
        km.log = log
        client = None
        try:
            await km.start_kernel()
            client = km.client()
            client.start_channels()
            await client.wait_for_ready(timeout=60)
            # Not launched as `-m ipykernel_launcher`, it is judged only once it has answered on
            # control (a kernel that never has is never called hung): on a loaded machine the
            # first probe's answer can come after the shell's.
            await until(
                lambda: km._responsive is not None and km._responsive.answers_from is not None,
                REPORT_WITHIN,
                "its control never answered",
            )
            for _ in range(2):  # two episodes
                client.execute(PAUSE_MAIN, stop_on_error=False)
                await until(lambda: km.unresponsive is not None, REPORT_WITHIN, "reported")
                await km.interrupt_kernel()
                await until(lambda: km.unresponsive is None, 60, "answering again")
            return warnings_of(records)
        finally:
            if client is not None:
                client.stop_channels()
            await km.shutdown_kernel(now=True)

    warnings = asyncio.run(scenario())
    assert len(warnings) == 2, warnings
    why = "its stacks cannot be had: its command is not `python -m ipykernel_launcher ...`"
    assert why in warnings[0] and "hung" in warnings[0], warnings[0]
    assert "stacks cannot be had" not in warnings[1] and "main thread at" not in warnings[1]
