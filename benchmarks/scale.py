"""How much does watching N hearts cost one process? Prints a table; never asserts speed.

Side by side, each in a fresh process, every heart pinged once a second:

- ``pool``: HeartbeatPool (one ROUTER socket, one timer, full judgement), time_to_dead 2 s;
- ``pool-rep``: the same pool watching hearts that are REP sockets (IRkernel's), which it
  reaches by a DEALER socket each (``hearts_host --rep``; 3,000 hearts at most);
- ``pool+metrics``: the same pool with metrics on: one ``Tally`` given to every monitor, and
  its Prometheus collector scraped every 15 s as Prometheus would (``generate_latest``);
- ``kernelmanager``: monitors made exactly as ``heartbeat.jupyter``'s kernel managers make
  them (their settings' ``watch()``, the shared pool of the loop, a kernel-naming logger);
- ``bare``: one ROUTER socket that only sends pings and reads replies (no judgement at all):
  the floor any design pays;
- ``monitor``: one HeartMonitor (REQ socket + ZMQStream) per heart on one loop;
- ``hbchannel``: jupyter_client's own HBChannel per heart (a thread each), time_to_dead 1 s.

Each watcher is started two ways: ``together`` (all at once: a server that re-attaches to its
kernels after a restart) and ``staggered`` (evenly over one second: kernels started at
different moments, the everyday case). The bare loop has its own fixed ten ticks a second.

The hearts live in several other processes. One extra heart (a real ``Heart`` in its own
process) is killed mid-run to measure detection latency. Usage::

    python -m benchmarks.scale                     # 100, 1000, 3000, 10000 hearts
    python -m benchmarks.scale --sizes 200 --duration 5 --kinds pool bare   # CI smoke
    python -m benchmarks.scale --sizes 10000 --duration 300 --kinds pool    # the soak
    python -m benchmarks.scale --sizes 1000 --kinds pool bare hbchannel --rounds 5  # goals
    python -m benchmarks.scale --sizes 1000 --kinds pool --paths 1 2 4 --start staggered
    python -m benchmarks.scale --sizes 10000 --kinds pool pool+metrics --start staggered \
        --duration 60 --rounds 3                  # what metrics cost, against the pool's own

``--paths``: the pool measured with each number of connections a heart (``pool/N``, at the
default interval for N paths, ttd / (2 N): each connection pinged every second, the heart N
times a second); the ``fds`` column counts the process's open file descriptors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

HOSTS = 8  # processes the hearts are spread over
KINDS = ("pool", "pool+metrics", "pool-rep", "kernelmanager", "bare", "monitor", "hbchannel")
STARTS = ("together", "staggered")
STAGGER = 1.0  # seconds over which "staggered" starts the watchers: one ping interval
SCRAPE_EVERY = 15.0  # seconds: Prometheus' default scrape_interval
METRICS_BOUND = 0.10  # the issue's: metrics may cost at most 10 % of the pool's own CPU
# Per-kernel sockets/threads: 1023 a context; REP hearts: a socket and two descriptors each.
LIMITS = {"monitor": 1000, "hbchannel": 1000, "pool-rep": 3000}


# -- the driver ---------------------------------------------------------------------------------


def spawn_hearts(n: int, rep: bool = False) -> tuple[list[subprocess.Popen[str]], list[str]]:
    procs, urls = [], []
    per = -(-n // HOSTS)
    for start in range(0, n, per):
        count = ["--count", str(min(per, n - start)), *(["--rep"] if rep else [])]
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.hearts_host", *count],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        urls += [f"tcp://127.0.0.1:{p}" for p in json.loads(proc.stdout.readline())["ports"]]
        procs.append(proc)
    return procs, urls


def stop_hearts(procs: list[subprocess.Popen[str]]) -> None:
    """Close the hearts' stdin (their signal to exit) and wait for them."""
    for proc in procs:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def run_one(
    kind: str, start: str, urls: list[str], duration: float, scrape_every: float = SCRAPE_EVERY
) -> dict[str, Any]:
    victim = subprocess.Popen(
        [sys.executable, "-m", "heartbeat._standin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert victim.stdout is not None
    victim_url = json.loads(victim.stdout.readline())["url"]
    args = {
        "kind": kind,
        "start": start,
        "urls": urls,
        "victim": victim_url,
        "duration": duration,
        "scrape_every": scrape_every,
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scale", "--worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write(json.dumps(args) + "\n")
    worker.stdin.flush()
    assert worker.stdout.readline().strip() == "kill"
    victim.kill()
    victim.wait()
    worker.stdin.write(f"{time.monotonic()}\n")
    worker.stdin.flush()
    result = json.loads(worker.stdout.readline())
    worker.wait()
    for stream in (victim.stdin, victim.stdout, worker.stdin, worker.stdout):
        if stream is not None:
            stream.close()
    return dict(result)


def table(rows: list[dict[str, Any]]) -> str:
    ranges = any("cpu_range" in r for r in rows)
    head = (
        f"{'hearts':>7} {'kind':<13} {'start':<10} {'cpu %':>7} {'rss MiB':>8} {'beats/s':>8} "
        f"{'false deaths':>12} {'detect s':>9} {'silent s':>9} {'fds':>6}"
    ) + (f" {'cpu % range':>12}" if ranges else "")
    lines = [head, "-" * len(head)]
    for r in rows:
        detect = "-" if r["detect"] is None else f"{r['detect']:.2f}"
        silent = "-" if r.get("silent") is None else f"{r['silent']:.2f}"
        line = (
            f"{r['n']:>7} {r['kind']:<13} {r['start']:<10} {r['cpu']:>7.1f} {r['rss']:>8.0f} "
            f"{r['beats_per_s']:>8.0f} {r['false_deaths']:>12} {detect:>9} {silent:>9}"
            f" {r.get('fds', 0):>6}"
        )
        if ranges:
            low, high = r.get("cpu_range", (r["cpu"], r["cpu"]))
            line += f" {f'{low:.1f}-{high:.1f}':>12}"
        lines.append(line)
    return "\n".join(lines)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for several rounds of a configuration: medians, every false death, CPU range."""
    if len(runs) == 1:
        return runs[0]

    def median(key: str) -> Any:
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    row = dict(runs[0])
    for key in ("cpu", "rss", "beats_per_s", "detect", "silent"):
        row[key] = median(key)
    row["false_deaths"] = sum(r["false_deaths"] for r in runs)
    row["cpu_range"] = (min(r["cpu"] for r in runs), max(r["cpu"] for r in runs))
    row["rounds"] = len(runs)
    return row


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """The pool's CPU side by side with the bare loop's and HBChannel's, at each size."""
    cpu = {(r["n"], r["kind"], r["start"]): r["cpu"] for r in rows}
    lines = []
    for (n, kind, start), pool in cpu.items():
        if kind != "pool" or not pool:
            continue
        parts = []
        if (bare := cpu.get((n, "bare", "-"))) is not None:
            parts.append(f"{pool / bare:.2f} x the bare loop")
        if (hbchannel := cpu.get((n, "hbchannel", start))) is not None:
            parts.append(f"{hbchannel / pool:.2f} x below HBChannel")
        if (managed := cpu.get((n, "kernelmanager", start))) is not None:
            parts.append(f"kernel managers at {managed / pool:.2f} x the pool")
        if (metrics := cpu.get((n, "pool+metrics", start))) is not None:
            parts.append(
                f"metrics on at {metrics / pool:.2f} x the pool ({metrics - pool:+.1f} points, "
                f"{100 * (metrics - pool) / pool:+.0f} % of the pool's own CPU; the bound: "
                f"+{100 * METRICS_BOUND:.0f} %)"
            )
        if parts:
            lines.append(f"{n} hearts, pool {start}: " + ", ".join(parts))
    if lines:
        lines.append(
            "(the goals at 1000 hearts: at most 1.5 x the bare loop, 3 x below HBChannel; "
            "kernel managers within 1.2 x the pool)"
        )
    return lines


def tallies(rows: list[dict[str, Any]]) -> list[str]:
    """What each metrics run's tally said at its end: a check that every monitor counted."""
    return [
        f"{r['n']} hearts, pool+metrics {r['start']}: {r['scrapes']} scrapes; at the end the "
        f"tally had {r['watched']} watched (the killed heart not among them), {r['late']} "
        f"late, {r['timed']} round trips timed"
        for r in rows
        if r["kind"] == "pool+metrics"
    ]


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (cpu_ax, det_ax) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {
        "pool": "C0",
        "pool+metrics": "C5",
        "kernelmanager": "C4",
        "bare": "C2",
        "monitor": "C3",
        "hbchannel": "C1",
    }
    for kind in KINDS:
        for start in ("-", *STARTS):
            mine = [r for r in rows if r["kind"] == kind and r["start"] == start]
            if not mine:
                continue
            label = kind if start == "-" else f"{kind} ({start})"
            # One colour a kind; dashed when staggered.
            style = {"marker": "o", "color": colours[kind], "label": label}
            style["linestyle"] = "--" if start == "staggered" else "-"
            xs = [r["n"] for r in mine]
            cpu_ax.plot(xs, [r["cpu"] for r in mine], **style)
            dets = [(r["n"], r["silent"]) for r in mine if r.get("silent") is not None]
            if dets:
                det_ax.plot(*zip(*dets, strict=True), **style)
    cpu_ax.set(xscale="log", xlabel="hearts", ylabel="CPU % of one core", title="CPU")
    det_ax.set(
        xscale="log",
        xlabel="hearts",
        ylabel="seconds of silence",
        title="silence a killed heart was declared dead after",
    )
    cpu_ax.legend()
    det_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3000, 10000])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--start", nargs="+", choices=STARTS, default=list(STARTS))
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured")
    parser.add_argument(
        "--paths", type=int, nargs="+", default=[1], help="the pool with each number of paths"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every configuration this many times, in turn (the machine's speed "
        "drifts over minutes); the table shows medians and the CPU range",
    )
    parser.add_argument(
        "--scrape-every",
        type=float,
        default=SCRAPE_EVERY,
        help="seconds between scrapes of pool+metrics' collector (default: Prometheus' 15)",
    )
    parser.add_argument("--plot", type=Path, help="write a PNG here (needs matplotlib)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.worker:
        return worker()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    rows = []
    for n in args.sizes:
        kinds = [
            labelled
            for kind in args.kinds
            for labelled in (
                [kind if p == 1 else f"{kind}/{p}" for p in args.paths]
                if kind == "pool"
                else [kind]
            )
        ]
        configs = [
            (kind, start)
            for kind in kinds
            if n <= LIMITS.get(kind, n)
            for start in (["-"] if kind == "bare" else args.start)
        ]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {config: [] for config in configs}
        procs, urls = spawn_hearts(n)
        rep = any(kind == "pool-rep" for kind, _ in configs)
        rep_procs, rep_urls = spawn_hearts(n, rep=True) if rep else ([], [])
        try:
            for _ in range(args.rounds):
                for kind, start in configs:
                    hearts = rep_urls if kind == "pool-rep" else urls
                    row = run_one(kind, start, hearts, args.duration, args.scrape_every)
                    runs[kind, start].append(row)
                    print(table([row]).splitlines()[-1], flush=True)
        finally:
            stop_hearts(procs + rep_procs)
        rows += [combine(runs[config]) for config in configs]
    print()
    print(table(rows))
    for line in ratios(rows) + tallies(rows):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot and plot(rows, args.plot):
        print(f"plot written to {args.plot}")
    return 1 if any(r["false_deaths"] for r in rows) else 0


# -- one measured configuration, in its own process --------------------------------------------


def worker() -> int:
    args = json.loads(sys.stdin.readline())
    result = asyncio.run(
        measure(
            args["kind"],
            args["start"],
            args["urls"],
            args["victim"],
            args["duration"],
            scrape_every=args["scrape_every"],
        )
    )
    print(json.dumps(result), flush=True)
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(
    kind: str,
    start: str,
    urls: list[str],
    victim: str,
    duration: float,
    *,
    scrape_every: float = SCRAPE_EVERY,
) -> dict[str, Any]:
    zmq.Context.instance().set(zmq.MAX_SOCKETS, 100_000)
    state: dict[str, Any] = {"beats": 0, "deaths": set(), "victim_dead": None}
    state["scrape_every"] = scrape_every
    base, _, paths = kind.partition("/")
    state["paths"] = int(paths or 1)
    setup = {
        "pool": setup_pool,
        "pool+metrics": setup_pool_with_metrics,
        "pool-rep": setup_pool,
        "kernelmanager": setup_kernel_managers,
        "bare": setup_bare,
        "monitor": setup_monitors,
        "hbchannel": setup_hbchannels,
    }[base]
    starts, stop = setup([*urls, victim], victim, state)
    if start == "staggered":
        group = max(1, len(starts) // 200)  # 200 steps: each a few ms, well above timer grain
        for i in range(0, len(starts), group):
            for fn in starts[i : i + group]:
                fn()
            await asyncio.sleep(STAGGER * group / len(starts))
    else:
        for fn in starts:
            fn()
    loop = asyncio.get_running_loop()
    await asyncio.sleep(4.0)  # past first_beat: every heart is beating
    count = state.get("count", lambda: state["beats"])
    beats0, cpu0, t0 = count(), cpu_seconds(), time.monotonic()
    await asyncio.sleep(duration)
    cpu, wall, beats = cpu_seconds() - cpu0, time.monotonic() - t0, count() - beats0
    print("kill", flush=True)
    killed = float(await loop.run_in_executor(None, sys.stdin.readline))
    end = time.monotonic() + 10
    while state["victim_dead"] is None and time.monotonic() < end and kind != "bare":
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)
    false_deaths = len(state["deaths"] - {victim})
    rss = rss_mib()
    fds = len(os.listdir("/proc/self/fd"))
    report = state.get("report", dict)()
    stop()
    return {
        **report,
        "n": len(urls),
        "kind": kind,
        "start": start,
        "cpu": 100 * cpu / wall,
        "rss": rss,
        "beats_per_s": beats / wall,
        "false_deaths": false_deaths,
        "detect": None if state["victim_dead"] is None else state["victim_dead"] - killed,
        "silent": state.get("silent"),
        "fds": fds,
    }


def _victim_events(state: dict[str, Any], url: str, victim: str) -> Any:
    """For the victim only: record the silence it was declared dead after."""
    from heartbeat import Dead

    def on_event(event: object) -> None:
        if isinstance(event, Dead):
            state["silent"] = event.silent_for

    return on_event if url == victim else None


def _starts(monitors: list[Any], urls: list[str], state: dict[str, Any], victim: str) -> Any:
    return [
        functools.partial(m.start, _on_dead(state, url, victim))
        for url, m in zip(urls, monitors, strict=True)
    ]


def _on_dead(state: dict[str, Any], url: str, victim: str) -> Any:
    def dead() -> None:
        state["deaths"].add(url)
        if url == victim:
            state["victim_dead"] = time.monotonic()

    return dead


def setup_pool(urls: list[str], victim: str, state: dict[str, Any], tally: Any = None) -> Any:
    from heartbeat import HeartbeatPool

    pool = HeartbeatPool()
    paths = state["paths"]
    monitors = [
        pool.watch(
            url,
            time_to_dead=2.0,
            first_beat=3.0,
            interval=1.0 / paths,  # the default for that many paths: ttd / (2 * paths)
            paths=paths,
            on_event=_victim_events(state, url, victim),
            tally=tally,
        )
        for url in urls
    ]
    # The monitors count their own beats: no per-event callback weighs on the measurement.
    state["count"] = lambda: sum(m.stats.count for m in monitors)
    return _starts(monitors, urls, state, victim), pool.close


def setup_pool_with_metrics(urls: list[str], victim: str, state: dict[str, Any]) -> Any:
    """The pool, every monitor counting into one tally, scraped as Prometheus would."""
    from prometheus_client import CollectorRegistry, generate_latest
    from tornado.ioloop import PeriodicCallback

    from heartbeat import Tally
    from heartbeat.jupyter.metrics import TallyCollector

    tally = Tally()
    registry = CollectorRegistry()  # ours alone: jupyter_server's own metrics are not measured
    registry.register(TallyCollector(tally))
    state["scrapes"] = 0

    def scrape() -> None:
        generate_latest(registry)
        state["scrapes"] += 1

    starts, close = setup_pool(urls, victim, state, tally)
    scraper = PeriodicCallback(scrape, 1000 * state["scrape_every"])
    scraper.start()
    # What the tally says at the end (the victim dead, every other heart watched), as a check.
    state["report"] = lambda: {
        "scrapes": state["scrapes"],
        "watched": tally.watched,
        "late": tally.late,
        "timed": tally.rtt_count,
    }

    def stop() -> None:
        scraper.stop()
        close()

    return starts, stop


def setup_kernel_managers(urls: list[str], victim: str, state: dict[str, Any]) -> Any:
    """As HeartbeatKernelManager._start_heart_monitor makes them, without the kernels."""
    import logging

    from heartbeat import Dead
    from heartbeat.jupyter.kernel import HeartbeatSettings, KernelLog, shared_pool

    settings = HeartbeatSettings(time_to_dead=2.0, first_beat=3.0, interval=1.0)
    log = logging.getLogger("benchmarks.kernelmanager")
    log.propagate = False

    class Silence(logging.Handler):
        # The death line carries its Dead event, as a structured log handler would read it.
        def emit(self, record: logging.LogRecord) -> None:
            event = getattr(record, "heartbeat_event", None)
            if isinstance(event, Dead) and getattr(record, "kernel_id", None) == victim:
                state["silent"] = event.silent_for

    log.addHandler(Silence())
    monitors = [
        settings.watch(
            url,
            curve_serverkey=None,
            context=None,
            log=KernelLog(log, url, lambda dead: (None, None)),
        )
        for url in urls
    ]
    state["count"] = lambda: sum(m.stats.count for m in monitors)

    def stop() -> None:
        for m in monitors:
            m.stop()
        shared_pool(log).close()

    return _starts(monitors, urls, state, victim), stop


def setup_monitors(urls: list[str], victim: str, state: dict[str, Any]) -> Any:
    from heartbeat import HeartMonitor

    monitors = []
    for url in urls:
        m = HeartMonitor(
            url,
            time_to_dead=2.0,
            first_beat=3.0,
            interval=1.0,
            on_event=_victim_events(state, url, victim),
        )
        monitors.append(m)
    state["count"] = lambda: sum(m.stats.count for m in monitors)
    return _starts(monitors, urls, state, victim), lambda: [m.stop() for m in monitors]


def setup_bare(urls: list[str], victim: str, state: dict[str, Any]) -> Any:
    def beat() -> None:
        state["beats"] += 1

    return [], bare_loop(urls, every=1.0, ticks=10, on_reply=beat)


def bare_loop(urls: list[str], *, every: float, ticks: int, on_reply: Any = None) -> Any:
    """One ROUTER socket pinging every heart once ``every`` s, spread over ``ticks`` ticks.

    It only sends and reads, with pyzmq's plain multipart calls: no judgement, no statistics.
    Returns its stop().
    """
    from tornado.ioloop import IOLoop, PeriodicCallback

    loop = IOLoop.current()
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.linger = 0
    sock.sndhwm = sock.rcvhwm = 100_000
    rids = []
    for i, url in enumerate(urls):
        rid = b"b" + i.to_bytes(8, "big")
        sock.setsockopt(zmq.CONNECT_ROUTING_ID, rid)
        sock.connect(url)
        rids.append(rid)
    slot = [0]

    def drain(*_: object) -> None:
        try:
            while True:
                sock.recv_multipart(zmq.NOBLOCK)
                if on_reply is not None:
                    on_reply()
        except zmq.Again:
            pass

    def tick() -> None:
        k = slot[0] % ticks
        slot[0] += 1
        for rid in rids[k::ticks]:
            with contextlib.suppress(zmq.Again):
                sock.send_multipart([rid, b"", b"ping"], zmq.NOBLOCK)
        drain()

    loop.add_handler(sock.FD, drain, IOLoop.READ)
    timer = PeriodicCallback(tick, 1000 * every / ticks)
    timer.start()

    def stop() -> None:
        timer.stop()
        loop.remove_handler(sock.FD)
        sock.close()

    return stop


def setup_hbchannels(urls: list[str], victim: str, state: dict[str, Any]) -> Any:
    from jupyter_client.channels import HBChannel

    ctx = zmq.Context.instance()
    lock = threading.Lock()

    class Counting(HBChannel):  # type: ignore[misc]
        time_to_dead = 1.0

        def __init__(self, url: str) -> None:
            super().__init__(ctx, address=url)
            self.url = url

        def call_handlers(self, since_last_heartbeat: float) -> None:
            with lock:
                state["deaths"].add(self.url)
                if self.url == victim and state["victim_dead"] is None:
                    state["victim_dead"] = time.monotonic()
                    state["silent"] = since_last_heartbeat

    channels = [Counting(url) for url in urls]

    def count() -> None:
        # HBChannel does not report beats; one per channel and second while is_beating().
        while not stopped.is_set():
            stopped.wait(1.0)
            state["beats"] += sum(ch.is_beating() for ch in channels)

    stopped = threading.Event()
    counter = threading.Thread(target=count, daemon=True)
    counter.start()

    def stop() -> None:
        stopped.set()
        for ch in channels:
            if ch.is_alive():
                ch.stop()

    return [ch.start for ch in channels], stop


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
