"""A TCP proxy on loopback that holds back what the server sends, as a slow link would.

Put between a primary and its replica, it makes asynchronous replication visibly asynchronous:
the replica is ``delay`` seconds behind. :meth:`LagProxy.cut` drops what it still holds and
closes every connection, as the primary's kill -9 loses what it had not yet sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Bytes read at once from either side.
CHUNK = 65536


@dataclass
class LagProxy:
    """Listens on ``port``; forwards to ``upstream`` at once, and back ``delay`` seconds late."""

    upstream: int
    delay: float
    port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def cut(self) -> None:
        """Drop every connection now, with whatever it still held back."""
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(timeout=5.0)

    async def _cut(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.upstream), timeout=2.0
            )
        except (OSError, TimeoutError):
            client_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        for work in (
            _pump(client_r, server_w),
            _hold(server_r, held, self.delay),
            _release(held, client_w),
        ):
            task = asyncio.create_task(_quietly(work))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _: _close(client_w, server_w))


def _close(*writers: asyncio.StreamWriter) -> None:
    # Either side closing closes both, so the other end sees the link go down.
    for writer in writers:
        writer.close()


async def _quietly(work: Coroutine[Any, Any, None]) -> None:
    # A side going away ends the connection; nothing to report.
    with contextlib.suppress(OSError):
        await work


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()


async def _hold(
    reader: asyncio.StreamReader, held: asyncio.Queue[tuple[float, bytes]], delay: float
) -> None:
    loop = asyncio.get_running_loop()
    while data := await reader.read(CHUNK):
        await held.put((loop.time() + delay, data))
    await held.put((loop.time() + delay, b""))


async def _release(held: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due, data = await held.get()
        await asyncio.sleep(max(0.0, due - loop.time()))
        if not data:
            return
        writer.write(data)
        await writer.drain()


@contextlib.contextmanager
def lag_proxy(upstream: int, delay: float) -> Iterator[LagProxy]:
    """A :class:`LagProxy` to ``upstream`` on a free loopback port, stopped at the end."""
    proxy = LagProxy(upstream, delay)
    loop = proxy._loop
    server = loop.run_until_complete(asyncio.start_server(proxy._serve, "127.0.0.1", 0))
    proxy.port = int(server.sockets[0].getsockname()[1])
    thread = threading.Thread(target=loop.run_forever, name="lag-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.cut()
        server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        loop.close()
