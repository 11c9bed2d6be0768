"""Whose process a kernel is: a provisioner's pid that is not our child, the sync manager's
own checks of its kernel, and a manager in a forked child."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
from jupyter_client import (
    AsyncKernelManager,
)
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from heartbeat.jupyter import (
    HeartbeatKernelManager,
)
from heartbeat.jupyter.provisioner import HeartbeatProvisioner
from tests.conftest import process_state, run_python, stranger
from tests.test_jupyter import seen_dead

# -- a provisioner's pid that is not our child ---------------------------------------------------


class StrangersPid(LocalProvisioner):
    """Launches the kernel here as a LocalProvisioner does, then reports as its ``pid`` another
    local process's, as a remote provisioner reports the kernel's pid on another host."""

    stranger = 0

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        info = await super().launch_kernel(cmd, **kwargs)
        self.pid = self.stranger
        return info


class HeartbeatStrangersPid(HeartbeatProvisioner):
    """The same, watching the heart itself (the ``python3-heartbeat`` kernel spec's way)."""

    stranger = 0

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        info = await super().launch_kernel(cmd, **kwargs)
        self.pid = self.stranger
        return info


def provisioned_by(
    monkeypatch: pytest.MonkeyPatch, cls: type[LocalProvisioner], **settings: Any
) -> None:
    """Every kernel manager started from now on gets a ``cls`` provisioner."""

    def create(kernel_id: str, kernel_spec: Any, parent: Any) -> LocalProvisioner:
        return cls(kernel_id=kernel_id, kernel_spec=kernel_spec, parent=parent, **settings)

    monkeypatch.setattr(KernelProvisionerFactory.instance(), "create_provisioner_instance", create)


async def freeze_the_launched_kernel(km: Any, client: Any, beaten: Callable[[], bool]) -> int:
    """Wait for the kernel's heart, then SIGSTOP the process the provisioner launched (our
    child, whatever pid the provisioner reports)."""
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    end = time.monotonic() + 30
    while not beaten():
        assert time.monotonic() < end, "the heart never answered"
        await asyncio.sleep(0.05)
    pid = int(km.provisioner.process.pid)
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_a_heart_death_never_signals_a_pid_that_is_not_our_child_and_is_still_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(stranger: int) -> tuple[str, bool, int, str | None]:
        StrangersPid.stranger = stranger
        provisioned_by(monkeypatch, StrangersPid)
        km = HeartbeatKernelManager(
            kernel_name="python3", time_to_dead=1.0, first_beat=1.0, autorestart=False
        )
        await km.start_kernel()
        client = km.client()
        try:
            assert km.provisioner is not None and km.provisioner.pid == stranger
            process = km.provisioner.process  # type: ignore[attr-defined]
            # Not our child: its silence is a death once it is known to be ipykernel.
            known = lambda: km.heart_has_beaten and km.heart_kind == "threaded"  # noqa: E731
            await freeze_the_launched_kernel(km, client, known)
            await seen_dead(client)
            # Killed through its provisioner: the process it launched, by its process group.
            end = time.monotonic() + 30
            while process.poll() is None:
                assert time.monotonic() < end, "the frozen kernel was not killed"
                await asyncio.sleep(0.05)
            return km.kernel_id, await km.is_alive(), km.deaths, process_state(stranger)
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO), stranger() as pid_of_stranger:
        kernel_id, alive, deaths, state = asyncio.run(scenario(pid_of_stranger))
        assert state in ("R", "S"), state  # the stranger survived
    assert not alive and deaths == 1
    [death] = [r for r in caplog.records if "is dead" in r.getMessage()]
    text = death.getMessage()
    assert text.startswith(f"Kernel {kernel_id}: heart at tcp://"), text
    assert "killing it through its provisioner" in text and str(pid_of_stranger) not in text, text
    # Not our child, so told by its heart's port: it accepted (the kernel was frozen), probed
    # before the provisioner's kill closed it.
    assert "it was likely frozen, or its host stalled: its heart was silent" in text, text


