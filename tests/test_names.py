"""Host names as rules about time (heartbeat/_names.py), on a fake clock: how long a name's
addresses and failures are trusted, and when a watcher of a name looks again."""

from __future__ import annotations

import pytest

from heartbeat import _names
from heartbeat._names import NameCache, Recheck, retry_after
from heartbeat._validate import endpoint


@pytest.mark.parametrize(
    ("url", "is_name"),
    [
        ("tcp://localhost:5555", True),
        ("tcp://kernels.example:5555", True),
        ("tcp://127.0.0.1:5555", False),
        ("tcp://[::1]:5555", False),
        ("tcp://::1:5555", False),
        ("ipc:///tmp/hb", False),
        ("inproc://hb", False),
    ],
)
def test_a_name_is_a_tcp_host_that_is_not_an_address(url: str, is_name: bool) -> None:
    assert endpoint(url, bind=False).is_name is is_name


def test_a_names_addresses_are_trusted_for_a_while_then_asked_again() -> None:
    cache = NameCache()
    assert cache.known("h", 0.0) is None
    answer = cache.answered("h", 10.0, ("::1", "127.0.0.1"))
    assert answer.addresses == ("::1", "127.0.0.1") and answer.error is None
    assert cache.known("h", 10.0 + _names.FRESH_FOR - 0.01) is answer
    assert cache.known("h", 10.0 + _names.FRESH_FOR) is None
    assert cache.known("other", 11.0) is None


def test_a_failure_is_trusted_briefly_longer_after_each_failure_in_a_row() -> None:
    cache = NameCache()
    now = 0.0
    waits = []
    for _ in range(8):
        answer = cache.answered("h", now, (), "Temporary failure in name resolution")
        assert answer.addresses == () and answer.error == "Temporary failure in name resolution"
        assert cache.known("h", answer.until - 0.001) is answer
        assert cache.known("h", answer.until) is None
        waits.append(answer.until - now)
        now = answer.until
    assert waits[:3] == [_names.RETRY_FIRST, 2 * _names.RETRY_FIRST, 4 * _names.RETRY_FIRST]
    assert waits[-1] == _names.RETRY_MAX and waits == sorted(waits)
    # A success ends the run: the next failure waits the first wait again.
    cache.answered("h", now, ("10.0.0.7",))
    now += _names.FRESH_FOR
    assert cache.answered("h", now, ()).until == now + _names.RETRY_FIRST
    assert retry_after(10_000) == _names.RETRY_MAX


def test_the_cache_forgets_expired_names_past_its_size() -> None:
    cache = NameCache()
    for i in range(5000):
        cache.answered(f"h{i}", float(i), ("10.0.0.1",))
    assert len(cache._entries) < 5000
    assert cache.known("h4999", 4999.0) is not None


def test_a_watcher_whose_heart_answers_keeps_its_address() -> None:
    recheck = Recheck(time_to_dead=3.0)
    assert recheck.period == 3.0
    assert recheck.connected(100.0, accepted=True) == 103.0
    assert recheck.due(103.0, heard=True) == 106.0
    assert recheck.due(106.0, heard=True) == 109.0


def test_a_watcher_whose_heart_is_silent_for_a_period_looks_again() -> None:
    recheck = Recheck(time_to_dead=3.0)
    recheck.connected(100.0, accepted=True)
    assert recheck.due(103.0, heard=False) is None


def test_a_short_time_to_dead_is_not_looked_at_more_than_once_a_second() -> None:
    assert Recheck(time_to_dead=0.2).period == _names.RECHECK_MIN


def test_a_watcher_that_found_nothing_listening_looks_again_soon_and_less_often() -> None:
    recheck = Recheck(time_to_dead=30.0)
    now, waits = 0.0, []
    for _ in range(6):
        due = recheck.connected(now, accepted=False)
        waits.append(due - now)
        assert recheck.due(due, heard=False) is None
        now = due
    assert waits[0] == _names.RETRY_FIRST
    assert max(waits) == _names.UNACCEPTED_MAX and waits == sorted(waits)
    # Found at last: a whole period.
    assert recheck.connected(now, accepted=True) == now + 30.0
    # A silent heart on an address found accepting starts the short waits afresh.
    assert recheck.connected(now, accepted=False) == now + _names.RETRY_FIRST


def test_a_watcher_whose_lookup_failed_asks_once_the_failure_is_stale() -> None:
    cache = NameCache()
    answer = cache.answered("h", 5.0, (), "no such name")
    assert Recheck(3.0).failed(answer) == answer.until == 5.0 + _names.RETRY_FIRST
