"""One kernel lifecycle step at a time: start, restart, shutdown, clean-up, the restarter's poll.

jupyter_client lets them overlap, and they do: nbclient shuts a kernel down as soon as its
client sees the death, while the restarter is still bringing up the new kernel. Two of its
"pending state" operations at once then end in ``InvalidStateError``, a context destroyed
under a starting kernel, or a kernel started after the shutdown that nobody will end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class OneAtATime:
    """An asyncio lock that the task holding it may enter again.

    Re-entry is what jupyter_client's own nesting needs: the restarter's poll calls the
    manager's ``restart_kernel``, which shuts down and cleans up, all in one task. Another
    task waits until the outermost step of the holder is over.
    """

    __slots__ = ("_lock", "_owner")

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[object] | None = None

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold it for the ``async with`` block (at once if this task already does)."""
        task = asyncio.current_task()
        if task is not None and task is self._owner:
            yield
            return
        async with self._lock:
            self._owner = task
            try:
                yield
            finally:
                self._owner = None
