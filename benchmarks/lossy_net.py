"""Real packet loss on loopback, inside a network namespace made for the run.

A process re-runs itself in a new network namespace (``unshare -n``: loopback only, nothing of
this machine's own network is reachable or touched), brings its loopback up, and has nftables
drop a random share of the TCP packets to and from chosen ports, in both directions. TCP then
retransmits what was lost, after a backoff that doubles each time: what a Wi-Fi link, a VPN or
a remote kernel in another zone does to a heartbeat.

    if reason := namespace_unavailable(): skip(reason)
    run_in_namespace(["python", "-m", "benchmarks.lossy", ...])  # inside: lose(port, 20) ...
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

#: Set in the environment of a process run by ``run_in_namespace``.
INSIDE = "HEARTBEAT_NETNS"

_TABLE = "heartbeat_loss"


def namespace_unavailable() -> str | None:
    """Why a namespace with nftables cannot be made here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux's"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare (util-linux) and ip (iproute2)"
    if os.geteuid() != 0:
        return "making a network namespace and its nftables rules needs root"
    probe = subprocess.run(
        ["unshare", "-n", "true"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        return f"unshare -n failed here: {probe.stderr.strip() or probe.returncode}"
    return None


def nft_missing() -> str | None:
    """What to install when nftables is not there, or None."""
    if shutil.which("nft") is None:
        return "nftables is not installed: apt-get install nftables"
    return None


def run_in_namespace(
    argv: list[str], *, timeout: float, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a network namespace of its own, with its loopback up."""
    env = {**os.environ, INSIDE: "1"}
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv],
        env=env,
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
    )


def _nft(*words: str) -> None:
    subprocess.run(["nft", *words], check=True, timeout=30, capture_output=True)


def _input_chain(what: str) -> None:
    if os.environ.get(INSIDE) != "1":
        raise RuntimeError(f"{what}() changes packet filtering: only inside run_in_namespace()")
    _nft("add", "table", "inet", _TABLE)
    _nft("add", "chain", "inet", _TABLE, "input", "{ type filter hook input priority 0; }")


def lose(port: int, percent: int) -> None:
    """Drop ``percent`` % of the TCP packets to and from ``port``, each way, at random (inside
    the namespace only: refuses to run elsewhere). 100: all of them, so that a connect to it
    times out."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be from 0 to 100, got {percent!r}")
    _input_chain("lose")
    # nft refuses "< 100" after "mod 100" (no number is as large): all is a rule of its own.
    share = [] if percent == 100 else ["numgen", "random", "mod", "100", "<", str(percent)]
    for direction in ("dport", "sport"):  # pings to the heart, and its replies
        _nft(
            "add", "rule", "inet", _TABLE, "input", "tcp", direction, str(port),
            *share, "counter", "drop",
        )  # fmt: skip


def unreachable(port: int) -> None:
    """Answer every TCP packet to and from ``port`` with an ICMP host-unreachable, as a router
    that has lost its way to a host does: a connect to it fails at once (EHOSTUNREACH), and a
    connection already made hears nothing more (inside the namespace only)."""
    _input_chain("unreachable")
    for direction in ("dport", "sport"):
        _nft(
            "add", "rule", "inet", _TABLE, "input", "tcp", direction, str(port),
            "counter", "reject", "with", "icmpx", "type", "host-unreachable",
        )  # fmt: skip


def dropped() -> int:
    """Packets dropped (or refused) so far by every rule of ``lose`` and ``unreachable``."""
    listing = subprocess.run(
        ["nft", "list", "table", "inet", _TABLE],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    total = 0
    for line in listing.splitlines():
        words = line.split()
        if "counter" in words and "packets" in words:
            total += int(words[words.index("packets") + 1])
    return total
