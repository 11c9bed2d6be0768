"""Host names: resolved off the loop, to every address they have, the same way in a lone
monitor, a pool and ``ping()`` (heartbeat/_resolve.py; docs/beyond-one-machine.md).

Two worlds made for real, each in a subprocess: a resolver that takes 0.5-2 s to fail for one
name (an ``LD_PRELOAD`` shim around libc's ``getaddrinfo``, which libzmq calls too), and a hosts
file with names of both families (``unshare -m`` and a bind mount over ``/etc/hosts``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heartbeat import Heart, _resolve
from heartbeat._names import NameCache
from heartbeat._resolve import pick, url_of
from heartbeat._validate import endpoint

ROOT = Path(__file__).resolve().parent.parent

# getaddrinfo for the name in $HEARTBEAT_SLOW_NAME sleeps 0.5 to 2 s, then fails; any other
# name is resolved as usual.
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned calls;

/* How many lookups of the slow name were made: one at a time, shared, backing off. */
unsigned heartbeat_slow_calls(void) { return __atomic_load_n(&calls, __ATOMIC_RELAXED); }

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
    static int (*real)(const char *, const char *, const struct addrinfo *,
                       struct addrinfo **);
    const char *slow = getenv("HEARTBEAT_SLOW_NAME");
    if (node && slow && strcmp(node, slow) == 0) {
        unsigned n = __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
        usleep(500000 + (n * 377119u) % 1500000u);
        return EAI_AGAIN;
    }
    if (!real)
        real = dlsym(RTLD_NEXT, "getaddrinfo");
    return real(node, service, hints, res);
}
"""

