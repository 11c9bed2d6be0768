"""A TCP proxy, on the test's own asyncio loop, that injects network faults on command.

Between a monitor and a heart it can add latency, hold all traffic (a black hole, or a partition
that heals: held bytes are delivered when it heals, as TCP would), and reset every connection.
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.latency = 0.0  # seconds added in each direction
        self.holding = False  # True: nothing gets through until it is False again
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._every_writer: list[asyncio.StreamWriter] = []
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        while True:
            self.reset()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
            # A connection accepted just before the server closed has a handler that has not
            # run yet: let it run (it sees _closed and gives up), then look again.
            for _ in range(20):
                await asyncio.sleep(0)
            if not self._tasks:
                break
        # Every socket is really closed (connection_lost has run) before the loop may end.
        for writer in self._every_writer:
            writer.transport.abort()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
        # A connection cancelled while it was being opened is closed by asyncio in a callback
        # of its own: let the loop run those before it may end.
        for _ in range(20):
            await asyncio.sleep(0)

    def reset(self) -> None:
        """Abort every connection with a TCP reset, as a flaky middlebox does."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Tracked, so close() also waits for a connection that is still being set up.
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # type: ignore[arg-type]
            task.add_done_callback(self._tasks.discard)
        self._every_writer.append(writer)
        if self._closed:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._every_writer.append(up_writer)
        if self._closed:
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        self._spawn(self._pump(reader, up_writer))
        self._spawn(self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                while (self.holding or loop.time() < due) and not self._closed:
                    await asyncio.sleep(0.005)
                if self._closed:
                    return  # held bytes die with the proxy, as they would with the link
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.latency, data))
        except ConnectionError:
            pass
        finally:
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await sender
            writer.transport.abort()
            self._writers.discard(writer)
