"""A kernel's memory against its limit, decided from plain data (sans-IO, as ``heartbeat._judge``).

Nothing here reads a file or a clock. The caller (``heartbeat.jupyter._memory_watch``) reads a
memory cgroup's usage and limit and a process's ``/proc`` text, and gives them here with the
time: :class:`MemorySchedule` says when to read them next and whether to warn or interrupt;
the other functions parse that text and put it into words.
"""

from __future__ import annotations

from dataclasses import dataclass

from heartbeat._evidence import memory_cgroup

# cgroup v1 writes the largest page-aligned 64-bit number for "no limit".
_NO_LIMIT = 1 << 62

_MIB = 1 << 20


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _text(what: str, text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    return text


def status_bytes(text: str, key: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``) in bytes; None when the
    text has no such line (a kernel thread, a zombie)."""
    for line in _text("status text", text).splitlines():
        name, _, value = line.partition(":")
        if name == key:
            number, _, unit = value.strip().partition(" ")
            if unit.strip() != "kB" or not number.isdigit():
                raise ValueError(f"not a size in kB for {key} in /proc/<pid>/status: {line!r}")
            return int(number) * 1024
    return None


def stat_session(text: str) -> int:
    """The session id in the text of ``/proc/<pid>/stat``."""
    head, paren, rest = _text("stat text", text).rpartition(")")
    fields = rest.split()
    # state, ppid, pgrp, session: after the command name, which is in parentheses.
    if not paren or "(" not in head or len(fields) < 4 or not fields[3].lstrip("-").isdigit():
        raise ValueError(f"not the text of /proc/<pid>/stat: {text[:80]!r}")
    return int(fields[3])


def usage(version: int, text: str) -> int:
    """A memory cgroup's usage in bytes: v1 ``memory.usage_in_bytes``, v2 ``memory.current``."""
    _version(version)
    value = _text("usage text", text).strip()
    if not value.isdigit():
        name = "memory.current" if version == 2 else "memory.usage_in_bytes"
        raise ValueError(f"not a usage in {name}: {text[:80]!r}")
    return int(value)


def working_set(version: int, usage: int, stat: str) -> int:
    """What of a cgroup's ``usage`` cannot simply be dropped: usage less its inactive file
    cache (``memory.stat``'s ``total_inactive_file`` in v1, ``inactive_file`` in v2), as the
    kubelet counts it. A cgroup that reads files fills its limit with cache, which is
    reclaimed before anything is killed: counted, it would warn of nothing."""
    _version(version)
    key = "total_inactive_file" if version == 1 else "inactive_file"
    for line in _text("memory.stat text", stat).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            if not value.strip().isdigit():
                raise ValueError(f"not a count for {key} in memory.stat: {line!r}")
            return max(usage - int(value), 0)
    raise ValueError(f"no {key!r} in memory.stat: {stat[:80]!r}")


def limit(version: int, text: str) -> int | None:
    """A memory cgroup's limit in bytes (None: no limit): v1 ``memory.limit_in_bytes``, v2
    ``memory.max`` (``max`` is none)."""
    _version(version)
    value = _text("limit text", text).strip()
    if version == 2 and value == "max":
        return None
    if not value.isdigit():
        name = "memory.max" if version == 2 else "memory.limit_in_bytes"
        raise ValueError(f"not a limit in {name}: {text[:80]!r}")
    number = int(value)
    return None if number >= _NO_LIMIT else number


def _version(version: object) -> None:
    if version not in (1, 2) or isinstance(version, bool):
        raise ValueError(f"cgroup version must be 1 or 2, not {version!r}")


def oom_group(text: str) -> bool:
    """Whether cgroup v2's ``memory.oom.group`` is on (``1``): one OOM kill ends every process
    of the cgroup."""
    value = _text("memory.oom.group text", text).strip()
    if value not in ("0", "1"):
        raise ValueError(f"not the text of memory.oom.group: {text[:80]!r}")
    return value == "1"


def oom_group_warning(path: str) -> str:
    """The start-up warning for a server whose own cgroup has ``memory.oom.group`` on."""
    return (
        f"kernel-heartbeat: this server's memory cgroup ({path}) has memory.oom.group=1: one "
        "out-of-memory kill of a kernel ends every process of the cgroup, this server "
        "included, whatever the kernels' oom_score_adj. To keep the server alive, turn it off: "
        "in Kubernetes 1.32+, the kubelet's singleProcessOOMKill: true; or start kernels in "
        "child cgroups of their own where the cgroup is delegated (systemd's Delegate=yes)"
    )


def used(peak: int | None, limit: int | None, others: int | None, *, exact: bool = False) -> str:
    """How much an out-of-memory kernel used, in words, to follow its cause: "this kernel used
    at least 1.9 GiB at its peak; its cgroup's limit is 2.0 GiB, shared with 3 other
    processes". ``peak`` is, unless ``exact``, the most the kernel's processes were seen to use
    (``VmHWM``, read while it lived): its true peak, just before the kill, can only be higher;
    ``exact``: its own cgroup's peak, read at its death. Empty when nothing is known."""
    parts = []
    if peak is not None:
        parts.append(f"this kernel used {'' if exact else 'at least '}{_size(peak)} at its peak")
    if limit is not None:
        shared = ""
        if others:
            shared = f", shared with {others} other process{'es' if others != 1 else ''}"
        elif others == 0:
            shared = ", its own"
        parts.append(f"its cgroup's limit is {_size(limit)}{shared}")
    return "; ".join(parts)


def _cgroup(sharers: int) -> str:
    if not sharers:
        return "this kernel's memory cgroup"
    return (
        f"this kernel's memory cgroup, shared with {sharers} other "
        f"kernel{'s' if sharers != 1 else ''},"
    )


def _own(own: int | None, sharers: int, largest: bool = False) -> str:
    if not sharers or own is None:
        return ""
    return f"; this kernel uses {_size(own)} of it{', the most of them' if largest else ''}"


@dataclass(frozen=True)
class Warn:
    """Usage passed the warning fraction of the limit. ``sharers``: how many other kernels
    watched here share the cgroup; ``own``: how much this one uses (its processes' resident
    memory and swap), said when it shares it."""

    usage: int
    limit: int
    own: int | None = None
    sharers: int = 0

    def words(self) -> str:
        """The notice: "this kernel's cgroup uses 1.8 GiB of its 2.0 GiB limit; ...", and
        with kernels that share it "...; this kernel uses 1.2 GiB of it; ..."."""
        return (
            f"{_cgroup(self.sharers)} uses {_size(self.usage)} of its {_size(self.limit)} "
            f"limit{_own(self.own, self.sharers)}; at the limit the largest kernel is killed by "
            "the out-of-memory killer"
        )


@dataclass(frozen=True)
class Interrupt:
    """Usage passed the interrupt fraction of the limit: interrupt the running cell (of the
    largest kernel, where several share the cgroup: ``sharers``, ``own`` as :class:`Warn`)."""

    usage: int
    limit: int
    own: int | None = None
    sharers: int = 0

    def words(self) -> str:
        """The notice: why the cell was interrupted."""
        return (
            f"interrupted: {_cgroup(self.sharers)} uses {_size(self.usage)} of its "
            f"{_size(self.limit)} limit (memory_interrupt){_own(self.own, self.sharers, True)}; "
            "interrupted before the out-of-memory killer would kill the kernel"
        )


#: Seconds within which where a kernel is (its memory cgroup) is not looked at again at its
#: cgroup's readings: near its limit those come many times a second, and a move is rare.
WHERE_EVERY = 1.0


def where_due(now: float, last: float | None) -> bool:
    """Whether where a kernel is (``/proc/<pid>/cgroup``) is looked at again at a reading at
    ``now``, last looked at at ``last`` (None: never)."""
    return last is None or now - last >= WHERE_EVERY


def moved(before: str | None, now: str | None) -> bool:
    """Whether a process whose ``/proc/<pid>/cgroup`` read ``before`` (None: unreadable) is in
    another memory cgroup now, when it reads ``now`` (None: unreadable, it has exited: no
    move to follow). A move in another controller's hierarchy alone is none."""
    if now is None or now == before:
        return False
    try:
        after = memory_cgroup(now)
    except ValueError:
        return False  # not a cgroup file's text (a read torn by the move): looked at again
    if before is None:
        return after is not None
    try:
        return memory_cgroup(before) != after
    except ValueError:
        return after is not None


class MemorySchedule:
    """When to read a cgroup's usage next, and when to warn or interrupt (times in, events out).

    Each reading (``sample(now, usage, limit)``) returns the events it causes and the time of
    the next reading: soon enough that usage growing at the fastest rate seen (at least
    ``assumed_rate`` bytes a second) cannot pass the next threshold (the warning, the
    interrupt, the limit) before it, by a margin: ``margin`` of the time it would take, never
    sooner than ``fastest`` nor later than ``slowest`` seconds. An idle kernel far below its
    limit is read every ``slowest`` seconds; one growing by tens of MiB a second near its limit
    many times a second. Past every threshold but the limit, a reading is only for the peak
    before a kill: at most every ``peak_every`` seconds.

    One warning and one interrupt an episode: each is armed again once usage has fallen back
    below ``rearm`` of its threshold (the memory freed, the kernel restarted), or at
    :meth:`rearm_now` (a new cell; see there for the interrupt).
    """

    def __init__(
        self,
        *,
        warning: float | None = 0.9,
        interrupt: float | None = None,
        assumed_rate: float = 100 * _MIB,
        margin: float = 0.5,
        fastest: float = 0.05,
        slowest: float = 5.0,
        rearm: float = 0.9,
        peak_every: float = 0.25,
    ) -> None:
        for name, value in (("warning", warning), ("interrupt", interrupt)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1
            ):
                raise ValueError(f"{name} must be a fraction in (0, 1] or None, not {value!r}")
        for name, value in (
            ("assumed_rate", assumed_rate),
            ("margin", margin),
            ("fastest", fastest),
            ("slowest", slowest),
            ("rearm", rearm),
            ("peak_every", peak_every),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, not {value!r}")
        if fastest > slowest:
            raise ValueError(f"fastest ({fastest!r}) must not exceed slowest ({slowest!r})")
        self.warning = warning
        self.interrupt = interrupt
        self.assumed_rate = float(assumed_rate)
        self.margin = float(margin)
        self.fastest = float(fastest)
        self.slowest = float(slowest)
        self.rearm = float(rearm)
        self.peak_every = float(peak_every)
        self._last: tuple[float, int] | None = None
        self._rate = 0.0  # the fastest growth seen lately, bytes a second (decays)
        self._warned = False
        self._interrupted = False
        self._interrupt_floor = 0.0  # raised by a new cell after an interrupt (rearm_now)
        self._last_limit = 0

    def rearm_now(self) -> None:
        """A new cell runs: warn again at the next reading past the warning. Interrupt it only
        if it grows halfway from where the last interrupt left usage to the limit: memory kept
        by the interrupted cell (its variables) must not interrupt every cell after it."""
        self._warned = False
        if self._interrupted and self._last is not None:
            self._interrupted = False
            self._interrupt_floor = self._last[1] + (self._last_limit - self._last[1]) / 2

    def spare(self) -> None:
        """The interrupt of the last reading was not given (another kernel that shares the
        cgroup is larger: the out-of-memory killer's choice, interrupted instead): it is due
        again at the next reading past the interrupt, should this kernel become the largest."""
        self._interrupted = False

    def sample(
        self, now: float, usage: int, limit: int | None
    ) -> tuple[list[Warn | Interrupt], float]:
        """One reading at ``now`` (seconds): the events it causes, and when to read next."""
        if not isinstance(usage, int) or isinstance(usage, bool) or usage < 0:
            raise ValueError(f"usage must be an int >= 0, not {usage!r}")
        if limit is not None and (not isinstance(limit, int) or limit <= 0):
            raise ValueError(f"limit must be an int > 0 or None, not {limit!r}")
        last, self._last = self._last, (now, usage)
        if last is not None and now > last[0]:
            rate = (usage - last[1]) / (now - last[0])
            # The fastest growth lately: kept while it lasts, halved a reading when it slows
            # (a cell that pauses between allocations is still that fast).
            self._rate = max(rate, self._rate / 2)
        if limit is None:
            return [], now + self.slowest
        events: list[Warn | Interrupt] = []
        if self.warning is not None:
            level = self.warning * limit
            if usage >= level and not self._warned:
                self._warned = True
                events.append(Warn(usage, limit))
            elif usage < self.rearm * level:
                self._warned = False
        self._last_limit = limit
        if self.interrupt is not None:
            level = max(self.interrupt * limit, self._interrupt_floor)
            if usage >= level and not self._interrupted:
                self._interrupted = True
                events.append(Interrupt(usage, limit))
            elif usage < self.rearm * self.interrupt * limit:
                self._interrupted = False
                self._interrupt_floor = 0.0
        # The next threshold above usage (the warning, the interrupt), read for soon enough;
        # past them, readings are only for the peak before a kill: a kernel sitting just below
        # its limit is not read many times a second.
        levels = [] if self.warning is None else [self.warning * limit]
        if self.interrupt is not None:
            levels.append(max(self.interrupt * limit, self._interrupt_floor))
        pending = [level for level in levels if level > usage]
        if pending:
            target, soonest = min(pending), self.fastest
        else:
            target, soonest = float(limit), max(self.fastest, self.peak_every)
        rate = max(self._rate, self.assumed_rate)
        wait = self.margin * max(target - usage, 0.0) / rate
        return events, now + min(max(wait, soonest), self.slowest)
