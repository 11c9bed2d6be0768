"""Host names resolved off the loop, so that zmq is only ever handed addresses.

One rule everywhere (a lone monitor, a pool, ``ping()``): a name is resolved with
``getaddrinfo`` for every address it has, both families, in a thread of its own, within
``LOOKUP_TIMEOUT``; answers (and failures, briefly) are shared by every watcher of the name
(heartbeat/_names.py says how long). When a name has several addresses (``localhost``: ``::1``
and ``127.0.0.1``), the one the heart is reached at is chosen by a TCP connect to each, off the
loop: the first, in the resolver's order, that accepts; if none does (the kernel is not up
yet), the first, looked at again soon. Not by connecting zmq to all of them: a pool's ROUTER
names each connection by the routing id given at ``connect()``, which libzmq forgets for a
connection made under ``ZMQ_IMMEDIATE`` (the only way to keep pings off the connection that is
refused), and without it pings would go half to the address that refuses them.

A url whose host is an address is connected at once, as it always was: nothing here runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tornado.ioloop import IOLoop

from heartbeat import _names
from heartbeat._names import Answer, NameCache, Recheck
from heartbeat._validate import Endpoint

#: How long a TCP connect to each of a name's addresses may take when choosing among them.
PICK_TIMEOUT = 1.0

_lock = threading.Lock()
_cache = NameCache()
# Names being looked up now, with who waits for the answer; their threads, kept until the
# blocking call returns, so that a name that hangs has one thread at most.
_asking: dict[str, list[Callable[[Answer], None]]] = {}
_threads: dict[str, tuple[threading.Thread, list[tuple[str, ...] | str]]] = {}


def _forget_lookups_in_child() -> None:
    """A forked child has none of its parent's threads: nobody would answer who waits."""
    global _lock
    _lock = threading.Lock()
    _asking.clear()
    _threads.clear()


os.register_at_fork(after_in_child=_forget_lookups_in_child)


def url_of(address: str, port: int) -> str:
    """The zmq url of ``address`` (an IP literal) and ``port``."""
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


def lookup(host: str, deliver: Callable[[Answer], None]) -> None:
    """Have ``deliver`` called with what ``host`` resolves to: at once if known, else from the
    thread of its lookup (one at a time a name, whoever asks)."""
    with _lock:
        answer = _cache.known(host, time.monotonic())
        if answer is None:
            waiting = _asking.get(host)
            if waiting is not None:
                waiting.append(deliver)
                return
            _asking[host] = [deliver]
    if answer is not None:
        deliver(answer)
        return
    threading.Thread(
        target=_look_up, args=(host,), name=f"heartbeat-resolve {host}", daemon=True
    ).start()


