"""The kernel side: an echo responder that answers while Python is busy."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
import uuid
from types import TracebackType
from typing import Any

import zmq
from zmq.devices import ThreadDevice

from heartbeat import _sockets, _validate

log = logging.getLogger("heartbeat")

#: Pings are a few dozen bytes; anything far larger is an attack or a bug, not a ping.
DEFAULT_MAX_MESSAGE_SIZE = 8192
# ZMQ_MAXMSGSIZE is a signed 64-bit number of bytes.
_MAX_MESSAGE_SIZE = 2**63 - 1

# Bounded waits on the echo thread, so a broken libzmq cannot hang start() or stop().
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_PORT_RELEASE_TIMEOUT = 2.0


def _wait_until_bindable(url: str, timeout: float) -> None:
    """Return once ``url``'s tcp port can be bound again, or after ``timeout`` seconds."""
    host, _, port = url[len("tcp://") :].rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            None if host in ("*", "") else host, int(port), type=socket.SOCK_STREAM
        )
    except (OSError, ValueError):
        return
    family, kind, proto, _, address = infos[0]
    end = time.monotonic() + timeout
    while True:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as zmq does
            try:
                probe.bind(address)
                return
            except OSError:
                if time.monotonic() > end:
                    return
        time.sleep(0.005)