# Watches the hearts at argv[1] (a JSON list of urls), lone and pooled, beside a lone and a
# pooled monitor of tcp://slowhost:5555 and two pings of it; prints what happened as JSON.
WATCH_BESIDE_A_SLOW_NAME = r"""
import asyncio, ctypes, json, sys, threading, time
from heartbeat import HeartMonitor, HeartbeatPool
from heartbeat.probe import ping

urls = json.loads(sys.argv[1])
watch_for = float(sys.argv[2])

async def main():
    pool = HeartbeatPool()
    start = time.monotonic()
    died = {}
    monitors = {}
    for where in ("lone", "pool"):
        extra = {} if where == "lone" else {"pool": pool}
        for i, url in enumerate(["tcp://slowhost:5555", *urls]):
            name = f"{where} slowhost" if i == 0 else f"{where} {i}"
            monitors[name] = HeartMonitor(url, time_to_dead=3.0, first_beat=1.0, **extra)
    for name, monitor in monitors.items():
        monitor.start(lambda name=name: died.setdefault(name, time.monotonic() - start))
    # The probe is bounded by its timeout, whatever the resolver does; a healthy heart is
    # pinged meanwhile, by its address.
    took, answers = {}, {}
    def probe(name, url, timeout):
        begun = time.monotonic()
        answers[name] = ping(url, timeout)
        took[name] = time.monotonic() - begun
    pings = [
        threading.Thread(target=probe, args=("slowhost", "tcp://slowhost:5555", 1.0)),
        threading.Thread(target=probe, args=("healthy", urls[0], 1.0)),
    ]
    for thread in pings:
        thread.start()
    await asyncio.sleep(watch_for)
    for thread in pings:
        thread.join()
    print(json.dumps({
        "died": died,
        "states": {name: m.state.value for name, m in monitors.items()},
        "beats": {name: m.stats.count for name, m in monitors.items()},
        "ping_took": took,
        "pinged": {name: answer is not None for name, answer in answers.items()},
        "lookups": ctypes.CDLL(None).heartbeat_slow_calls(),
    }))
    for monitor in monitors.values():
        monitor.stop()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def slow_resolver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shim, compiled: a shared object to preload."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler to build the slow-resolver shim with")
    where = tmp_path_factory.mktemp("shim")
    (where / "slow.c").write_text(SHIM)
    built = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", "slow.so", "slow.c", "-ldl"],
        cwd=where,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return where / "slow.so"


def test_a_name_slow_to_fail_makes_no_other_heart_look_dead(slow_resolver: Path) -> None:
    # Issue 23 item 5: libzmq resolved tcp://slowhost:5555 with a blocking getaddrinfo in its
    # I/O thread, again at each reconnection, and every monitor and pool shares that thread:
    # five healthy hearts (ttd 3) were all declared dead within seconds.
    hearts = [Heart() for _ in range(5)]
    for heart in hearts:
        heart.start()
    try:
        env = dict(os.environ, LD_PRELOAD=str(slow_resolver), HEARTBEAT_SLOW_NAME="slowhost")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        # The shim is in force: a lookup of the name takes its time and fails.
        check = subprocess.run(
            [sys.executable, "-c", "import socket; socket.getaddrinfo('slowhost', 1)"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "Temporary failure" in check.stderr or "EAI_AGAIN" in check.stderr, check.stderr
        watch_for = 8.0
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                WATCH_BESIDE_A_SLOW_NAME,
                json.dumps([heart.url for heart in hearts]),
                str(watch_for),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        for heart in hearts:
            heart.stop()
    assert result.returncode == 0, result.stderr
    seen: dict[str, Any] = json.loads(result.stdout)
    healthy = [name for name in seen["states"] if not name.endswith("slowhost")]
    assert len(healthy) == 10
    dead = {name: at for name, at in seen["died"].items() if name in healthy}
    assert not dead, f"healthy hearts declared dead beside a slow name: {seen}"
    assert all(seen["states"][name] == "beating" for name in healthy), seen
    # Each answered all along: a ping every 1.5 s for 8 s.
    assert all(seen["beats"][name] >= 4 for name in healthy), seen
    # The slow name's own monitors see a silent heart, judged as any other: dead after
    # first_beat + time_to_dead.
    assert set(seen["died"]) == {"lone slowhost", "pool slowhost"}, seen
    assert all(3.5 < at < 7.0 for at in seen["died"].values()), seen
    # ping() of the slow name is bounded by its timeout; a healthy heart answers meanwhile.
    assert seen["ping_took"]["slowhost"] < 1.5, seen
    assert seen["pinged"] == {"slowhost": False, "healthy": True}, seen
    # Two monitors and a ping of the name share one lookup at a time, asked again after
    # 0.5 s, 1 s, 2 s... until its monitors are dead (3 seen): not one a reconnection.
    assert 1 <= seen["lookups"] <= 6, seen


# -- a hosts file with names of both families ---------------------------------------------------

HOSTS = """\
127.0.0.1 localhost
::1 bothhost
127.0.0.1 bothhost
::1 v6only
"""

# Inside its own mount namespace: an IPv4-only heart and an IPv6-only heart, each watched by
# name (lone, pooled) and pinged by name; prints what happened as JSON.
WATCH_BY_NAME = r"""
import asyncio, contextlib, io, json, socket, sys, time
from heartbeat import Heart, HeartMonitor, HeartbeatPool
from heartbeat.cli import main as heartbeat_cli
from heartbeat.probe import ping

def probe(url):
    # `heartbeat probe url`: its exit status (its line of output kept off ours).
    with contextlib.redirect_stdout(io.StringIO()):
        return heartbeat_cli(["probe", url, "--timeout", "2"])

print(json.dumps({
    name: [info[4][0] for info in socket.getaddrinfo(name, 1, type=socket.SOCK_STREAM)]
    for name in ("bothhost", "v6only")
}), flush=True)

