"""What the cause of a death is decided from, read from the system: ``/proc``, the memory
cgroup's files, a connect to a remote heart's port (on the event loop). Each reader returns
None (or says "unreachable") where it cannot tell; the deciding is in :mod:`heartbeat._cause`
(the kernel log's victims: :mod:`heartbeat.jupyter._kmsg`)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heartbeat import _cause as cause
from heartbeat import _evidence, _validate

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryCgroup:
    """Where a process's memory cgroup's files are: cgroup ``version`` 1 or 2, in ``path``."""

    version: int
    path: Path

    def read(self, *, limit: bool = True) -> cause.Memory | None:
        """Its counters now; None when its files cannot be read (gone, or not these). Without
        ``limit``, its limit is not read (None in what is returned)."""
        names = (
            ("memory.events", "memory.max")
            if self.version == 2
            else ("memory.oom_control", "memory.limit_in_bytes")
        )
        try:
            events = self._events(names[0])
            if not limit:
                return cause.Memory(_evidence.oom_kills(self.version, events), None)
            return cause.memory(self.version, events, (self.path / names[1]).read_text())
        except (OSError, ValueError):
            return None

    def _events(self, name: str) -> str:
        if self.version == 2:
            # Its own processes' kills (Linux 5.2+): memory.events counts those of the cgroups
            # below it too, whose processes cgroup.procs does not list.
            try:
                return (self.path / "memory.events.local").read_text()
            except FileNotFoundError:
                pass
        return (self.path / name).read_text()

    def procs(self) -> frozenset[int] | None:
        """The processes in it now (``cgroup.procs``: in it, not in those below it); None when
        that cannot be read."""
        try:
            return _evidence.pids((self.path / "cgroup.procs").read_text())
        except (OSError, ValueError):
            return None


def read_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, T, Z...); None: not Linux, or gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return cause.stat_state(stat.read())
    except (OSError, ValueError):
        return None


def read_stat(pid: int) -> _evidence.ProcessStat | None:
    """What ``/proc/<pid>/stat`` says of process ``pid`` (state, and whether it is dying);
    None: not Linux, or gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return _evidence.process_stat(stat.read())
    except (OSError, ValueError):
        return None


def descendants(pid: int, limit: int = 64) -> frozenset[int]:
    """The processes under ``pid`` (children, theirs...), at most ``limit`` of them, as the
    children files of their main threads list them (Linux 3.5+, ``CONFIG_PROC_CHILDREN``);
    empty where they cannot be read. A process started from another of its threads is missed:
    a wrapper (a shell, ``conda run``) runs its kernel from its main thread."""
    found: set[int] = set()
    todo = [pid]
    while todo and len(found) < limit:
        parent = todo.pop()
        try:
            text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
            below = _evidence.pids(text) - found - {pid}
        except (OSError, ValueError):
            continue
        found |= below
        todo.extend(below)
    return frozenset(found)


def memory_cgroup_text(pid: int) -> str | None:
    """The text of ``/proc/<pid>/cgroup`` (where process ``pid`` is now); None: gone, or no
    cgroups here."""
    # os's calls, not pathlib's: the memory watch reads it at each reading of every kernel.
    try:
        fd = os.open(f"/proc/{pid}/cgroup", os.O_RDONLY)
        try:
            data = os.read(fd, 1 << 16)  # a few lines: read whole at once
        finally:
            os.close(fd)
    except OSError:
        return None
    return data.decode(errors="replace")


def memory_cgroup_of(pid: int, root: Path = CGROUP_ROOT) -> MemoryCgroup | None:
    """The memory cgroup of a live process ``pid`` (an exited one has left its cgroup: ask
    while it lives); None where there is none to read."""
    text = memory_cgroup_text(pid)
    return None if text is None else memory_cgroup_in(text, root)


def memory_cgroup_in(text: str, root: Path = CGROUP_ROOT) -> MemoryCgroup | None:
    """The memory cgroup that the text of ``/proc/<pid>/cgroup`` names, its files found under
    ``root``; None where there is none to read."""
    try:
        found = cause.memory_cgroup(text)
    except ValueError:
        return None
    if found is None:
        return None
    version, path = found
    relative = path.lstrip("/")
    if version == 1:
        candidates = [root / "memory" / relative]
    else:
        # Unified alone, or beside v1 hierarchies ("hybrid": under unified/).
        candidates = [root / relative, root / "unified" / relative]
    for candidate in candidates:
        group = MemoryCgroup(version, candidate)
        if group.read() is not None:
            return group
    return None


#: How long a probe of a dead heart's port waits for its connect: a round trip to anywhere, and
#: the bound on how long a death line waits for it. A SYN lost on the way is sent again only
#: after a second (Linux's initial retransmission timeout): over a lossy link, a heart that
#: would have answered a second SYN reads as unreachable.
PROBE_TIMEOUT = 1.0


