"""False deaths behind a lossy link, and how soon a real kill is still seen, side by side.

Every configuration runs at once, in one sitting, inside a network namespace made for the run
(loopback only; see benchmarks/lossy_net.py), where nftables drops a random share of each
heart's TCP packets in both directions. The hearts live in a child process; every death before
it is killed is false, and each monitor starts again after one. At the end the child is killed
with SIGKILL and each monitor's time to report it is measured.

    python -m benchmarks.lossy                       # 10 minutes, the full table
    python -m benchmarks.lossy --minutes 1 --losses 20 --ttds 1 --json out.json

Columns: ``lone`` (HeartMonitor, one connection), ``pool`` (a HeartbeatPool member),
``pool/2``, ``pool/3`` (the same with 2 and 3 paths), ``lone/2`` (a lone monitor with 2 paths)
and ``HBChannel`` (jupyter_client's, whose failure handler runs on every missed ping).
Needs root (for the namespace and nftables) and Debian's nftables; says so otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from benchmarks import lossy_net
from heartbeat import Beat, Event, HeartbeatPool, HeartMonitor

KINDS = ["lone", "lone/2", "pool", "pool/2", "pool/3", "HBChannel"]


@dataclass
class Tally:
    """What one watcher saw."""

    kind: str
    loss: int
    ttd: float
    deaths: list[float] = field(default_factory=list)  # monotonic times
    last_reply: float = 0.0

    def first_death_after(self, t: float) -> float | None:
        return next((d for d in self.deaths if d >= t), None)


class _Counted:
    """A HeartMonitor that counts its deaths and starts again after each, until told to stop."""

    def __init__(
        self,
        tally: Tally,
        url: str,
        pool: HeartbeatPool | None,
        paths: int,
        interval: float | None,
    ) -> None:
        self.tally = tally
        self.stopping = False
        self.monitor = HeartMonitor(
            url,
            time_to_dead=tally.ttd,
            first_beat=tally.ttd,
            interval=interval,
            pool=pool,
            paths=paths,
            on_event=self._on_event,
        )

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Beat):
            self.tally.last_reply = time.monotonic()

    def start(self) -> None:
        self.monitor.start(self._dead)

    def _dead(self) -> None:
        self.tally.deaths.append(time.monotonic())
        if not self.stopping:
            self.monitor.start(self._dead)  # watch on, with a fresh grace


def _hbchannel(tally: Tally, port: int, context: zmq.Context[Any]) -> Any:
    from jupyter_client.channels import HBChannel

    class Counting(HBChannel):
        time_to_dead = tally.ttd

        def call_handlers(self, since_last_heartbeat: float) -> None:
            tally.deaths.append(time.monotonic())

    channel = Counting(context=context, session=None, address=("127.0.0.1", port))
    return channel


def _start_hearts(count: int) -> tuple[subprocess.Popen[str], list[int]]:
    hearts = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.hearts_host", "--count", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert hearts.stdout is not None
    ports: list[int] = json.loads(hearts.stdout.readline())["ports"]
    return hearts, ports


async def measure(
    losses: list[int], ttds: list[float], kinds: list[str], seconds: float, copies: int = 1
) -> tuple[list[Tally], float, float, int]:
    """Run every configuration at once for ``seconds``; kill the hearts; return the tallies,
    the kill time, the run's length and the packets nftables dropped."""
    combos = [(loss, ttd) for loss in losses for ttd in ttds]
    hearts, ports = _start_hearts(len(combos))
    context: zmq.Context[Any] = zmq.Context()
    pool = HeartbeatPool()
    tallies: list[Tally] = []
    ours: list[_Counted] = []
    channels: list[Any] = []
    try:
        for (loss, ttd), port in zip(combos, ports, strict=True):
            lossy_net.lose(port, loss)
            url = f"tcp://127.0.0.1:{port}"
            for kind in [k for k in kinds for _ in range(copies)]:
                tally = Tally(kind, loss, ttd)
                tallies.append(tally)
                if kind == "HBChannel":
                    channels.append(_hbchannel(tally, port, context))
                    continue
                base, paths, interval = _parse(kind, ttd)
                ours.append(_Counted(tally, url, pool if base == "pool" else None, paths, interval))
        began = time.monotonic()
        for watcher in ours:
            watcher.start()
        for channel in channels:
            channel.start()
        await asyncio.sleep(seconds)
        # HBChannel counts a death per missed ping: only those before the kill are false.
        killed = time.monotonic()
        hearts.send_signal(signal.SIGKILL)
        hearts.wait()
        end = killed + 3 * max(ttds) + 5
        while time.monotonic() < end and not all(t.first_death_after(killed) for t in tallies):
            await asyncio.sleep(0.05)
        drops = lossy_net.dropped()
        return tallies, killed, killed - began, drops
    finally:
        for watcher in ours:
            watcher.stopping = True
            watcher.monitor.stop()
        pool.close()
        stoppers = [threading.Thread(target=c.stop) for c in channels]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(30)
        if hearts.poll() is None:
            hearts.kill()
            hearts.wait()
        context.destroy(linger=0)


