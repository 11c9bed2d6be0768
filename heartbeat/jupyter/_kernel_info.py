"""``kernel_info_request`` and its reply, for the two that ask a kernel: ``_silent.ask_kind``
(what it is, once its heart first answers: on control, then on shell too) and
``_responsive.ResponsiveWatch`` (whether it still answers: on control, again and again).

The request is built and signed here with the kernel's session (its key), a reply is read here
(its signature checked) and matched to its request by its parent's ``msg_id``, and what a reply
says of the kernel (:class:`Kind`) is read here. Each asker keeps its own sockets and timing:
see ``docs/architecture.md``."""

from __future__ import annotations

from typing import Any

__all__ = ["Kind", "kind", "reply", "request"]


class Kind:
    """What a kernel's ``kernel_info_reply`` said: its ``implementation`` and language."""

    def __init__(self, implementation: str | None, language: str | None) -> None:
        self.implementation = implementation
        self.language = language

    def __repr__(self) -> str:
        return f"Kind({self.implementation!r}, {self.language!r})"


def request(session: Any) -> tuple[str, list[bytes]]:
    """A ``kernel_info_request`` signed with ``session``'s key (a jupyter_client ``Session``):
    its ``msg_id``, and the frames to send on a DEALER."""
    msg = session.msg("kernel_info_request")
    return msg["header"]["msg_id"], session.serialize(msg)


def reply(session: Any, frames: list[bytes]) -> tuple[str | None, dict[str, Any]]:
    """What a DEALER received from the kernel: the ``msg_id`` of the request it replies to,
    and its content (``{}`` where that is no dict). Raises, as ``Session.deserialize`` does,
    for frames that are no message signed with ``session``'s key."""
    _, parts = session.feed_identities(frames, copy=True)
    msg = session.deserialize(parts, content=True, copy=True)
    parent = msg.get("parent_header", {}).get("msg_id")
    content = msg.get("content")
    return parent, content if isinstance(content, dict) else {}


def kind(content: dict[str, Any]) -> Kind:
    """The kernel's kind, from its ``kernel_info_reply``'s content: what is no string there is
    not known (None)."""
    implementation = content.get("implementation")
    language = (content.get("language_info") or {}).get("name")
    return Kind(
        implementation if isinstance(implementation, str) else None,
        language if isinstance(language, str) else None,
    )