async def main():
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        late_port = spare.getsockname()[1]
    with Heart("tcp://127.0.0.1:0") as v4, Heart("tcp://[::1]:0") as v6:
        port4, port6 = (heart.url.rsplit(":", 1)[1] for heart in (v4, v6))
        urls = {
            "v4 heart by bothhost": f"tcp://bothhost:{port4}",
            "v6 heart by bothhost": f"tcp://bothhost:{port6}",
            "v6 heart by v6only": f"tcp://v6only:{port6}",
            # Bound on IPv4 a second after it is watched: found on the second address then.
            "late v4 heart by bothhost": f"tcp://bothhost:{late_port}",
        }
        pool = HeartbeatPool()
        monitors = {}
        for case, url in urls.items():
            monitors[f"lone: {case}"] = HeartMonitor(url, time_to_dead=1.0, first_beat=3.0)
            monitors[f"pool: {case}"] = pool.watch(url, time_to_dead=1.0, first_beat=3.0)
        died = []
        for name, monitor in monitors.items():
            monitor.start(lambda name=name: died.append(name))
        pinged = {}
        for case, url in urls.items():
            if not case.startswith("late"):
                pinged[f"ping: {case}"] = await asyncio.to_thread(ping, url, 2.0) is not None
                pinged[f"heartbeat probe: {case}"] = await asyncio.to_thread(probe, url) == 0
        await asyncio.sleep(1.0)  # every address of bothhost refused it meanwhile
        late = Heart(f"tcp://127.0.0.1:{late_port}")
        late.start()
        pinged["ping: late v4 heart by bothhost"] = (
            await asyncio.to_thread(ping, urls["late v4 heart by bothhost"], 2.0) is not None
        )
        await asyncio.sleep(4.0)
        late.stop()
        print(json.dumps({
            "died": died,
            "states": {name: m.state.value for name, m in monitors.items()},
            "pinged": pinged,
        }))
        for monitor in monitors.values():
            monitor.stop()

asyncio.run(main())
"""


@pytest.fixture
def hosts_file(tmp_path: Path) -> Iterator[Path]:
    """A hosts file to bind over /etc/hosts in a mount namespace of a subprocess's own."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to give a subprocess its own /etc/hosts")
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    tried = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind {hosts} /etc/hosts"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if tried.returncode != 0:
        pytest.skip(f"cannot bind a hosts file in a mount namespace here: {tried.stderr.strip()}")
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
    yield hosts


