"""Notebooks run with no one watching: the real ``jupyter execute``, papermill and nbclient,
real ipykernels frozen mid-cell with SIGSTOP (or dying), and no kernel process left behind."""

from __future__ import annotations

import asyncio
import os
import re
import selectors
import subprocess
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from traitlets.config import Config

from heartbeat.cli import main as heartbeat_main
from heartbeat.jupyter import HeartbeatKernelManager
from tests.conftest import gone
from tests.test_jupyter import freeze_when_beating, restarted, seen_dead

TTD = 1.0
HOLD_GIL = "import ctypes; ctypes.PyDLL(None).usleep(10_000_000)"


def notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, path)
    return path


def pid_cell(marks: Path) -> str:
    """A cell that leaves its kernel's pid in ``marks``/pid."""
    return f"import os; open({str(marks / 'pid')!r}, 'w').write(str(os.getpid()))"


def freeze_cell(marks: Path, how: str = "SIGSTOP") -> str:
    """A cell that, past the first_beat grace, notes the time and freezes (or kills) itself."""
    return (
        "import os, signal, time\n"
        "time.sleep(2.0)\n"
        f"open({str(marks / 'frozen')!r}, 'w').write(repr(time.monotonic()))\n"
        f"os.kill(os.getpid(), signal.{how})\n"
    )


def run_timed(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, list[Any]]:
    """Run a command; return its exit code and its output lines with the time each was read."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[tuple[float, str]] = []
    end = time.monotonic() + timeout
    with proc, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := end - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            lines.append((time.monotonic(), line.decode(errors="replace")))
        else:
            proc.kill()
            raise AssertionError(f"{argv[:3]} did not end within {timeout} s")
        code = proc.wait(30)
    return code, lines


def install_kernelspec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_beat: float
) -> dict[str, str]:
    """The environment of a machine where ``heartbeat kernelspec`` was run (time_to_dead 1 s),
    its kernel specs under ``tmp_path``."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    argv = ["kernelspec", "--time-to-dead", str(TTD), "--first-beat", str(first_beat)]
    assert heartbeat_main(argv) == 0
    assert (tmp_path / "data" / "kernels" / "python3-heartbeat" / "kernel.json").exists()
    return dict(os.environ)


