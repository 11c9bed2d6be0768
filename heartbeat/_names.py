"""Host names, as rules about time: how long what a name resolved to is trusted, and when a
watcher of a name looks again at where its heart is. Pure: times in, decisions out (tested on a
fake clock in tests/test_names.py); the lookups, off the loop, are heartbeat/_resolve.py's.

zmq is never handed a name: libzmq resolves one with a blocking ``getaddrinfo`` in its I/O
thread, again on every reconnection attempt, and every socket of the context shares that thread,
so one name that is slow to fail stalls every monitor and pool of the process into false deaths.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A lookup that has not answered within this many seconds has failed (the blocking call cannot
#: be interrupted: its thread is left to finish, and no second one is started for the name
#: meanwhile).
LOOKUP_TIMEOUT = 5.0
#: What a name resolved to is reused this long by every watcher that asks for it.
FRESH_FOR = 30.0
#: A name that failed is asked again after this many seconds, twice as long after each failure
#: in a row, up to ``RETRY_MAX``.
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
#: A watcher whose heart answers looks again at where it is this often at least (seconds), and
#: no more often than once a ``time_to_dead``.
RECHECK_MIN = 1.0
#: A watcher that found no address accepting (its kernel not up yet) looks again after
#: ``RETRY_FIRST``, doubling, up to this many seconds: a kernel that binds late is found soon.
UNACCEPTED_MAX = 2.0
#: Names remembered at most; past it, the expired ones are forgotten.
_MAX_ENTRIES = 4096


@dataclass(frozen=True)
class Answer:
    """What a name resolved to: its addresses, both families, in the resolver's order of
    preference (RFC 6724); none, and why, when it failed. Trusted until ``until``."""

    addresses: tuple[str, ...]
    error: str | None
    until: float


@dataclass
class _Entry:
    answer: Answer
    failures: int


def retry_after(failures: int) -> float:
    """Seconds before a name that failed ``failures`` times in a row is asked again."""
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, min(failures - 1, 30))))


class NameCache:
    """What each name resolved to, and how long that is trusted: addresses for ``FRESH_FOR``
    seconds, a failure for ``retry_after`` its run of failures (so a name whose DNS is down is
    asked once in a while, whoever watches it, not at every reconnection)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def known(self, host: str, now: float) -> Answer | None:
        """The answer for ``host`` still trusted at ``now``; None: ask again."""
        entry = self._entries.get(host)
        if entry is None or now >= entry.answer.until:
            return None
        return entry.answer

    def answered(
        self, host: str, now: float, addresses: tuple[str, ...], error: str | None = None
    ) -> Answer:
        """Record what a lookup of ``host`` found at ``now`` (no addresses: it failed)."""
        entry = self._entries.get(host)
        failures = 0 if addresses else (1 if entry is None else entry.failures + 1)
        until = now + (FRESH_FOR if addresses else retry_after(failures))
        answer = Answer(addresses, None if addresses else (error or "no address"), until)
        if entry is None and len(self._entries) >= _MAX_ENTRIES:
            self._entries = {h: e for h, e in self._entries.items() if now < e.answer.until}
        self._entries[host] = _Entry(answer, failures)
        return answer


class Recheck:
    """When one watcher of a name looks again at where its heart is (a lookup, through the
    cache, and a new choice among the addresses).

    After its connection is made it looks again once a period (``time_to_dead``, at least
    ``RECHECK_MIN``) in which nothing answered: the heart may have moved, or listen on another
    of the name's addresses now. A period with replies changes nothing.
    """

    def __init__(self, time_to_dead: float) -> None:
        self.period = max(RECHECK_MIN, time_to_dead)
        self._unaccepted = 0

    def failed(self, answer: Answer) -> float:
        """The lookup failed: when to ask again (once the cache no longer trusts the failure)."""
        return answer.until

    def connected(self, now: float, accepted: bool) -> float:
        """Connected at ``now`` to the address chosen; ``accepted``: it took a connection (or
        it was the only one). When to look at it next."""
        if accepted:
            self._unaccepted = 0
            return now + self.period
        # Nothing listens yet on any address: the kernel may bind late, on any of them.
        self._unaccepted += 1
        return now + min(self.period, UNACCEPTED_MAX, retry_after(self._unaccepted))

    def due(self, now: float, heard: bool) -> float | None:
        """The time to look has come; ``heard``: a reply arrived since the last look. When to
        look next, or None: look again now."""
        if heard:
            self._unaccepted = 0
            return now + self.period
        return None
