"""The running cell told why its kernel died: jupyter_server's kernel websocket, with a notice.

:class:`DeathNoticeConnection` is jupyter_server's ``ZMQChannelsWebsocketConnection`` (the
connection behind ``/api/kernels/<id>/channels``, which JupyterLab and Notebook 7 use) that
follows which ``execute_request`` the kernel is running (:class:`RunningCell`). When a kernel
of ours dies (``add_death_callback`` of our kernel managers, called before the restarter's
callbacks), that request gets an IOPub ``error`` message naming
the cause (``Death.notice()``): the front end shows it as the cell's error output, before the
"restarting" (or "dead") status that brings up its restart dialog.

Turned on by the server extension (``heartbeat.jupyter``, on once installed), or
by ``ServerApp.kernel_websocket_connection_class``.
"""

from __future__ import annotations

import json
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

from heartbeat._cause import Death
from heartbeat.jupyter._watched import _HeartbeatMixin

_V1 = "v1.kernel.websocket.jupyter.org"


# Requests without a reply kept at most (a client that never gets replies must not grow this).
_PENDING = 1000


class RunningCell:
    """Which ``execute_request`` a kernel is running, as one websocket sees it (plain data in,
    no I/O): the one its IOPub ``status`` says it is busy with; else (that status can be
    missed, by a subscription that was not yet made when a cell killed its kernel at once) the
    oldest request this websocket's client sent that has no reply yet, the kernel running
    requests in order."""

    def __init__(self) -> None:
        self._busy: dict[str, Any] | None = None
        self._pending: dict[str, dict[str, Any]] = {}

    def requested(self, header: dict[str, Any]) -> None:
        """The client sent a shell message with this header."""
        if header.get("msg_type") == "execute_request" and "msg_id" in header:
            self._pending[header["msg_id"]] = header
            if len(self._pending) > _PENDING:
                del self._pending[next(iter(self._pending))]

    def replied(self, header: dict[str, Any], parent: dict[str, Any]) -> None:
        """The kernel sent a shell message with this header and parent header."""
        if header.get("msg_type") == "execute_reply":
            self._pending.pop(parent.get("msg_id", ""), None)

    def status(self, state: object, parent: dict[str, Any]) -> None:
        """The kernel's IOPub status: ``state`` ("busy", "idle"...) about ``parent``."""
        if state == "busy" and parent.get("msg_type") == "execute_request":
            self._busy = parent
        elif state == "idle":
            msg_id = parent.get("msg_id", "")
            if self._busy is not None and msg_id == self._busy.get("msg_id"):
                self._busy = None
            self._pending.pop(msg_id, None)

    @property
    def running(self) -> dict[str, Any] | None:
        """The header of the request the kernel runs now, or None."""
        if self._busy is not None:
            return self._busy
        return next(iter(self._pending.values()), None)

    def clear(self) -> None:
        """Forget everything (its kernel died: nothing it was asked will be answered)."""
        self._busy = None
        self._pending.clear()


def death_error(death: Death) -> dict[str, Any]:
    """The content of the IOPub ``error`` message that tells a running cell of its death."""
    notice = death.notice()
    return {"ename": "KernelDied", "evalue": notice, "traceback": [f"KernelDied: {notice}"]}


class DeathNoticeConnection(ZMQChannelsWebsocketConnection):
    """A kernel websocket whose running cell is told why its kernel died (see the module)."""

    _cell: RunningCell | None = None
    _told: _HeartbeatMixin | None = None

    @property
    def cell(self) -> RunningCell:
        """What this connection knows of the request its kernel runs."""
        if self._cell is None:
            self._cell = RunningCell()
        return self._cell

    def connect(self) -> Any:
        """Connect as jupyter_server does; be told of the kernel's deaths."""
        manager = self.kernel_manager
        if isinstance(manager, _HeartbeatMixin) and self._told is None:
            manager.add_death_callback(self._on_death)
            self._told = manager
        return super().connect()

    def disconnect(self) -> None:  # type: ignore[override]  # the base's is sync, as here
        """Disconnect as jupyter_server does; no longer be told of deaths. Idempotent."""
        told, self._told = self._told, None
        if told is not None:
            told.remove_death_callback(self._on_death)
        super().disconnect()  # type: ignore[no-untyped-call]

    def handle_incoming_message(self, incoming_msg: Any) -> None:
        """Note an execute_request from the client, then pass it on as jupyter_server does."""
        try:
            self._note_request(incoming_msg)
        except Exception:  # a malformed message: jupyter_server says so, as it handles it
            self.log.debug("could not read a client's message", exc_info=True)
        super().handle_incoming_message(incoming_msg)

    def handle_outgoing_message(self, stream: Any, outgoing_msg: list[Any]) -> None:
        """Follow the kernel's replies and IOPub status, then pass the message on as
        jupyter_server does."""
        channel = self.channels.get(stream) if isinstance(stream, str) else stream
        name = getattr(channel, "channel", None)
        if name in ("iopub", "shell"):
            try:
                self._follow(name, outgoing_msg)
            except Exception:  # a malformed message: jupyter_server says so, as it passes it on
                self.log.debug("could not read a kernel's %s message", name, exc_info=True)
        super().handle_outgoing_message(stream, outgoing_msg)

    def _note_request(self, ws_msg: Any) -> None:
        if self.subprotocol == _V1:
            channel, msg_list = deserialize_msg_from_ws_v1(ws_msg)  # type: ignore[no-untyped-call]
            if channel == "shell":
                self.cell.requested(self.session.unpack(msg_list[0]))
        else:
            msg = json.loads(ws_msg)
            if msg.get("channel") == "shell":
                self.cell.requested(msg.get("header") or {})

    def _follow(self, channel: str, msg_list: list[Any]) -> None:
        _, parts = self.session.feed_identities(msg_list)
        # parts: signature, header, parent header, metadata, content, buffers...
        header = self.session.unpack(parts[1])
        kind = header.get("msg_type")
        if channel == "shell" and kind == "execute_reply":
            self.cell.replied(header, self.session.unpack(parts[2]))
        elif channel == "iopub" and kind == "status":
            # Only status messages are unpacked further: IOPub carries every output.
            state = self.session.unpack(parts[4]).get("execution_state")
            self.cell.status(state, self.session.unpack(parts[2]))

    def _on_death(self, death: Death) -> None:
        iopub = self.channels.get("iopub")
        if iopub is not None and not iopub.closed():
            # What the kernel sent before it died first (its last outputs, or the status that
            # says it was idle after all), as jupyter_server flushes before a status message.
            iopub.flush()
        running = self.cell.running
        self.cell.clear()
        if running is None:
            return  # no cell was running: the restart dialog says all there is to say
        msg = self.session.msg("error", content=death_error(death), parent=running)
        if self.subprotocol == _V1:
            packed = serialize_msg_to_ws_v1(msg, "iopub", self.session.pack)  # type: ignore[no-untyped-call]
            self.write_message(packed, binary=True)
        else:
            msg["channel"] = "iopub"
            self.write_message(json.dumps(msg, default=json_default))