@pytest.fixture
def kernelspec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``heartbeat kernelspec`` run with time_to_dead 1 s and first_beat 2 s (a kernel slower
    than that to answer, on a loaded machine, would be judged dead: that is the setting's rule)."""
    return install_kernelspec(tmp_path, monkeypatch, first_beat=2.0)


@pytest.fixture
def patient_kernelspec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The same, with a first_beat (10 s) that no start on a loaded machine outlasts: for a
    test of the process alone, which a heart judged too soon would end first."""
    return install_kernelspec(tmp_path, monkeypatch, first_beat=10.0)


def assert_ended_by_the_freeze(code: int, lines: list[Any], marks: Path) -> None:
    text = "".join(line for _, line in lines)
    assert code != 0, text
    assert "DeadKernelError" in text, text
    frozen = float((marks / "frozen").read_text())
    [died] = [t for t, line in lines if "Kernel died while waiting for execute reply" in line]
    # Dead within time_to_dead + interval (0.5 s) of the freeze, and nbclient looks each second.
    assert died - frozen <= TTD + 2.0, text
    # One line for the death, through the app's logging, naming the kernel and its process.
    [death] = [line for _, line in lines if "is dead: no reply for" in line]
    assert re.search(r"Kernel [0-9a-f-]{36}: heart at tcp://", death), death
    assert "its process was stopped" in death and "killed its process" in death, death
    pid = int((marks / "pid").read_text())
    assert gone(pid), f"kernel {pid} was left behind"


@pytest.mark.timeout(180)
def test_jupyter_execute_with_the_kernelspec_survives_a_gil_bound_cell_and_ends_at_a_freeze(
    kernelspec: dict[str, str], tmp_path: Path
) -> None:
    nb = notebook(tmp_path / "nb.ipynb", pid_cell(tmp_path), HOLD_GIL, freeze_cell(tmp_path))
    argv = ["jupyter", "execute", "--kernel_name=python3-heartbeat", str(nb)]
    code, lines = run_timed(argv, kernelspec, 150)
    # The 10 s GIL-bound cell completed (the next cell ran), and the freeze ended the run.
    assert (tmp_path / "frozen").exists(), "".join(line for _, line in lines)
    assert_ended_by_the_freeze(code, lines, tmp_path)


@pytest.mark.timeout(180)
def test_papermill_with_the_kernelspec_ends_at_a_freeze(
    kernelspec: dict[str, str], tmp_path: Path
) -> None:
    nb = notebook(tmp_path / "nb.ipynb", pid_cell(tmp_path), freeze_cell(tmp_path))
    argv = ["papermill", "-k", "python3-heartbeat", str(nb), str(tmp_path / "out.ipynb")]
    code, lines = run_timed(argv, kernelspec, 150)
    assert_ended_by_the_freeze(code, lines, tmp_path)


# How a cell kills its kernel's process, and the words its death line says it in.
DEATHS = {
    "SIGKILL": ("os.kill(os.getpid(), 9)", "was killed by SIGKILL (9)"),
    "SIGSEGV": ("import ctypes; ctypes.string_at(0)", "was killed by SIGSEGV (11)"),
    "exit": ("os._exit(3)", "exited with code 3"),
}


def assert_ended_by_the_death(code: int, lines: list[Any], marks: Path, words: str) -> None:
    text = "".join(line for _, line in lines)
    assert code != 0 and "DeadKernelError" in text, text
    died, pid = float((marks / "died").read_text()), int((marks / "pid").read_text())
    # One line for the death, through the app's logging, with its cause and what happens next.
    [(ours, at, death)] = [
        (n, t, line) for n, (t, line) in enumerate(lines) if re.search(r"Kernel \S+: ", line)
    ]
    assert re.search(
        rf"Kernel [0-9a-f-]{{36}}: process {pid} died: it {re.escape(words)}(?: at .+)?; "
        "its kernel manager will find it dead$",
        death.rstrip(),
    ), death
    # Written at once (the exit watch), before nbclient's look once a second finds it dead.
    [(theirs, said)] = [
        (n, t) for n, (t, line) in enumerate(lines) if "Kernel died while waiting" in line
    ]
    assert ours < theirs, text
    assert at - died <= 1.0 and said - died <= 3.0, (at - died, said - died)


def death_notebook(marks: Path, how: str) -> Path:
    kill, _ = DEATHS[how]
    dies = f"import os, time; open({str(marks / 'died')!r}, 'w').write(repr(time.monotonic()))"
    return notebook(marks / "nb.ipynb", pid_cell(marks), f"{dies}\n{kill}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", list(DEATHS))
def test_jupyter_execute_with_the_kernelspec_says_why_the_process_died_before_kernel_died(
    patient_kernelspec: dict[str, str], tmp_path: Path, how: str
) -> None:
    argv = ["jupyter", "execute", "--kernel_name=python3-heartbeat"]
    code, lines = run_timed([*argv, str(death_notebook(tmp_path, how))], patient_kernelspec, 100)
    assert_ended_by_the_death(code, lines, tmp_path, DEATHS[how][1])


@pytest.mark.timeout(120)
def test_papermill_with_the_kernelspec_says_why_the_process_died_before_kernel_died(
    patient_kernelspec: dict[str, str], tmp_path: Path
) -> None:
    nb = death_notebook(tmp_path, "SIGKILL")
    argv = ["papermill", "-k", "python3-heartbeat", str(nb), str(tmp_path / "out.ipynb")]
    code, lines = run_timed(argv, patient_kernelspec, 100)
    assert_ended_by_the_death(code, lines, tmp_path, DEATHS["SIGKILL"][1])


# -- nbclient with HeartbeatKernelManager, every mode ------------------------------------------


async def run_with_manager(
    tmp_path: Path, name: str, autorestart: bool, how: str
) -> tuple[BaseException | None, float, float, int]:
    """Run a notebook whose kernel freezes (or dies) mid-cell, with NotebookClient and
    HeartbeatKernelManager; return the error, when it came, when the kernel froze, its pid."""
    marks = tmp_path / name
    marks.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(pid_cell(marks)),
        nbformat.v4.new_code_cell(freeze_cell(marks, how)),
        nbformat.v4.new_code_cell("print('never')"),
    ]
    config = Config()
    config.HeartbeatKernelManager.time_to_dead = TTD
    config.HeartbeatKernelManager.first_beat = 1.0
    config.HeartbeatKernelManager.autorestart = autorestart
    client = NotebookClient(
        nb,
        kernel_manager_class=HeartbeatKernelManager,
        kernel_name="python3",
        timeout=60,
        config=config,
    )
    error: BaseException | None = None
    try:
        await client.async_execute()
    except DeadKernelError as exc:
        error = exc
    return (
        error,
        time.monotonic(),
        float((marks / "frozen").read_text()),
        int((marks / "pid").read_text()),
    )


def descendants() -> set[int]:
    """Every process below this one (kernels started by a manager, and theirs), zombies too."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def describe(pids: set[int]) -> list[str]:
    out = subprocess.run(
        ["ps", "-o", "pid=,stat=,args=", "-p", ",".join(map(str, pids))],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.splitlines()


@pytest.mark.timeout(180)
def test_nbclient_with_the_kernel_manager_ends_promptly_in_every_mode_and_leaves_no_kernel(
    tmp_path: Path,
) -> None:
    modes = [
        (autorestart, how)
        for autorestart in (True, False)
        for how in ("SIGSTOP", "SIGKILL")  # dead by its heart, or by its process
    ]

    async def scenario() -> list[Any]:
        runs = [run_with_manager(tmp_path, f"{int(a)}-{how}", a, how) for a, how in modes]
        return await asyncio.gather(*runs)

    before = descendants()
    results = asyncio.run(scenario())
    for (autorestart, how), (error, ended, frozen, pid) in zip(modes, results, strict=True):
        mode = f"autorestart={autorestart}, {how}"
        assert isinstance(error, DeadKernelError), mode
        # Four kernels on two cores: allow the restarter's poll (every time_to_dead) and load.
        assert ended - frozen <= TTD + 2.0 + 2.0, mode
        assert gone(pid), f"{mode}: kernel {pid} was left behind"
    left = descendants() - before
    assert not left, f"processes left behind: {describe(left)}"


@pytest.mark.timeout(180)
def test_a_kernel_manager_shut_down_by_hand_after_a_death_leaves_no_kernel() -> None:
    async def by_hand(autorestart: bool) -> tuple[int, bool]:
        km = HeartbeatKernelManager(
            kernel_name="python3", time_to_dead=TTD, first_beat=1.0, autorestart=autorestart
        )
        await km.start_kernel()
        client = km.client()
        try:
            pid = await freeze_when_beating(km, client)
            await seen_dead(client)
            if autorestart:  # let the restart finish: the new kernel is the one to shut down
                await restarted(km, pid)
                await asyncio.wait_for(km.ready, 60)
            return pid, await km.is_alive()
        finally:
            client.stop_channels()
            await km.shutdown_kernel()  # graceful, as a user would

    async def scenario() -> list[tuple[int, bool]]:
        return list(await asyncio.gather(by_hand(True), by_hand(False)))

    before = descendants()
    (first, new_one), (second, none) = asyncio.run(scenario())
    assert new_one and not none  # autorestart on: a new kernel; off: none
    assert gone(first) and gone(second)
    left = descendants() - before
    assert not left, f"processes left behind: {describe(left)}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("now", [False, True])
def test_a_shutdown_asked_while_a_death_restarts_the_kernel_waits_and_leaves_no_kernel(
    now: bool,
) -> None:
    # What nbclient does: its client sees the death and it shuts the kernel down while the
    # restarter is still bringing up the new one. Asked at the moment the restart begins (the
    # restarter's "restart" callback), the shutdown waits for the restart, then ends the new
    # kernel, with no error from jupyter_client's pending-state bookkeeping.
    async def scenario() -> tuple[int, bool, bool]:
        km = HeartbeatKernelManager(kernel_name="python3", time_to_dead=TTD, first_beat=1.0)
        shutdowns: list[asyncio.Future[None]] = []
        await km.start_kernel()
        km.add_restart_callback(  # the restarter keeps the callbacks: after the start
            lambda: shutdowns.append(asyncio.ensure_future(km.shutdown_kernel(now=now)))
        )
        client = km.client()
        try:
            pid = await freeze_when_beating(km, client)
            end = time.monotonic() + 30
            while not shutdowns:
                assert time.monotonic() < end, "never restarted"
                await asyncio.sleep(0.05)
            await asyncio.wait_for(shutdowns[0], 60)  # raises what the shutdown raised
            await asyncio.sleep(2 * TTD)  # a restart (or a poll) after the shutdown shows here
            return pid, km.has_kernel, await km.is_alive()
        finally:
            client.stop_channels()
            if km.has_kernel:
                await km.shutdown_kernel(now=True)

    before = descendants()
    pid, has_kernel, alive = asyncio.run(scenario())
    assert gone(pid) and not has_kernel and not alive
    left = descendants() - before
    assert not left, f"processes left behind: {describe(left)}"
