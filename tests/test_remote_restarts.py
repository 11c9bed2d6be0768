"""A kernel whose process is not provably ours, as a remote provisioner's is, restarted after its
heart became unreachable: it is killed through its provisioner at once, not after the probe
of its port; its death is told (with that probe's answer) before the restarter says it
restarts. In a network namespace made for the test, nftables dropping its heart's packets."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.provisioning.factory import KernelProvisionerFactory

from benchmarks import lossy_net
from heartbeat._cause import Death
from heartbeat.jupyter import HeartbeatKernelManager
from heartbeat.jupyter._proc import PROBE_TIMEOUT
from tests.conftest import stranger
from tests.test_jupyter_processes import StrangersPid

TTD = 1.0
FIRST_BEAT = 1.0


async def until(condition: Any, timeout: float, what: str) -> float:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, what
        await asyncio.sleep(0.005)
    return time.monotonic()


async def restarted_after_a_cut() -> dict[str, Any]:
    """Inside the namespace: a kernel launched by a provisioner that reports another local
    process's pid as its own, its heart's packets dropped once it has beaten."""
    told: list[tuple[float, Death]] = []
    restarts: list[float] = []
    km = HeartbeatKernelManager(kernel_name="python3", time_to_dead=TTD, first_beat=FIRST_BEAT)
    km.add_death_callback(lambda death: told.append((time.monotonic(), death)))
    await km.start_kernel()
    km.add_restart_callback(lambda: restarts.append(time.monotonic()), "restart")
    try:
        process = km.provisioner.process  # type: ignore[union-attr]  # the Popen it launched
        # Known to be ipykernel (its heart answers while it is busy): its silence is a death.
        known = lambda: km.heart_has_beaten and km.heart_kind == "threaded"  # noqa: E731
        await until(known, 60, "the heart never answered, or its kind was not learned")
        lossy_net.lose(km.hb_port, 100)
        cut = time.monotonic()
        killed = await until(lambda: process.poll() is not None, 30, "not killed")
        await until(lambda: told and restarts, 30, "not told and restarted")
        [(at, death)] = told
        return {
            "kind": death.cause.kind,
            "killed": killed - cut,
            "told": at - cut,
            "restarted": restarts[0] - cut,
            "dropped_packets": lossy_net.dropped(),
        }
    finally:
        await km.shutdown_kernel(now=True)


def inside(out: Path) -> None:
    with stranger() as pid:
        StrangersPid.stranger = pid

        def create(kernel_id: str, kernel_spec: Any, parent: Any) -> StrangersPid:
            return StrangersPid(kernel_id=kernel_id, kernel_spec=kernel_spec, parent=parent)

        # Every kernel manager's provisioner, in this process made for the test alone.
        KernelProvisionerFactory.instance().create_provisioner_instance = create  # type: ignore[method-assign]
        out.write_text(json.dumps(asyncio.run(restarted_after_a_cut())))


def test_a_remote_kernel_cut_off_is_killed_at_once_and_told_dead_before_its_restart(
    tmp_path: Path,
) -> None:
    reason = lossy_net.namespace_unavailable() or lossy_net.nft_missing()
    if reason:
        pytest.skip(f"no network namespace with nftables here: {reason}")
    out = tmp_path / "seen.json"
    argv = [sys.executable, "-m", "tests.test_remote_restarts", str(out)]
    done = lossy_net.run_in_namespace(argv, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(out.read_text())
    print(seen)
    assert seen["kind"] == "remote-unreachable" and seen["dropped_packets"] > 0, seen
    # Killed as soon as its heart was dead; told once its port's probe had timed out, a second
    # later; restarted after that.
    assert seen["told"] - seen["killed"] >= 0.8 * PROBE_TIMEOUT, seen
    assert seen["killed"] < seen["told"] < seen["restarted"], seen


if __name__ == "__main__":
    inside(Path(sys.argv[1]))