def in_namespace(hosts: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that sees ``hosts`` as its /etc/hosts (a mount
    namespace of its own: nothing else on the machine sees it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    assert "'" not in code
    script = f"mount --bind {hosts} /etc/hosts && exec {sys.executable} -c '{code}'"
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_name_of_both_families_reaches_a_heart_of_either_in_pool_lone_and_probe(
    hosts_file: Path,
) -> None:
    # Issue 23 item 6: the pool set IPV6 and so reached a name with an AAAA record over IPv6
    # only (an IPv4 kernel refused for ever, declared dead while `heartbeat probe` said it
    # answered); the lone monitor and the probe resolved over IPv4 only (an IPv6-only name
    # never reached).
    result = in_namespace(hosts_file, WATCH_BY_NAME)
    assert result.returncode == 0, result.stderr
    resolved, seen = (json.loads(line) for line in result.stdout.splitlines())
    assert sorted(resolved["bothhost"]) == ["127.0.0.1", "::1"], resolved
    assert resolved["v6only"] == ["::1"], resolved
    assert not seen["died"], seen
    assert set(seen["states"].values()) == {"beating"}, seen
    assert all(seen["pinged"].values()), seen


# ipykernel binds its heart on IPv4 (its default ip 127.0.0.1): started after it is watched by a
# name of both families, lone and pooled, it is found and beats; the probe by name answers.
WATCH_IPYKERNEL_BY_NAME = r"""
import asyncio, json, os, subprocess, sys, tempfile, time
from jupyter_client.connect import write_connection_file
from heartbeat import HeartMonitor, HeartbeatPool
from heartbeat.probe import ping

async def main():
    where = tempfile.mkdtemp()
    fname, info = write_connection_file(os.path.join(where, "kernel.json"), ip="127.0.0.1")
    url = "tcp://bothhost:%d" % info["hb_port"]
    pool = HeartbeatPool()
    monitors = {
        "lone": HeartMonitor(url, time_to_dead=2.0, first_beat=60.0),
        "pool": pool.watch(url, time_to_dead=2.0, first_beat=60.0),
    }
    died = []
    for name, monitor in monitors.items():
        monitor.start(lambda name=name: died.append(name))
    kernel = subprocess.Popen(
        [sys.executable, "-m", "ipykernel_launcher", "-f", fname],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if all(m.state.value == "beating" for m in monitors.values()):
                break
            await asyncio.sleep(0.05)
        began = {name: m.state.value for name, m in monitors.items()}
        pinged = await asyncio.to_thread(ping, url, 2.0) is not None
        await asyncio.sleep(4.0)  # two time_to_dead more
        print(json.dumps({
            "began": began,
            "died": died,
            "states": {name: m.state.value for name, m in monitors.items()},
            "pinged": pinged,
        }))
        for monitor in monitors.values():
            monitor.stop()
    finally:
        kernel.kill()
        kernel.wait(10)

asyncio.run(main())
"""


def test_ipykernel_on_ipv4_is_watched_and_probed_by_a_name_of_both_families(
    hosts_file: Path,
) -> None:
    pytest.importorskip("ipykernel")
    result = in_namespace(hosts_file, WATCH_IPYKERNEL_BY_NAME)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["began"] == {"lone": "beating", "pool": "beating"}, seen
    assert not seen["died"], seen
    assert seen["states"] == {"lone": "beating", "pool": "beating"}, seen
    assert seen["pinged"], seen


# -- choosing among a name's addresses ------------------------------------------------------------


@pytest.fixture
def v4_listener() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def test_the_address_that_accepts_is_chosen_in_order(v4_listener: int) -> None:
    port = v4_listener
    assert pick(("::1", "127.0.0.1"), port, 1.0) == ("127.0.0.1", True)
    assert pick(("127.0.0.1", "::1"), port, 1.0) == ("127.0.0.1", True)
    # The only address: nothing to choose, nothing tried.
    assert pick(("::1",), port, 1.0) == ("::1", True)


def test_with_nothing_listening_the_first_address_is_chosen_unaccepted(v4_listener: int) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = int(closed.getsockname()[1])  # bound, not listening: refused
        begun = time.monotonic()
        assert pick(("::1", "127.0.0.1"), port, 1.0) == ("::1", False)
        assert time.monotonic() - begun < 1.0  # refused at once, not timed out


def test_an_address_becomes_a_zmq_url() -> None:
    assert url_of("127.0.0.1", 5) == "tcp://127.0.0.1:5"
    assert url_of("::1", 5) == "tcp://[::1]:5"


def test_a_forked_child_looks_a_name_up_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # A lookup in flight in the parent has no thread in a child (as multiprocessing's fork
    # start method makes one): the child must not wait for its answer for ever.
    monkeypatch.setattr(_resolve, "_cache", NameCache())
    monkeypatch.setitem(_resolve._asking, "localhost", [])
    where = endpoint("tcp://localhost:5555", bind=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
        pid = os.fork()
    if pid == 0:
        os._exit(0 if _resolve.resolve_now(where, 5.0) is not None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- backing off reconnection ---------------------------------------------------------------------


def retry_intervals(socket: Any, seconds: float) -> list[int]:
    """The waits (ms) libzmq announces before each reconnection attempt of ``socket``."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    watcher = socket.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED)
    waits = []
    end = time.monotonic() + seconds
    try:
        while (left := end - time.monotonic()) > 0:
            if watcher.poll(int(left * 1000) + 1):
                waits.append(int(recv_monitor_message(watcher)["value"]))
    finally:
        socket.disable_monitor()
        watcher.close(linger=0)
    return waits


@pytest.mark.parametrize("kind", ["lone", "pool"])
def test_reconnection_to_an_address_that_refuses_backs_off_to_half_the_interval(
    kind: str,
) -> None:
    import zmq

    from heartbeat import _sockets

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: every attempt is refused
        url = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
        context = zmq.Context()
        try:
            # As a lone monitor's DEALER (interval 0.4 s) and as the pool's ROUTER (opened for
            # 0.1 s, connected for a heart of 0.4 s): tried every 100 ms, then 200, 200...
            sock = _sockets.open_socket(
                context,
                zmq.DEALER if kind == "lone" else zmq.ROUTER,
                what="test",
                interval=0.4 if kind == "lone" else 0.1,
                ipv6=False,
            )
            with sock:
                _sockets.connect(
                    sock, url, interval=0.4, routing_id=b"r" if kind == "pool" else None
                )
                waits = retry_intervals(sock, 2.0)
        finally:
            context.term()
    assert waits, "no reconnection attempt seen"
    assert max(waits) <= 200 + _sockets.reconnect_ivl(0.4), waits
    # Backing off: the last waits are the longest, and far fewer attempts than 20 a second.
    assert waits[-1] >= 200, waits
    assert len(waits) <= 15, waits