def report(tallies: list[Tally], killed: float, seconds: float, drops: int) -> dict[str, Any]:
    """The table as data: false deaths and detection after the kill, by (loss, ttd, kind)."""
    rows = []
    for t in tallies:
        false = [d for d in t.deaths if d < killed]
        seen = t.first_death_after(killed)
        rows.append(
            {
                "kind": t.kind,
                "loss": t.loss,
                "ttd": t.ttd,
                "false_deaths": len(false),
                "per_hour": len(false) * 3600 / seconds,
                "detected_after_kill": None if seen is None else seen - killed,
                "detected_after_last_reply": (
                    None if seen is None or not t.last_reply else seen - t.last_reply
                ),
            }
        )
    return {"seconds": seconds, "dropped_packets": drops, "rows": rows}


def print_table(result: dict[str, Any], kinds: list[str]) -> None:
    rows = result["rows"]
    minutes = result["seconds"] / 60
    print(
        f"False deaths in {minutes:.1f} minutes of real loss ({result['dropped_packets']} packets"
        " dropped), per kind; then seconds from SIGKILL to the death being reported"
    )
    head = "| loss each way | ttd | " + " | ".join(kinds) + " |"
    print(head)
    print("|" + "---|" * (2 + len(kinds)))
    keys = sorted({(r["loss"], r["ttd"]) for r in rows})
    for loss, ttd in keys:
        cells = []
        for kind in kinds:
            mine = [r for r in rows if (r["loss"], r["ttd"], r["kind"]) == (loss, ttd, kind)]
            count = sum(r["false_deaths"] for r in mine)
            per_hour = sum(r["per_hour"] for r in mine)
            cells.append(f"{count} ({per_hour:.0f}/h)" if count else "0")
        print(f"| {loss}% | {ttd:g} s | " + " | ".join(cells) + " |")
    print()
    print("Seconds from SIGKILL to the death (the slowest copy) / from its last reply")
    print("| loss each way | ttd | " + " | ".join(kinds) + " |")
    print("|" + "---|" * (2 + len(kinds)))
    for loss, ttd in keys:
        cells = []
        for kind in kinds:
            mine = [r for r in rows if (r["loss"], r["ttd"], r["kind"]) == (loss, ttd, kind)]
            kills = [r["detected_after_kill"] for r in mine]
            lasts = [r["detected_after_last_reply"] for r in mine]
            if None in kills:
                cells.append("not seen")
                continue
            cell = f"{max(kills):.2f}"  # the slowest of the copies
            if None not in lasts:
                cell += f" / {max(lasts):.2f}"
            cells.append(cell)
        print(f"| {loss}% | {ttd:g} s | " + " | ".join(cells) + " |")


def plot(result: dict[str, Any], kinds: list[str], path: str) -> bool:
    """False deaths an hour by loss, one panel a time_to_dead, one line a kind."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["rows"]
    ttds = sorted({r["ttd"] for r in rows})
    fig, axes = plt.subplots(1, len(ttds), figsize=(5 * len(ttds), 4), squeeze=False)
    for ax, ttd in zip(axes[0], ttds, strict=True):
        for kind in kinds:
            losses = sorted({r["loss"] for r in rows if r["ttd"] == ttd})
            per_hour = [
                sum(
                    r["per_hour"]
                    for r in rows
                    if (r["loss"], r["ttd"], r["kind"]) == (loss, ttd, kind)
                )
                for loss in losses
            ]
            ax.plot(losses, per_hour, marker="o", label=kind)
        ax.set_yscale("symlog", linthresh=1)  # zero stays visible beside the hundreds
        ax.set(
            xlabel="packets lost each way (%)",
            ylabel="false deaths an hour (all copies)",
            title=f"time_to_dead {ttd:g} s",
        )
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def _parse(kind: str, ttd: float) -> tuple[str, int, float | None]:
    """``lone/2:0.25`` -> ("lone", 2 paths, interval 0.25 x ttd); no ":": the default."""
    rest, _, fraction = kind.partition(":")
    base, _, paths = rest.partition("/")
    return base, int(paths or 1), float(fraction) * ttd if fraction else None


def _kind(text: str) -> str:
    try:
        base, paths, _interval = _parse(text, 1.0)
        if text == "HBChannel" or (base in ("lone", "pool") and paths >= 1):
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"a kind is lone or pool, with /PATHS and :INTERVAL (of ttd) if wanted, or HBChannel: "
        f"{text!r}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--losses", type=int, nargs="+", default=[0, 5, 10, 15, 20, 30])
    parser.add_argument("--ttds", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument(
        "--kinds", nargs="+", default=KINDS, type=_kind, help="lone[/N], pool[/N], HBChannel"
    )
    parser.add_argument("--copies", type=int, default=1, help="watchers of each kind per heart")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--plot", help="write a PNG of the false deaths here (matplotlib)")
    args = parser.parse_args(argv)
    if os.environ.get(lossy_net.INSIDE) != "1":
        reason = lossy_net.namespace_unavailable() or lossy_net.nft_missing()
        if reason:
            print(f"benchmarks.lossy cannot run here: {reason}", file=sys.stderr)
            return 2
        argv = sys.argv[1:] if argv is None else argv
        inside = [sys.executable, "-m", "benchmarks.lossy", *argv]
        return lossy_net.run_in_namespace(
            inside, timeout=args.minutes * 60 + 600, capture=False
        ).returncode
    # Each false death would log a line: the table counts them.
    logging.getLogger("heartbeat").setLevel(logging.ERROR)
    tallies, killed, seconds, drops = asyncio.run(
        measure(args.losses, args.ttds, args.kinds, args.minutes * 60, args.copies)
    )
    result = report(tallies, killed, seconds, drops)
    print_table(result, args.kinds)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=1)
    if args.plot and plot(result, args.kinds, args.plot):
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
