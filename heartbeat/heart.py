"""The kernel side: an echo responder that answers while Python is busy."""

from __future__ import annotations

import logging
import threading
import uuid
from types import TracebackType
from typing import Any

import zmq
from zmq.devices import ThreadProxySteerable

from heartbeat import _validate

log = logging.getLogger("heartbeat")

#: Pings are a few dozen bytes; anything far larger is an attack or a bug, not a ping.
DEFAULT_MAX_MESSAGE_SIZE = 8192

# Bounded waits on the echo thread, so a broken libzmq cannot hang start() or stop().
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


class _EchoDevice(ThreadProxySteerable):  # type: ignore[misc]
    """A steerable proxy whose frontend is also its backend: every message goes back out.

    The sockets are made in the device's own thread (zmq sockets are not thread-safe); this
    subclass reports back whether binding worked, and the endpoint actually bound.
    """

    def __init__(self, context: zmq.Context[Any], url: str, ctrl_url: str) -> None:
        # out_type < 0: the ROUTER is both ends, so frames return to the peer that sent them.
        super().__init__(zmq.ROUTER, -1, zmq.PUB, zmq.PAIR)
        self.context_factory = lambda: context
        self.bind_in(url)
        self.bind_ctrl(ctrl_url)
        self.ready = threading.Event()
        self.error: zmq.ZMQError | None = None
        self.endpoint = ""

    def run_device(self) -> None:
        try:
            ins, outs, _mons, ctrls = self._setup_sockets()
            self.endpoint = ins.get(zmq.LAST_ENDPOINT).decode()
        except zmq.ZMQError as exc:
            # Device.run closes the sockets made so far; start() raises the error for us.
            self.error = exc
            return
        finally:
            self.ready.set()
        # No capture socket: nothing but the echo runs per ping, and it runs without the GIL.
        zmq.proxy_steerable(ins, outs, None, ctrls)


class Heart:
    """Answers heartbeat pings from a thread that never needs the GIL.

    Any frames that arrive on the ROUTER socket are sent back to their sender unchanged, which is
    what jupyter_client's ``HBChannel`` and any REQ or DEALER client expect.

    >>> with Heart("tcp://127.0.0.1:0") as heart:
    ...     heart.port > 0
    True
    """

    def __init__(
        self,
        url: str = "tcp://127.0.0.1:0",
        *,
        context: zmq.Context[Any] | None = None,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._endpoint = _validate.endpoint(url, bind=True)
        if context is not None and not isinstance(context, zmq.Context):
            raise TypeError(f"context must be a zmq.Context or None, got {context!r}")
        if max_message_size is not None and (
            isinstance(max_message_size, bool)
            or not isinstance(max_message_size, int)
            or max_message_size < 64
        ):
            raise ValueError(
                f"max_message_size must be an int >= 64 (bytes) or None, got {max_message_size!r}"
            )
        self._requested_url = url
        self._context = context
        self._max_message_size = max_message_size
        self._device: _EchoDevice | None = None
        self._ctrl_url = ""
        self._url = ""

    @property
    def url(self) -> str:
        """The bound endpoint, with the real port; the requested url before ``start()``."""
        return self._url or self._requested_url

    @property
    def port(self) -> int | None:
        """The bound tcp port once started, else None."""
        if not self._url or self._endpoint.transport != "tcp":
            return None
        return int(self._url.rpartition(":")[2])

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._device is not None

    def start(self) -> None:
        """Bind and start answering; returns once pings are answered. Idempotent.

        Raises ValueError when the address cannot be bound, with nothing left running.
        """
        if self._device is not None:
            return
        context = self._context if self._context is not None else zmq.Context.instance()
        self._ctrl_url = f"inproc://heartbeat-ctrl-{uuid.uuid4().hex}"
        device = _EchoDevice(context, self._requested_url, self._ctrl_url)
        # Linger 0: a heart being stopped has nothing worth delivering.
        device.setsockopt_in(zmq.LINGER, 0)
        device.setsockopt_ctrl(zmq.LINGER, 0)
        device.setsockopt_mon(zmq.LINGER, 0)
        if self._endpoint.is_ipv6:
            device.setsockopt_in(zmq.IPV6, 1)
        if self._max_message_size is not None:
            device.setsockopt_in(zmq.MAXMSGSIZE, self._max_message_size)
        device.start()
        device.launcher.name = "heartbeat-heart"
        if not device.ready.wait(_START_TIMEOUT):  # pragma: no cover - libzmq wedged
            raise RuntimeError(f"heart on {self._requested_url!r} did not start")
        if device.error is not None:
            device.join(_STOP_TIMEOUT)
            err = device.error
            raise ValueError(
                f"cannot bind heart to {self._requested_url!r}: {err.strerror}; "
                "expected a free address on this machine"
            ) from None
        self._device = device
        self._url = device.endpoint
        if not self._endpoint.is_loopback:
            log.warning(
                "heart bound to %s, which other machines can reach; anyone there can ping it",
                self._url,
            )

    def stop(self) -> None:
        """Stop answering, end the thread and close the sockets. Idempotent.

        The context is left alone, so a kernel's other sockets keep working.
        """
        device, self._device = self._device, None
        self._url = ""
        if device is None:
            return
        context = device.context_factory()
        try:
            with context.socket(zmq.PAIR) as ctrl:
                # Not linger 0: that could discard the command before the proxy reads it.
                ctrl.linger = 1000
                ctrl.connect(self._ctrl_url)
                ctrl.send(b"TERMINATE")
                # Keep our end open until the proxy has read the command and exited.
                device.join(_STOP_TIMEOUT)
        except zmq.ZMQError:
            # The context was terminated under us: the proxy has seen ETERM and is exiting.
            device.join(_STOP_TIMEOUT)
        if device.launcher.is_alive():  # pragma: no cover - libzmq wedged
            log.error("heart thread did not stop within %s s", _STOP_TIMEOUT)

    def __enter__(self) -> Heart:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Heart {self.url} {state}>"
