"""Finding a kernel's heartbeat endpoint: a url, a connection file, or a kernel id."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from heartbeat import _validate


@dataclass(frozen=True)
class Target:
    """A heart to reach: its ``url``, and the CURVE server key when the kernel uses one."""

    url: str
    curve_serverkey: bytes | None = None
    connection_file: Path | None = None


def runtime_dir() -> Path:
    """Jupyter's runtime directory, where kernels write their connection files."""
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:  # jupyter_core is optional: follow its documented defaults
        if os.environ.get("JUPYTER_RUNTIME_DIR"):
            return Path(os.environ["JUPYTER_RUNTIME_DIR"])
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        if sys.platform == "darwin":
            base = str(Path.home() / "Library" / "Jupyter")
            return Path(base) / "runtime"
        return Path(base) / "jupyter" / "runtime"
    return Path(jupyter_runtime_dir())


def hb_url(info: dict[str, object], source: str) -> Target:
    """The heartbeat endpoint in a connection-file dict; ValueError names what is missing."""
    transport = info.get("transport", "tcp")
    ip = info.get("ip", "127.0.0.1")
    port = info.get("hb_port")
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"{source} has no hb_port (an int), got {port!r}")
    if transport not in ("tcp", "ipc") or not isinstance(ip, str):
        raise ValueError(f"{source} has transport {transport!r}, ip {ip!r}: expected tcp or ipc")
    # Jupyter names ipc endpoints '<ip>-<port>'.
    url = f"tcp://{ip}:{port}" if transport == "tcp" else f"ipc://{ip}-{port}"
    _validate.endpoint(url, bind=False)
    return Target(url, _curve_publickey(info, source))


def _curve_publickey(info: dict[str, object], source: str) -> bytes | None:
    """The heart's CURVE key in a connection file: 40 Z85 characters, or absent or empty
    (no CURVE); ValueError names any other value, which is a config error, not a dead kernel.
    """
    key = info.get("curve_publickey")
    if key is None or key == "":
        return None
    # Text only: 32 characters are no raw key (curve_key() would take 32 bytes as one).
    if isinstance(key, str) and key.isascii() and _validate.is_z85_key(key.encode("ascii")):
        return key.encode("ascii")
    raise ValueError(
        f"{source} has curve_publickey {key!r}: expected {_validate.EXPECTED_CURVE_KEY}"
    )


def read_connection_file(path: str | Path) -> Target:
    """Read a Jupyter connection file; ValueError if it is missing, not JSON or incomplete."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read connection file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"connection file {str(path)!r} is not UTF-8 text (byte {exc.start}): expected the "
            "JSON a kernel manager writes"
        ) from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"connection file {str(path)!r} is not JSON: {exc.msg}") from None
    if not isinstance(info, dict):
        raise ValueError(f"connection file {str(path)!r} is not a JSON object")
    target = hb_url(info, f"connection file {str(path)!r}")
    return Target(target.url, target.curve_serverkey, path)


def resolve(target: str, search_dir: Path | None = None) -> Target:
    """Turn what a user typed into a heart to reach.

    ``target`` is a url (``tcp://127.0.0.1:5555``), a path to a connection file, or a kernel
    id or unique id prefix looked up as ``kernel-<id>*.json`` in Jupyter's runtime directory.
    """
    if "://" in target:
        _validate.endpoint(target, bind=False)
        return Target(target)
    path = Path(target)
    if path.suffix == ".json" or os.sep in target or path.exists():
        return read_connection_file(path)
    directory = search_dir if search_dir is not None else runtime_dir()
    matches = sorted(directory.glob(f"kernel-{target}*.json"))
    if not matches:
        raise ValueError(
            f"no connection file for kernel {target!r} in {str(directory)!r}: expected a url, "
            "a connection file path, or a kernel id (prefix)"
        )
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches[:5])
        raise ValueError(f"kernel id prefix {target!r} is ambiguous: {names}")
    return read_connection_file(matches[0])
