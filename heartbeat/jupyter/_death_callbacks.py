"""A kernel's deaths as its manager shows them: counted (``deaths``, which its clients'
``is_alive()`` reads) and told, once a death, to the callbacks added to it
(``add_death_callback``, as jupyter_client's ``add_restart_callback``), to jupyter_server's
event bus and to the metrics. ``_watched._HeartbeatMixin`` counts and calls
:meth:`_announce`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from traitlets import Integer

from heartbeat._cause import Death
from heartbeat.jupyter.events import emit_death
from heartbeat.jupyter.kernel import HeartbeatSettings
from heartbeat.jupyter.metrics import count_death


class _DeathCallbacks(HeartbeatSettings):
    _deaths = Integer(0)
    _death_callbacks: list[Callable[[Death], object]] | None = None

    @property
    def deaths(self) -> int:
        """How often this manager's kernel has died (heart or process) since it was made.

        Restarts asked for are not deaths. A client made by this manager answers
        ``is_alive()`` False once this grows past what it was when the client was made.
        """
        return int(self._deaths)

    def add_death_callback(self, callback: Callable[[Death], object]) -> None:
        """Call ``callback(death)`` on the loop at each death of this manager's kernel (heart
        or process), once, as soon as it is seen: before the restarter's "restart" (or "dead")
        callbacks, so that whoever shows the death can say why before the restart is shown."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if self._death_callbacks is None:
            self._death_callbacks = []
        self._death_callbacks.append(callback)

    def remove_death_callback(self, callback: Callable[[Death], object]) -> None:
        """Stop calling ``callback``; one never added is ignored."""
        with contextlib.suppress(ValueError):
            (self._death_callbacks or []).remove(callback)

    def _announce(self, death: Death) -> None:
        # Every death once: counted, to everyone told of deaths and to jupyter_server's event
        # bus; one who raises is logged, not the others' problem (nor the restarter's, which
        # acts next).
        if self.metrics:
            count_death(death)
        tell: list[Callable[[Death], object]] = [*(self._death_callbacks or [])]
        tell.append(lambda death: emit_death(self, death))
        for callback in tell:
            try:
                callback(death)
            except Exception:
                self.log.exception("Kernel %s: death callback %r failed", self.kernel_id, callback)  # type: ignore[attr-defined]
