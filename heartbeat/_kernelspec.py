"""``heartbeat kernelspec``: install a Python kernel whose heart is watched by its provisioner.

``jupyter execute`` and papermill take a kernel name, not a kernel manager class; a kernel spec
whose metadata names :class:`~heartbeat.jupyter.HeartbeatProvisioner` brings the watch to them.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path

from heartbeat._judge import Judge

#: A headless run watches one kernel: two pings a second cost nothing, and bound the report.
HEADLESS_INTERVAL = 0.5
# What jupyter_client accepts as a kernel name.
_NAME = re.compile(r"[a-zA-Z0-9._-]+")


def spec(
    display_name: str, time_to_dead: float, first_beat: float, interval: float
) -> dict[str, object]:
    """The kernel.json of an ipykernel in this Python, watched by the provisioner."""
    return {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "metadata": {
            "debugger": True,
            "kernel_provisioner": {
                "provisioner_name": "heartbeat-provisioner",
                "config": {
                    "time_to_dead": time_to_dead,
                    "first_beat": first_beat,
                    "interval": interval,
                },
            },
        },
    }


def install(
    name: str,
    display_name: str,
    *,
    time_to_dead: float,
    first_beat: float,
    interval: float | None,
    user: bool,
    prefix: str | None,
) -> Path:
    """Install the kernel spec; returns where. ValueError when it cannot be done here."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        # jupyter_client's own rule; an empty name would install under a temporary folder's.
        raise ValueError(
            f"kernel name {name!r} is not valid: expected ASCII letters, digits, '-', '.' "
            "and '_', at least one"
        )
    if importlib.util.find_spec("ipykernel") is None:
        raise ValueError(f"ipykernel is not installed in {sys.executable}: pip install ipykernel")
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        missing = "jupyter_client is missing: pip install 'kernel-heartbeat[jupyter]'"
        raise ValueError(missing) from None
    if interval is None:
        interval = min(HEADLESS_INTERVAL, time_to_dead / 2)
    Judge(time_to_dead, first_beat, interval)  # the settings' own errors, before installing
    with tempfile.TemporaryDirectory() as tmp:
        kernel_json = spec(display_name, time_to_dead, first_beat, interval)
        (Path(tmp) / "kernel.json").write_text(json.dumps(kernel_json, indent=1))
        destination = KernelSpecManager().install_kernel_spec(
            tmp, kernel_name=name, user=user, prefix=prefix
        )
    return Path(destination)
