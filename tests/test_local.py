"""Addresses of this machine are not remote: the defaults for a heart beyond it (four paths, a
quarter of the interval) are not given to a kernel at 0.0.0.0, at the host's own address or
name, or at ip6-localhost; and a heart warns only when it is bound beyond loopback."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess

import pytest

from heartbeat import Heart, HeartMonitor, _validate
from heartbeat._local import on_this_machine


def own_addresses() -> list[str]:
    """This machine's addresses other than loopback, as `ip` lists them."""
    ip = shutil.which("ip")
    if ip is None:
        return []
    out = subprocess.run([ip, "-o", "addr"], capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        address = fields[3].partition("/")[0]
        if fields[1] != "lo" and not address.startswith("fe80"):  # link-local needs a scope
            found.append(f"[{address}]" if ":" in address else address)
    return found


def paths_of(host: str) -> int:
    return HeartMonitor(f"tcp://{host}:5555", time_to_dead=2.0).paths


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "[::]", "127.0.0.2", "ip6-localhost", "ip6-loopback", "LOCALHOST"]
)
def test_hosts_that_are_this_machine_get_one_path(host: str) -> None:
    assert on_this_machine(_validate.endpoint(f"tcp://{host}:1", bind=False))
    assert paths_of(host) == 1


def test_this_machines_own_name_and_addresses_get_one_path() -> None:
    assert paths_of(socket.gethostname()) == 1
    addresses = own_addresses()
    if not addresses:
        pytest.skip("this machine has no address but loopback")
    for address in addresses:
        monitor = HeartMonitor(f"tcp://{address}:5555", time_to_dead=2.0)
        assert monitor.paths == 1, address
        assert monitor.interval == 1.0, address  # time_to_dead / 2, not / 8


def test_other_hosts_are_remote() -> None:
    # 203.0.113.0/24 is documentation space: no machine's own. Nothing is sent anywhere.
    for host in ("203.0.113.7", "heart.example.invalid", "[2001:db8::7]"):
        assert not on_this_machine(_validate.endpoint(f"tcp://{host}:1", bind=False))
        assert paths_of(host) == 4


def test_a_heart_bound_to_loopback_by_interface_name_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="heartbeat"), Heart("tcp://lo:0") as heart:
        assert heart.url.startswith("tcp://127.0.0.1:")
    assert [r for r in caplog.records if "other machines can reach it" in r.getMessage()] == []


def test_a_heart_bound_to_every_address_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="heartbeat"), Heart("tcp://0.0.0.0:0"):
        pass
    assert [r for r in caplog.records if "other machines can reach it" in r.getMessage()]
