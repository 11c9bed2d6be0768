"""The ``heartbeat`` command: demo, probe and watch."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from heartbeat import __version__, _validate
from heartbeat._console import Console, meaning, ms, rule
from heartbeat._judge import Beat, Dead, Event, Stall, StateChanged
from heartbeat.connection import Target, resolve
from heartbeat.monitor import HeartMonitor
from heartbeat.probe import ping


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit 2: scripts and people both get the point without a usage dump.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _seconds(allow_zero: bool = False, least: float | None = None) -> type[float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        try:
            result = _validate.number("value", value, allow_zero=allow_zero)
        except ValueError:
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(
                f"expected a finite number of seconds {bound}, got {text!r}"
            ) from None
        if least is not None and result < least:
            raise argparse.ArgumentTypeError(
                f"expected at least {least:g} s (the shortest a monitor's loop can time), "
                f"got {text!r}"
            )
        return result

    return parse  # type: ignore[return-value]


def _timing_options(parser: argparse.ArgumentParser, time_to_dead: float) -> None:
    parser.add_argument(
        "--time-to-dead",
        type=_seconds(least=_validate.MIN_TIME_TO_DEAD),
        default=time_to_dead,
        metavar="S",
        help=f"seconds of silence, after the grace, that mean death (default {time_to_dead:g})",
    )
    parser.add_argument(
        "--first-beat",
        type=_seconds(allow_zero=True),
        default=5.0,
        metavar="S",
        help="seconds of grace for the kernel to start before judging (default 5)",
    )


def _parser() -> _Parser:
    parser = _Parser(
        prog="heartbeat",
        description="Tell a dead Jupyter kernel from a busy one, without false alarms.",
        epilog="Start with: heartbeat demo",
    )
    parser.add_argument("--version", action="version", version=f"heartbeat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="watch a stand-in kernel through busy spells, stalls and a real death (~20 s)",
        description="Start a stand-in kernel and a HeartMonitor, and show in about 20 s: "
        "beats while idle, beats while the kernel holds the GIL, no false alarm while the "
        "manager's own loop is blocked, and a real death reported within the bound.",
        epilog="example: heartbeat demo --time-to-dead 0.5",
    )
    _timing_options(demo, time_to_dead=1.0)

    probe = sub.add_parser(
        "probe",
        help="ping a kernel's heart once (exit 0 answered, 1 no answer, 2 bad input)",
        description="Ping once and print the round trip. TARGET is a url, a connection file, "
        "or a kernel id (prefix) looked up in Jupyter's runtime directory.",
        epilog="examples: heartbeat probe tcp://127.0.0.1:5555\n"
        "          heartbeat probe kernel-1234.json --timeout 1 --json\n"
        "          heartbeat probe 8f3e --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    probe.add_argument("target", metavar="TARGET")
    probe.add_argument(
        "--timeout",
        type=_seconds(),
        default=2.0,
        metavar="S",
        help="seconds to wait for the answer (default 2)",
    )
    probe.add_argument("--json", action="store_true", help="print one JSON object")

    watch = sub.add_parser(
        "watch",
        help="watch a kernel's heart until it dies (exit 1) or Ctrl-C (exit 0)",
        description="Watch with a HeartMonitor: a live status line, and state changes as "
        "timestamped lines. TARGET is a url, a connection file, or a kernel id (prefix).",
        epilog="examples: heartbeat watch tcp://127.0.0.1:5555 --time-to-dead 10\n"
        "          heartbeat watch 8f3e --json | jq .",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("target", metavar="TARGET")
    _timing_options(watch, time_to_dead=3.0)
    watch.add_argument("--json", action="store_true", help="one JSON object a line per event")

    kernelspec = sub.add_parser(
        "kernelspec",
        help="install a Python kernel whose frozen heart ends a headless run (jupyter execute, "
        "papermill)",
        description="Install a kernel spec for the ipykernel of this Python whose provisioner "
        "watches its heart: a kernel frozen mid-cell is killed and the run ends with "
        "DeadKernelError instead of waiting for the cell timeout.",
        epilog="example: heartbeat kernelspec && jupyter execute "
        "--kernel_name=python3-heartbeat notebook.ipynb",
    )
    kernelspec.add_argument("--name", default="python3-heartbeat", help="kernel name")
    kernelspec.add_argument(
        "--display-name", default="Python 3 (heartbeat)", help="name shown in front ends"
    )
    _timing_options(kernelspec, time_to_dead=3.0)
    kernelspec.add_argument(
        "--interval",
        type=_seconds(),
        default=None,
        metavar="S",
        help="seconds between pings (default 0.5, at most time_to_dead / 2)",
    )
    where = kernelspec.add_mutually_exclusive_group()
    where.add_argument(
        "--user", action="store_true", default=True, help="for this user (the default)"
    )
    where.add_argument("--sys-prefix", action="store_true", help=f"in {sys.prefix}")
    where.add_argument("--prefix", metavar="DIR", help="under DIR/share/jupyter/kernels")
    return parser


def _bad_input(command: str, message: str) -> int:
    print(f"heartbeat {command}: error: {message}", file=sys.stderr)
    return 2


def _probe(args: argparse.Namespace) -> int:
    try:
        target = resolve(args.target)
    except (ValueError, TypeError) as exc:
        return _bad_input("probe", str(exc))
    try:
        rtt = ping(target.url, args.timeout, curve_serverkey=target.curve_serverkey)
    except (ValueError, TypeError) as exc:
        # A url zmq itself refuses is bad input (exit 2), not "no answer" (exit 1), which a
        # liveness probe or a script would act on.
        return _bad_input("probe", str(exc))
    if args.json:
        print(
            json.dumps(
                {"target": args.target, "url": target.url, "alive": rtt is not None, "rtt": rtt}
            )
        )
    elif rtt is None:
        print(f"{target.url}: no answer within {args.timeout:g} s")
    else:
        print(f"{target.url}: answered in {ms(rtt)}")
    return 0 if rtt is not None else 1


class _Watcher:
    """Turns monitor events into lines, JSON records and the live status line."""

    def __init__(self, console: Console, json_lines: bool) -> None:
        self.console = console
        self.json_lines = json_lines
        self.monitor: HeartMonitor | None = None

    def on_event(self, event: Event) -> None:
        if self.json_lines:
            if isinstance(event, Beat):
                self.console.record("beat", rtt=event.rtt, stale=event.stale)
            elif isinstance(event, StateChanged):
                self.console.record("state", old=event.old.value, new=event.new.value)
            elif isinstance(event, Stall):
                self.console.record("stall", late_by=event.late_by)
            elif isinstance(event, Dead):
                self.console.record("dead", silent_for=event.silent_for)
            return
        if isinstance(event, StateChanged) and self.monitor is not None:
            words = meaning(event.new, self.monitor.time_to_dead)
            self.console.line(f"{event.old} -> {event.new}: {words}")
        elif isinstance(event, Stall):
            self.console.line(f"this monitor stalled {event.late_by:.2f} s; not counted")
        elif isinstance(event, Dead):
            self.console.line(f"dead: no reply for {event.silent_for:.2f} s")
        self.show()

    def summary(self) -> str:
        m = self.monitor
        assert m is not None
        s = m.stats
        return (
            f"{m.state.value:<8} | last rtt {ms(m.last_rtt)} | median {ms(s.median)} "
            f"p99 {ms(s.p99)} | late {s.late} | up {m.uptime or 0:.0f} s"
        )

    def show(self) -> None:
        if self.monitor is not None:
            self.console.status(self.summary())


async def _watch_until_done(target: Target, args: argparse.Namespace, watcher: _Watcher) -> int:
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    died = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    try:
        monitor = HeartMonitor(
            target.url,
            time_to_dead=args.time_to_dead,
            first_beat=args.first_beat,
            curve_serverkey=target.curve_serverkey,
            on_event=watcher.on_event,
        )
    except (ValueError, TypeError) as exc:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        watcher.console.close()
        return _bad_input("watch", str(exc))
    watcher.monitor = monitor
    console = watcher.console
    if args.json:
        console.record(
            "watch",
            url=target.url,
            time_to_dead=args.time_to_dead,
            first_beat=args.first_beat,
            interval=monitor.interval,
        )
    else:
        console.line(
            f"watching {target.url} (time_to_dead {args.time_to_dead:g} s, "
            f"first_beat {args.first_beat:g} s): {rule(args.time_to_dead, monitor.interval)}; "
            "Ctrl-C to stop"
        )
    try:
        try:
            monitor.start(died.set)
        except (ValueError, TypeError) as exc:  # a url zmq itself refuses: bad input
            return _bad_input("watch", str(exc))
        ticks = 0
        while not (died.is_set() or interrupted.is_set()):
            await asyncio.sleep(0.2)
            ticks += 1
            watcher.show()
            if not console.live and not args.json and ticks % 50 == 0:
                console.line(watcher.summary())
    finally:
        monitor.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        console.close()
    return 1 if died.is_set() else 0


def _watch(args: argparse.Namespace) -> int:
    try:
        target = resolve(args.target)
    except (ValueError, TypeError) as exc:
        return _bad_input("watch", str(exc))
    watcher = _Watcher(Console(json_lines=args.json), args.json)
    return asyncio.run(_watch_until_done(target, args, watcher))


def _kernelspec(args: argparse.Namespace) -> int:
    from heartbeat import _kernelspec

    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        path = _kernelspec.install(
            args.name,
            args.display_name,
            time_to_dead=args.time_to_dead,
            first_beat=args.first_beat,
            interval=args.interval,
            user=prefix is None,
            prefix=prefix,
        )
    except (ValueError, OSError) as exc:
        return _bad_input("kernelspec", str(exc))
    print(f"installed kernel spec {args.name} in {path}")
    print(f"run: jupyter execute --kernel_name={args.name} notebook.ipynb")
    print(f" or: papermill -k {args.name} in.ipynb out.ipynb")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``heartbeat`` console script."""
    args = _parser().parse_args(argv)
    # Library warnings (a death, a stall) go to stderr; the command prints its own story.
    logging.basicConfig(level=logging.ERROR, format="heartbeat: %(message)s")
    if args.command == "demo":
        from heartbeat import _demo

        return _demo.main(args.time_to_dead, args.first_beat)
    if args.command == "probe":
        return _probe(args)
    if args.command == "kernelspec":
        return _kernelspec(args)
    return _watch(args)


if __name__ == "__main__":
    sys.exit(main())