def _getaddrinfo(host: str, result: list[tuple[str, ...] | str]) -> None:
    """Every address ``host`` has, both families, into ``result`` (or why it has none)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        result.append(str(exc) or type(exc).__name__)
        return
    addresses: dict[str, None] = {}  # in order, once each
    for family, _, _, _, sockaddr in infos:
        if family == socket.AF_INET:
            addresses[str(sockaddr[0])] = None
        elif family == socket.AF_INET6:
            address = str(sockaddr[0]).split("%")[0]
            scope = sockaddr[3] if len(sockaddr) > 3 else 0  # a link-local address's interface
            addresses[f"{address}%{scope}" if scope else address] = None
    result.append(tuple(addresses) if addresses else "no address of either family")


def _look_up(host: str) -> None:
    with _lock:
        running = _threads.get(host)
        if running is None or not running[0].is_alive():
            # getaddrinfo cannot be interrupted: it runs in a thread of its own, waited for
            # within the timeout; one still running from an earlier lookup is waited for again.
            result: list[tuple[str, ...] | str] = []
            worker = threading.Thread(
                target=_getaddrinfo,
                args=(host, result),
                name=f"heartbeat-getaddrinfo {host}",
                daemon=True,
            )
            running = _threads[host] = (worker, result)
            worker.start()
    worker, result = running
    worker.join(_names.LOOKUP_TIMEOUT)
    addresses: tuple[str, ...] = ()
    error = f"no answer within {_names.LOOKUP_TIMEOUT:g} s"
    if result:
        found = result[0]
        addresses, error = (found, "") if isinstance(found, tuple) else ((), found)
    with _lock:
        if result and _threads.get(host) is running:
            del _threads[host]
        answer = _cache.answered(host, time.monotonic(), addresses, error)
        waiting = _asking.pop(host, [])
    for deliver in waiting:
        deliver(answer)


def pick(addresses: tuple[str, ...], port: int, timeout: float) -> tuple[str, bool]:
    """The address a heart at ``port`` is reached at, and whether it took a TCP connection:
    the first in order that accepts one within ``timeout``, else the first. Blocking (a
    thread's, or the probe's). Nothing is sent: the connections are closed at once."""
    if len(addresses) == 1:
        return addresses[0], True
    # Each address's connect, begun together; its errno once known (None: not yet).
    socks: dict[int, socket.socket] = {}
    said: list[int | None] = []
    try:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:  # EMFILE, EAFNOSUPPORT (no IPv6 here)
                said.append(exc.errno or errno.EAFNOSUPPORT)
                continue
            socks[len(said)] = sock
            sock.setblocking(False)
            where = socket.getaddrinfo(address, port, family, socket.SOCK_STREAM)[0][4]
            begun = sock.connect_ex(where)
            said.append(None if begun in (errno.EINPROGRESS, errno.EWOULDBLOCK) else begun)
        end = time.monotonic() + timeout
        while True:
            for i, answer in enumerate(said):
                if answer is None:
                    break  # an address before any that accepted has not answered yet
                if answer == 0:
                    return addresses[i], True
            left = end - time.monotonic()
            if None not in said or left <= 0:
                break
            poller = select.poll()
            waiting = {socks[i].fileno(): i for i, answer in enumerate(said) if answer is None}
            for fd in waiting:
                poller.register(fd, select.POLLOUT)
            for fd, _ in poller.poll(min(left, 60.0) * 1000):  # poll takes a C int of ms
                i = waiting[fd]
                said[i] = socks[i].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        for i, answer in enumerate(said):
            if answer == 0:
                return addresses[i], True
        return addresses[0], False
    finally:
        for sock in socks.values():
            sock.close()


def resolve_now(where: Endpoint, timeout: float) -> str | None:
    """The url to reach the heart at ``where`` by, found within ``timeout`` seconds (blocking:
    for ``ping()``); None if its name did not resolve in time."""
    assert where.port is not None
    end = time.monotonic() + timeout
    answers: list[Answer] = []
    done = threading.Event()

    def deliver(answer: Answer) -> None:
        answers.append(answer)
        done.set()

    lookup(where.host, deliver)
    # threading's waits take at most TIMEOUT_MAX: a huge timeout is a long wait, no error.
    left = min(max(0.0, end - time.monotonic()), threading.TIMEOUT_MAX)
    if not done.wait(left) or not answers[0].addresses:
        return None
    address, _ = pick(answers[0].addresses, where.port, max(0.0, end - time.monotonic()))
    return url_of(address, where.port)


def _post(loop: IOLoop, callback: Callable[..., object], *args: Any) -> None:
    """Run ``callback(*args)`` on ``loop``, from any thread; nothing if the loop is closed."""
    with contextlib.suppress(RuntimeError):  # the loop was closed: nobody waits any more
        loop.add_callback(callback, *args)


class Target:
    """Where one watcher of a host name connects: an address of the name, found off the loop
    and looked at again as :class:`~heartbeat._names.Recheck` says. ``connect(url)`` is called
    on the loop with each new url to reach the heart at (the transport moves its connections
    there). Until the first, pings go nowhere and the Judge sees a silent heart.

    The transport sets :attr:`heard` when a reply arrives.
    """

    def __init__(
        self,
        where: Endpoint,
        time_to_dead: float,
        loop: IOLoop,
        connect: Callable[[str], None],
    ) -> None:
        assert where.port is not None
        self.heard = False
        self.url: str | None = None
        self._host = where.host
        self._port = where.port
        self._loop = loop
        self._connect = connect
        self._recheck = Recheck(time_to_dead)
        self._timer: object | None = None
        self._closed = False
        self._look()

    def close(self) -> None:
        """No more lookups or connects. Idempotent."""
        self._closed = True
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
            self._timer = None

    def _look(self) -> None:
        lookup(self._host, lambda answer: _post(self._loop, self._answered, answer))

    def _answered(self, answer: Answer) -> None:
        if self._closed:
            return
        if not answer.addresses:
            self._wake_at(self._recheck.failed(answer))
            return
        addresses = answer.addresses
        if len(addresses) == 1:
            self._use(addresses[0], True)
            return
        # Off the loop: a connect to a remote address may take PICK_TIMEOUT. A thread of its
        # own, gone once it has answered (no pool of threads is left behind).
        threading.Thread(
            target=self._pick, args=(addresses,), name=f"heartbeat-pick {self._host}", daemon=True
        ).start()

    def _pick(self, addresses: tuple[str, ...]) -> None:
        try:
            found = pick(addresses, self._port, PICK_TIMEOUT)
        except OSError:  # out of file descriptors, say: the first, looked at again soon
            found = (addresses[0], False)
        _post(self._loop, self._use, *found)

    def _use(self, address: str, accepted: bool) -> None:
        if self._closed:
            return
        url = url_of(address, self._port)
        self.heard = False
        if url != self.url:
            self.url = url
            self._connect(url)
        self._wake_at(self._recheck.connected(time.monotonic(), accepted))

    def _wake_at(self, deadline: float) -> None:
        if self._timer is not None:
            self._loop.remove_timeout(self._timer)
        self._timer = self._loop.call_later(max(0.0, deadline - time.monotonic()), self._due)

    def _due(self) -> None:
        self._timer = None
        if self._closed:
            return
        heard, self.heard = self.heard, False
        deadline = self._recheck.due(time.monotonic(), heard)
        if deadline is None:
            self._look()
        else:
            self._wake_at(deadline)