def test_the_provisioner_never_signals_a_pid_that_is_not_our_child(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(stranger: int) -> tuple[bool, str | None]:
        HeartbeatStrangersPid.stranger = stranger
        provisioned_by(monkeypatch, HeartbeatStrangersPid, time_to_dead=1.0, first_beat=1.0)
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel()
        client = km.client()
        try:
            provisioner = km.provisioner
            assert isinstance(provisioner, HeartbeatStrangersPid)
            monitor = provisioner._monitor
            assert monitor is not None
            known = lambda: provisioner.heart_kind == "threaded"  # noqa: E731  # see above
            await freeze_the_launched_kernel(km, client, known)
            end = time.monotonic() + 30
            while await km.is_alive():  # found dead: killed through the provisioner
                assert time.monotonic() < end, "the frozen kernel was not killed"
                await asyncio.sleep(0.05)
            return await km.is_alive(), process_state(stranger)
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    with caplog.at_level(logging.INFO), stranger() as pid_of_stranger:
        alive, state = asyncio.run(scenario(pid_of_stranger))
        assert state in ("R", "S"), state
    assert not alive
    [death] = [r for r in caplog.records if "is dead" in r.getMessage()]
    assert "killing it through its provisioner" in death.getMessage(), death.getMessage()


# -- the sync manager's _async_is_alive, which jupyter_client itself calls ----------------------

SYNC_MANAGER_SLOW_KILL = textwrap.dedent(
    """
    import asyncio, json, os, signal, threading, time
    from jupyter_client import BlockingKernelClient
    from jupyter_client.provisioning.factory import KernelProvisionerFactory
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner
    from heartbeat.jupyter import HeartbeatIOLoopKernelManager

    class SlowRemote(LocalProvisioner):
        # Launches here, but knows no local pid and kills slowly, like a remote provisioner
        # deleting a pod: for a while the heart is dead and the process still there. A
        # threading.Event: the sync manager's calls may run on a helper thread's loop.
        released = threading.Event()

        async def launch_kernel(self, cmd, **kwargs):
            info = await super().launch_kernel(cmd, **kwargs)
            self.pid = None
            return info

        async def kill(self, restart=False):
            while not SlowRemote.released.is_set():
                await asyncio.sleep(0.05)
            await super().kill(restart)

    KernelProvisionerFactory.instance().create_provisioner_instance = (
        lambda kernel_id, kernel_spec, parent: SlowRemote(
            kernel_id=kernel_id, kernel_spec=kernel_spec, parent=parent
        )
    )

    async def until(condition, what):
        end = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < end, what
            await asyncio.sleep(0.05)

    async def main():
        km = HeartbeatIOLoopKernelManager(
            kernel_name="python3", time_to_dead=1.0, first_beat=1.0, autorestart=False
        )
        km.start_kernel()
        # A stock client asks the manager's _async_is_alive(), not its is_alive().
        client = BlockingKernelClient(parent=km)
        process = km.provisioner.process
        try:
            await until(lambda: km.heart_has_beaten, "the heart never answered")
            # Not our child (no pid): its silence is a death once it is known to be ipykernel,
            # whose heart answers while it is busy; until then, silence alone kills nothing.
            await until(lambda: km.heart_kind == "threaded", "its kind was never learned")
            os.kill(process.pid, signal.SIGSTOP)
            await until(lambda: km.deaths == 1, "no death")
            return {
                "process_there": process.poll() is None,
                "is_alive": km.is_alive(),
                "stock_client_is_alive": client.is_alive(),
            }
        finally:
            SlowRemote.released.set()
            await until(lambda: process.poll() is not None, "not killed by its provisioner")
            km.shutdown_kernel(now=True)

    print(json.dumps(asyncio.run(main())))
    """
)


FORKED_SYNC_MANAGER = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys, time
    from jupyter_client import KernelManager
    from traitlets.config import Config
    from heartbeat.jupyter import HeartbeatIOLoopKernelManager

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def sync_call_on_the_running_loop():
        # jupyter_core runs it in a task-runner thread it keeps for this thread's name.
        KernelManager().is_alive()

    loop.run_until_complete(sync_call_on_the_running_loop())
    read, write = os.pipe()
    pid = os.fork()  # as multiprocessing's fork start method does
    if pid == 0:
        code = 1
        try:
            config = Config({"HeartbeatIOLoopKernelRestarter": {"time_to_dead": 0.1}})
            km = HeartbeatIOLoopKernelManager(kernel_name="python3", config=config)
            km.start_kernel()
            os.write(write, b"%d\\n" % km.provisioner.pid)
            try:
                # What a blocking client's calls do: run this thread's loop, where the
                # restarter polls every 0.1 s.
                loop.run_until_complete(asyncio.sleep(1.0))
                code = 0 if km.is_alive() else 2
            finally:
                km.shutdown_kernel(now=True)
        finally:
            os._exit(code)
    os.close(write)
    kernel = int(os.fdopen(read).readline() or 0)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print(json.dumps(os.waitstatus_to_exitcode(status)))
            sys.exit(0)
        time.sleep(0.05)
    for leftover in (pid, kernel):
        if leftover:
            os.kill(leftover, signal.SIGKILL)
    print(json.dumps("hung"))
    """
)


def test_a_dead_heart_is_dead_to_jupyter_clients_own_async_is_alive_in_the_sync_manager() -> None:
    # In a process of its own, as the sync manager test above.
    result = run_python(SYNC_MANAGER_SLOW_KILL, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen == {"process_there": True, "is_alive": False, "stock_client_is_alive": False}


def test_the_sync_manager_in_a_forked_child_polls_without_hanging() -> None:
    # jupyter_client's test_start_sequence_process_kernels with the drop-ins: the child inherits
    # jupyter_core's task runner for "MainThread" but not its thread, so a sync call made on the
    # child's running loop (jupyter_client's sync restarter calls is_alive() so) waits forever.
    result = run_python(FORKED_SYNC_MANAGER, timeout=90)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == 0, result.stderr
