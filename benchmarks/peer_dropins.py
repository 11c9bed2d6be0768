"""A pytest plugin for the peers' own suites (``python -m benchmarks.peer_suites`` loads it).

``-p benchmarks.peer_dropins`` in a run of jupyter_client's, jupyter_server's or nbclient's tests:

- always: records every test's outcome, as it ends, to the file named by
  ``HEARTBEAT_PEER_RECORD`` (JSON lines), so a run that is killed still tells what passed
  and which test was running;
- with ``HEARTBEAT_PEER_DROPINS=1``: puts our drop-ins in place of jupyter_client's and
  jupyter_server's classes, everywhere their tests and their own code look them up, before
  any test module is imported, and counts how often ours were used (written to the record at
  the end, and printed), so that the counts prove the drop-ins ran.

What is swapped, and why there:

- ``jupyter_client.KernelManager`` and ``jupyter_client.manager.KernelManager`` (the tests
  import both names; ``start_new_kernel`` looks the latter up when it runs), and
  ``jupyter_client.ioloop.IOLoopKernelManager`` (test_restarter imports it; it is
  ``MultiKernelManager``'s and jupyter_server's ``MappingKernelManager``'s default
  ``kernel_manager_class``, a dotted name imported when used): HeartbeatIOLoopKernelManager.
- ``jupyter_client.AsyncKernelManager``, ``jupyter_client.manager.AsyncKernelManager``
  (``start_new_async_kernel``), ``jupyter_client.ioloop.AsyncIOLoopKernelManager``
  (``AsyncMultiKernelManager``'s default) and
  ``jupyter_server.services.kernels.kernelmanager.ServerKernelManager``
  (``AsyncMappingKernelManager``'s default, and what test_events makes):
  HeartbeatKernelManager.
- ``hb_channel_class`` of the blocking, async and threaded kernel clients (a class given to
  ``Type`` when jupyter_client was imported, so the trait's default is changed, not a name):
  our HBChannel.

One exception: in a test module that names ``ServerKernelManager`` (ours), ``AsyncKernelManager``
stays the stock class beneath it (test_events mocks that class's methods to see the events the
server kernel manager emits around them).

The modules that define the stock classes (``jupyter_client.ioloop.manager``) keep them: a test
that names one there on purpose (jupyter_server's warning for a manager that is not a
``ServerKernelManager``) still gets it, and our managers subclass them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

RECORD_ENV = "HEARTBEAT_PEER_RECORD"
DROPINS_ENV = "HEARTBEAT_PEER_DROPINS"

used: Counter[str] = Counter()
swapped: dict[str, str] = {}  # "module.Name" -> our class
stock_classes: dict[str, type] = {}  # "module.Name" -> the class it named before
_main_pid = os.getpid()


def _record(line: dict[str, Any]) -> None:
    path = os.environ.get(RECORD_ENV)
    if path and os.getpid() == _main_pid:  # not from a test's forked child
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def _counting(cls: type, method: str, key: str) -> None:
    original: Callable[..., Any] = getattr(cls, method)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        used[key] += 1
        return original(self, *args, **kwargs)

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(cls, method, wrapper)


def _swap_dropins() -> None:
    import jupyter_client
    import jupyter_client.ioloop
    import jupyter_client.manager
    from jupyter_client.asynchronous.client import AsyncKernelClient
    from jupyter_client.blocking.client import BlockingKernelClient
    from jupyter_client.channels import HBChannel as StockHBChannel

    # A trait naming a swapped class by its dotted name resolves it on first use: resolve it
    # now, to the stock class (the restarters' kernel_manager must accept either manager).
    from jupyter_client.restarter import KernelRestarter
    from jupyter_client.threaded import ThreadedKernelClient

    # Imported before anything is swapped: our classes subclass the stock ones.
    from heartbeat.jupyter import HBChannel, HeartbeatIOLoopKernelManager, HeartbeatKernelManager
    from heartbeat.jupyter.manager import _HeartbeatMixin

    KernelRestarter.class_traits()["kernel_manager"]._resolve_classes()
    # nbclient's kernel_manager_class is a Type bounded by jupyter_client's KernelManager, taken
    # when nbclient is imported: imported first, the bound is the stock class, as in any program
    # that uses nbclient (and our managers subclass it). Its default, the AsyncKernelManager
    # looked up when used, is swapped below.
    with contextlib.suppress(ImportError):
        import nbclient.client  # noqa: F401

    places: list[tuple[types.ModuleType, str, type]] = [
        (jupyter_client, "KernelManager", HeartbeatIOLoopKernelManager),
        (jupyter_client.manager, "KernelManager", HeartbeatIOLoopKernelManager),
        (jupyter_client.ioloop, "IOLoopKernelManager", HeartbeatIOLoopKernelManager),
        (jupyter_client, "AsyncKernelManager", HeartbeatKernelManager),
        (jupyter_client.manager, "AsyncKernelManager", HeartbeatKernelManager),
        (jupyter_client.ioloop, "AsyncIOLoopKernelManager", HeartbeatKernelManager),
    ]
    try:
        import jupyter_server.services.kernels.kernelmanager as server_km
    except ImportError:  # pragma: no cover - jupyter_client's suite alone
        pass
    else:
        places.append((server_km, "ServerKernelManager", HeartbeatKernelManager))
    for module, name, ours in places:
        stock = getattr(module, name)
        assert issubclass(ours, stock), f"{ours} is no drop-in for {module.__name__}.{name}"
        stock_classes[f"{module.__name__}.{name}"] = stock
        setattr(module, name, ours)
        swapped[f"{module.__name__}.{name}"] = ours.__qualname__

    for client in (BlockingKernelClient, AsyncKernelClient, ThreadedKernelClient):
        trait = client.class_traits()["hb_channel_class"]
        assert trait.default_value is StockHBChannel, (client, trait.default_value)
        trait.default_value = HBChannel
        swapped[f"{client.__qualname__}.hb_channel_class"] = HBChannel.__qualname__

    _counting(HeartbeatKernelManager, "__init__", "HeartbeatKernelManager made")
    _counting(HeartbeatIOLoopKernelManager, "__init__", "HeartbeatIOLoopKernelManager made")
    _counting(_HeartbeatMixin, "_start_heart_monitor", "kernel hearts watched by our managers")
    _counting(HBChannel, "start", "HBChannel started")


_SWAPPED_NAMES = (
    "KernelManager",
    "AsyncKernelManager",
    "IOLoopKernelManager",
    "AsyncIOLoopKernelManager",
    "ServerKernelManager",
)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(DROPINS_ENV) == "1":
        _swap_dropins()
        import heartbeat

        _record({"dropins": swapped, "heartbeat": heartbeat.__file__})


def pytest_collection_finish(session: pytest.Session) -> None:
    if os.environ.get(DROPINS_ENV) != "1":
        return
    import jupyter_client.manager

    stock_async = stock_classes["jupyter_client.manager.AsyncKernelManager"]
    for item in session.items:
        module = getattr(item, "module", None)
        server = getattr(module, "ServerKernelManager", None)
        # A test of ServerKernelManager (ours now) that also names AsyncKernelManager means
        # the class beneath it (test_events mocks its methods, to see the server's events
        # around them): the stock one, which ours builds on too.
        ours = isinstance(server, type) and server.__module__.startswith("heartbeat.")
        if ours and getattr(module, "AsyncKernelManager", None) is not None:
            module.AsyncKernelManager = stock_async  # type: ignore[union-attr]

    # Every name a test module imported under a swapped name is ours.
    assert jupyter_client.manager.KernelManager.__module__ == "heartbeat.jupyter.manager"
    for item in session.items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        for name in _SWAPPED_NAMES:
            value = vars(module).get(name)
            if value is stock_async and hasattr(module, "ServerKernelManager"):
                continue
            if isinstance(value, type) and not value.__module__.startswith("heartbeat."):
                raise pytest.UsageError(f"{module.__name__}.{name} is still {value}")


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _record({"start": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        timeout = report.failed and "Timeout" in str(report.longrepr)[-4000:]
        outcome: str = "timeout" if timeout else report.outcome
        if report.when != "call" and report.outcome == "failed":
            outcome = "timeout" if timeout else "error"
        _record({"test": report.nodeid, "when": report.when, "outcome": outcome})


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if os.environ.get(DROPINS_ENV) == "1":
        terminalreporter.write_line(f"drop-ins used: {dict(used)}")


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.environ.get(DROPINS_ENV) == "1":
        _record({"used": dict(used)})
    sys.stdout.flush()