class _EchoDevice(ThreadDevice):
    """A steerable proxy whose frontend is also its backend: every message goes back out.

    The sockets are made in the device's own thread (zmq sockets are not thread-safe): the
    ROUTER that echoes, and the PAIR that ``stop()`` sends TERMINATE to; no capture socket
    (zmq.devices' ProxySteerable would make one, unused). Whether binding worked, and the
    endpoint actually bound, are reported back through ``ready``, ``error`` and ``endpoint``.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        url: str,
        ctrl_url: str,
        options: list[tuple[int, Any]],
    ) -> None:
        super().__init__(zmq.QUEUE, zmq.ROUTER, -1)
        self.context = context
        self._url = url
        self.ctrl_url = ctrl_url
        self._options = options
        self.ready = threading.Event()
        # What kept it from binding: a ZMQError, or anything else setting an option raised.
        self.error: Exception | None = None
        self.endpoint = ""

    def run_device(self) -> None:
        made: list[zmq.Socket[Any]] = []
        try:
            try:
                echo = self.context.socket(zmq.ROUTER)
                made.append(echo)
                # Linger 0: a heart being stopped has nothing worth delivering.
                echo.linger = 0
                for option, value in self._options:
                    echo.setsockopt(option, value)
                echo.bind(self._url)
                ctrl = self.context.socket(zmq.PAIR)
                made.append(ctrl)
                ctrl.linger = 0
                ctrl.bind(self.ctrl_url)
                self.endpoint = echo.get(zmq.LAST_ENDPOINT).decode()
            except Exception as exc:
                # Any error, not only zmq's: a thread that died here unseen would leave start()
                # saying "running" with nothing bound. start() raises it for us.
                self.error = exc
                return
            finally:
                self.ready.set()
            # No capture socket: nothing but the echo runs per ping, and it runs without the GIL.
            zmq.proxy_steerable(echo, echo, None, ctrl)
        finally:
            for socket_ in made:
                socket_.close(linger=0)


class Heart:
    """Answers heartbeat pings from a thread that never needs the GIL.

    Any frames that arrive on the ROUTER socket are sent back to their sender unchanged, which is
    what jupyter_client's ``HBChannel`` and any REQ or DEALER client expect.

    Parameters
    ----------
    url:
        Where to bind: ``tcp://host:port`` (port 0: any free port), ``ipc://path`` or
        ``inproc://name``. Loopback by default; binding elsewhere without CURVE logs a warning.
    context:
        The zmq context; default ``zmq.Context.instance()``. It is never terminated by ``stop()``.
    max_message_size:
        Bytes; a peer sending a larger message is disconnected (ZMQ_MAXMSGSIZE). None: no limit.
    curve_secretkey:
        Make the heart a CURVE server with this secret key (Z85); only clients that know its
        public key get answers.

    Examples
    --------
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
        curve_secretkey: bytes | str | None = None,
    ) -> None:
        self._endpoint = _validate.endpoint(url, bind=True)
        self._curve_secretkey = (
            None
            if curve_secretkey is None
            else _validate.curve_key("curve_secretkey", curve_secretkey)
        )
        if context is not None and not isinstance(context, zmq.Context):
            raise TypeError(f"context must be a zmq.Context or None, got {context!r}")
        expected = f"an int from 64 to {_MAX_MESSAGE_SIZE} (bytes) or None"
        if max_message_size is not None and (
            isinstance(max_message_size, bool) or not isinstance(max_message_size, int)
        ):
            raise TypeError(f"max_message_size must be {expected}, got {max_message_size!r}")
        if max_message_size is not None and not 64 <= max_message_size <= _MAX_MESSAGE_SIZE:
            raise ValueError(f"max_message_size must be {expected}, got {max_message_size!r}")
        self._requested_url = url
        self._context = context
        self._max_message_size = max_message_size
        self._device: _EchoDevice | None = None
        self._url = ""
        # start() and stop() from two threads run one at a time: each sees what the other did.
        self._lifecycle = threading.Lock()

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
        with self._lifecycle:
            self._start()

    def _start(self) -> None:
        if self._device is not None:
            return
        context = self._context if self._context is not None else zmq.Context.instance()
        options: list[tuple[int, Any]] = []
        if self._endpoint.is_ipv6:
            options.append((zmq.IPV6, 1))
        if self._max_message_size is not None:
            options.append((zmq.MAXMSGSIZE, self._max_message_size))
        if self._curve_secretkey is not None:
            options += [
                (zmq.CURVE_SERVER, 1),
                (zmq.CURVE_SECRETKEY, self._curve_secretkey),
                (zmq.CURVE_PUBLICKEY, zmq.curve_public(self._curve_secretkey)),
            ]
        ctrl_url = f"inproc://heartbeat-ctrl-{uuid.uuid4().hex}"
        device = _EchoDevice(context, self._requested_url, ctrl_url, options)
        device.start()
        device.launcher.name = "heartbeat-heart"
        if not device.ready.wait(_START_TIMEOUT):  # pragma: no cover - libzmq wedged
            raise RuntimeError(f"heart on {self._requested_url!r} did not start")
        if device.error is not None:
            device.join(_STOP_TIMEOUT)
            err = device.error
            if not isinstance(err, zmq.ZMQError):
                raise RuntimeError(
                    f"cannot start a heart on {self._requested_url!r}: {err!r}"
                ) from err
            if err.errno == errno.EMFILE:
                raise _sockets.socket_error(
                    err, context, f"cannot start a heart on {self._requested_url!r}"
                )
            raise ValueError(
                f"cannot bind heart to {self._requested_url!r}: {err.strerror}; "
                "expected a free address on this machine"
            ) from None
        self._device = device
        self._url = device.endpoint
        # Decided from where it is bound, not from what was asked: 'tcp://lo:0' (an interface
        # name) binds loopback only, and 'tcp://0.0.0.0:0' every address.
        bound = _validate.endpoint(self._url, bind=True)
        if not bound.is_loopback and self._curve_secretkey is None:
            log.warning(
                "heart bound to %s without CURVE: other machines can reach it, and anyone "
                "there can ping it or flood it; pass curve_secretkey= to authenticate",
                self._url,
            )

    def stop(self) -> None:
        """Stop answering, end the thread and close the sockets. Idempotent.

        The context is left alone, so a kernel's other sockets keep working.
        """
        with self._lifecycle:
            self._stop()

    def _stop(self) -> None:
        device, self._device = self._device, None
        url, self._url = self._url, ""
        if device is None:
            return
        context = device.context
        try:
            with context.socket(zmq.PAIR) as ctrl:
                # Not linger 0: that could discard the command before the proxy reads it.
                ctrl.linger = 1000
                ctrl.connect(device.ctrl_url)
                ctrl.send(b"TERMINATE")
                # Keep our end open until the proxy has read the command and exited.
                device.join(_STOP_TIMEOUT)
        except zmq.ZMQError:
            # The context was terminated under us: the proxy has seen ETERM and is exiting.
            device.join(_STOP_TIMEOUT)
        if device.launcher.is_alive():  # pragma: no cover - libzmq wedged
            log.error("heart thread did not stop within %s s", _STOP_TIMEOUT)
        if self._endpoint.transport == "tcp":
            # zmq closes listeners in its I/O thread, after close() returns: wait (briefly)
            # until the port is free, so a heart restarted on it binds at once.
            _wait_until_bindable(url, _PORT_RELEASE_TIMEOUT)

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
