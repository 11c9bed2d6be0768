"""Pool members that watch the same heart: one leaving never cuts off the others.

libzmq's ``disconnect(url)`` ends every connection made to that url, so a pool that disconnected
each member as it left declared every other member of that url dead (a kernel manager and its
kernel spec's provisioner watch the same heart through the shared pool).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import pytest

from heartbeat import Dead, Heart, HeartbeatPool
from tests.test_monitor import Watch
from tests.test_pool import pooled


def orders(n: int) -> list[tuple[str, ...]]:
    """Every order in which ``n`` members can join and leave (each joins before it leaves),
    as steps "+i" and "-i"; members join in the order 0, 1, ... (they are alike)."""
    found = []
    every = [*(f"+{i}" for i in range(n)), *(f"-{i}" for i in range(n))]
    for steps in itertools.permutations(every):
        joined = [int(s[1:]) for s in steps if s[0] == "+"]
        if joined != sorted(joined):
            continue
        if all(steps.index(f"+{i}") < steps.index(f"-{i}") for i in range(n)):
            found.append(steps)
    return found


async def beats_on(watch: Watch, more: int = 3) -> bool:
    """Whether ``watch`` counts ``more`` new replies (its connection still carries them)."""
    seen = len(watch.beats())
    return await watch.until(lambda: len(watch.beats()) >= seen + more, timeout=10)


def run_order(url: str, steps: tuple[str, ...], **kwargs: Any) -> list[Watch]:
    async def scenario() -> list[Watch]:
        pool = HeartbeatPool()
        watches: dict[int, Watch] = {}
        for step in steps:
            i = int(step[1:])
            if step[0] == "+":
                watches[i] = pooled(pool, url, time_to_dead=0.6, first_beat=0.0, interval=0.05)
                watches[i].start()
            else:
                watches[i].monitor.stop()
            for j, watch in watches.items():
                if watch.monitor.running:
                    assert await beats_on(watch), f"after {steps[: steps.index(step) + 1]}: {j}"
        assert len(pool) == 0 and pool.sockets == 0
        return list(watches.values())

    return asyncio.run(scenario())


ORDERS = [*orders(2), *(s for s in orders(3) if s[:3] == ("+0", "+1", "+2"))]


@pytest.mark.parametrize("steps", ORDERS, ids=[" ".join(s) for s in ORDERS])
def test_members_of_one_url_join_and_leave_in_any_order_and_the_others_keep_beating(
    steps: tuple[str, ...],
) -> None:
    with Heart() as heart:
        watches = run_order(heart.url, steps)
    assert all(w.died == [] and w.of(Dead) == [] for w in watches)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_a_member_that_comes_and_goes_beside_another_reuses_one_connection() -> None:
    # Leaving without disconnecting must not leave a connection behind for every restart.
    with Heart() as heart:

        async def scenario() -> tuple[int, int, Watch]:
            pool = HeartbeatPool()
            stays = pooled(pool, heart.url, time_to_dead=0.6, first_beat=0.0, interval=0.05)
            stays.start()
            comes = pooled(pool, heart.url, time_to_dead=0.6, first_beat=0.0, interval=0.05)
            comes.start()
            assert await beats_on(comes) and await beats_on(stays)
            before = open_fds()
            for _ in range(20):
                comes.monitor.stop()
                comes.monitor.start()
                assert await beats_on(comes, more=1)
            after = open_fds()
            assert await beats_on(stays)
            comes.monitor.stop()
            stays.monitor.stop()
            return before, after, stays

        before, after, stays = asyncio.run(scenario())
    assert after - before <= 2, f"{after - before} more descriptors after 20 restarts"
    assert stays.died == []
