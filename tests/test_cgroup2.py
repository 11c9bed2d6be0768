"""cgroup v2's own ways, for real: ``memory.oom.group``. Where this process can make cgroup v2
memory cgroups (on a machine whose memory controller is v1's, only in the VM of
``python -m tests.vm``); elsewhere skipped, saying so. The other memory tests run on either
version unchanged (``tests.cgroups``); ``tests.vm`` runs them on v2 too."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests import cgroups
from tests.cgroups import joiner
from tests.test_jupyter_server import serve
from tests.test_memory_server import LIMIT, grow_until_the_server_ends, wait_for
from tests.test_server_deaths import SETTINGS


def v2_or_skip() -> None:
    version, where = cgroups.available()
    if version != 2:
        pytest.skip(
            f"memory.oom.group is cgroup v2's; here the memory tests' cgroups are {where} "
            "(python -m tests.vm runs this test on cgroup v2, in a VM)"
        )


def test_a_server_in_a_memory_oom_group_is_warned_of_at_start_and_rightly(tmp_path: Path) -> None:
    # memory.oom.group=1 on the server's own cgroup (Kubernetes' containers' since 1.28): the
    # warning at its start, once; and it is true: the kernel's OOM kill takes the server too,
    # oom_score_adj or not (what test_memory_server shows the server surviving without it).
    v2_or_skip()
    with cgroups.memory_cgroup(LIMIT, kill_after=30) as group:
        (group / "memory.oom.group").write_text("1")
        with serve(tmp_path, *SETTINGS, extension=True, preexec_fn=joiner(group)) as server:
            said = server.log.read_text(errors="replace")
            assert said.count("memory.oom.group=1") == 1, said
            assert f"({group})" in said and "singleProcessOOMKill" in said, said
            kid = server.api("POST", "/api/kernels")["id"]

            asyncio.run(grow_until_the_server_ends(server, kid))
            wait_for(lambda: server.proc.poll() is not None, 120, "the server outlived the OOM")
            assert server.proc.returncode == -signal.SIGKILL
            events = (group / "memory.events").read_text()
        assert "oom_group_kill 1" in events.split("\n"), events