def probe_heart(
    url: str, timeout: float = PROBE_TIMEOUT
) -> asyncio.Future[cause.Connection | None]:
    """What a connect to the port of the heart at ``url`` says, on the running event loop
    (which it never blocks), as a future: REFUSED (nothing listens there), SILENT (it
    connected: something listens, yet the heart did not answer) or UNREACHABLE (no route, a
    name that does not resolve, or no answer within ``timeout`` seconds, name resolution
    included). None for an ``inproc://`` url (no port to probe), or where no socket could be
    had to probe it with.

    The connect to an address (``tcp://10.0.0.7:5555``, ``tcp://[::1]:5555``) or an ipc socket
    is begun before this returns, so that whatever is done to the kernel next (a kill that
    would close its port) comes after it; a host name is resolved off the loop first, each of
    its addresses then tried in turn. Nothing is sent: a heart secured by CURVE accepts a TCP
    connection as any other does. ``ipc://path`` is a connect to that Unix socket (``@name``:
    the abstract one zmq means), where a file that is gone is refused too: nothing listens.
    """
    where = _validate.endpoint(url, bind=False)
    timeout = _validate.number("timeout", timeout)
    loop = asyncio.get_running_loop()
    first = None
    if where.transport != "inproc":
        target = _address(where)
        first = None if target is None else _Connect(*target)
    return asyncio.ensure_future(_answer(loop, where, first, timeout))


def _address(where: _validate.Endpoint) -> tuple[int, Any] | None:
    """The socket family and address of a heart's endpoint; None for a host name."""
    if where.transport == "ipc":
        path = where.host
        return socket.AF_UNIX, "\0" + path[1:] if path.startswith("@") else path
    host = where.host.strip("[]")
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return None
    return (socket.AF_INET6 if version == 6 else socket.AF_INET), (host, where.port)


class _Connect:
    """One non-blocking connect, begun when made."""

    def __init__(self, family: int, address: Any) -> None:
        self.unix = family == socket.AF_UNIX
        self.sock: socket.socket | None = None
        self.error: int | None = None  # connect()'s errno: 0, EINPROGRESS, ECONNREFUSED...
        try:
            self.sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # EMFILE, EAFNOSUPPORT (no IPv6 here): no probe to be had
            return
        self.sock.setblocking(False)
        self.error = self.sock.connect_ex(address)

    async def answer(self, loop: asyncio.AbstractEventLoop) -> cause.Connection | None:
        sock = self.sock
        if sock is None:
            return None
        if self.error in (errno.EINPROGRESS, errno.EWOULDBLOCK) and not self.unix:
            ready: asyncio.Future[None] = loop.create_future()

            def writable() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_writer(sock, writable)
            try:
                await ready
            finally:
                loop.remove_writer(sock)
            self.error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return _said(self.error, unix=self.unix)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _said(error: int | None, *, unix: bool) -> cause.Connection:
    if error == 0 or error == errno.ECONNRESET:
        # Connected; reset: it connected, then was reset before the loop saw it (its process
        # killed just after the connect began, through its provisioner, say).
        return cause.Connection.SILENT
    if unix and error == errno.EAGAIN:
        return cause.Connection.SILENT  # something listens, its backlog full: not accepting
    if error in (errno.ECONNREFUSED, errno.ENOENT):
        return cause.Connection.REFUSED
    # EHOSTUNREACH, ENETUNREACH, ETIMEDOUT, EACCES (a firewall's prohibit)...
    return cause.Connection.UNREACHABLE


async def _answer(
    loop: asyncio.AbstractEventLoop,
    where: _validate.Endpoint,
    first: _Connect | None,
    timeout: float,
) -> cause.Connection | None:
    if where.transport == "inproc":
        return None
    try:
        return await asyncio.wait_for(_connect(loop, where, first), timeout)
    except asyncio.TimeoutError:
        return cause.Connection.UNREACHABLE
    finally:
        if first is not None:
            first.close()


async def _connect(
    loop: asyncio.AbstractEventLoop, where: _validate.Endpoint, first: _Connect | None
) -> cause.Connection | None:
    if first is not None:
        return await first.answer(loop)
    try:
        found = await loop.getaddrinfo(where.host, where.port, type=socket.SOCK_STREAM)
    except OSError:  # socket.gaierror: the name does not resolve
        return cause.Connection.UNREACHABLE
    answer: cause.Connection | None = None
    for family, _, _, _, address in found:
        attempt = _Connect(family, address)
        try:
            said = await attempt.answer(loop)
        finally:
            attempt.close()
        if said is cause.Connection.SILENT:
            return said
        if answer is not cause.Connection.REFUSED and said is not None:
            answer = said  # refused: a host answered, which says more than unreachable
    return answer


class HeartProbe:
    """The probe (:func:`probe_heart`) of one heart's port at its death, made once: at the first
    :meth:`start`, on the running loop, before anything is done to the kernel (a kill would
    close its port); its answer then in :attr:`connection`."""

    def __init__(self, url: str, timeout: float = PROBE_TIMEOUT) -> None:
        _validate.endpoint(url, bind=False)  # a bad url is an error now, not at the death
        self.url = url
        self.timeout = _validate.number("timeout", timeout)
        self._task: asyncio.Future[cause.Connection | None] | None = None

    def start(self) -> asyncio.Future[cause.Connection | None]:
        """Start the probe (the first call only: its connect is begun now); a future done once
        it has answered, within ``timeout`` seconds. It never raises: a probe that failed
        answers None."""
        if self._task is None:
            self._task = probe_heart(self.url, self.timeout)
        return self._task

    @property
    def connection(self) -> cause.Connection | None:
        """What the port said; None before the probe has answered, or where it could not."""
        task = self._task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()
