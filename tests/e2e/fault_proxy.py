"""A TCP proxy on loopback whose link a test can break, and mend, while traffic runs through it.

Put between the workers and Redis, or between the workers and Thalamus, it plays the network
faults production brings (issue 10 §3). It runs its own asyncio loop in a background thread, so a
test steers it with plain calls (:meth:`FaultProxy.set`, :meth:`FaultProxy.clear`) while its
workers, in other processes, talk through it.

The faults, each on every connection through the proxy, old and new, while it is set:

- ``LATENCY``: every answer reaches the client ``latency`` seconds late (a round trip grows by
  that much; answers keep their order).
- ``BLACK_HOLE``: connections are accepted, nothing is forwarded either way and nothing is
  answered; what was held flows once the fault clears, as TCP would retransmit it.
- ``RESET``: an answer is cut in the middle: its first half reaches the client, then the
  connection is reset (an RST, through ``SO_LINGER`` 0).
- ``HALF_OPEN``: a request is forwarded, and from then on that connection answers nothing and is
  never closed by the proxy, even after the fault clears (the far end forgot it; only the
  client's own time-outs can find out).
- ``STUCK``: as ``HALF_OPEN`` but for the next ``count`` connections that carry data only; the
  others pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

#: Seconds to wait for the proxy's own loop to do what a caller asked.
CONTROL_TIMEOUT = 10.0
#: Bytes read from a socket at once.
CHUNK = 65536
#: Seconds between the half answer and the reset, so the client reads the half first.
BEFORE_RESET = 0.05


class Mode(StrEnum):
    PASS = "pass"
    LATENCY = "latency"
    BLACK_HOLE = "black hole"
    RESET = "reset mid-response"
    HALF_OPEN = "half-open"
    STUCK = "stuck"


class Direction(StrEnum):
    REQUEST = "client to upstream"
    ANSWER = "upstream to client"


@dataclass
class Counts:
    """What the proxy did, for a test to report."""

    connections: int = 0
    resets: int = 0
    #: Connections made half-open, and those of them the client has not closed yet.
    dead: int = 0
    dead_open: int = 0


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    #: Answers nothing and is never closed by the proxy (half-open).
    dead: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def writer(self, direction: Direction) -> asyncio.StreamWriter:
        return self.upstream if direction is Direction.REQUEST else self.client


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream`` (host, port), with a fault switchable."""

    def __init__(self, upstream: tuple[str, int], *, latency: float = 2.0) -> None:
        self.upstream = upstream
        self.latency = latency
        self.port = 0
        self.counts = Counts()
        self.mode = Mode.PASS
        self._stuck_left = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy")
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._flowing: asyncio.Event | None = None

    # -- steering, from the test's thread --------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def set(self, mode: Mode, *, count: int = 0) -> None:
        """Apply ``mode`` from now on (``count``: connections that ``STUCK`` takes)."""
        self._call(self._set(mode, count))

    def clear(self) -> None:
        self.set(Mode.PASS)

    def url(self, scheme: str, path: str = "") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(CONTROL_TIMEOUT)

    # -- the proxy's own loop ---------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, mode: Mode, count: int) -> None:
        assert self._flowing is not None
        self.mode = mode
        self._stuck_left = count if mode is Mode.STUCK else 0
        if mode is Mode.BLACK_HOLE:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            for task in connection.tasks:
                task.cancel()
            connection.client.transport.abort()
            connection.upstream.transport.abort()

    async def _serve(self, client_in: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        self.counts.connections += 1
        try:
            upstream_in, upstream = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), CONTROL_TIMEOUT
            )
        except (OSError, TimeoutError):
            client.transport.abort()
            return
        connection = _Connection(client, upstream)
        self._connections.add(connection)
        connection.tasks = [
            asyncio.create_task(self._pump(connection, client_in, Direction.REQUEST)),
            asyncio.create_task(self._pump(connection, upstream_in, Direction.ANSWER)),
        ]
        try:
            await asyncio.gather(*connection.tasks, return_exceptions=True)
        finally:
            self.counts.dead_open -= connection.dead
            self._connections.discard(connection)
            client.transport.abort()
            upstream.transport.abort()

    async def _pump(
        self, connection: _Connection, source: asyncio.StreamReader, direction: Direction
    ) -> None:
        """Reads one direction as it comes and delivers it, in order, as the fault allows."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver_all(connection, queue, direction))
        try:
            while data := await source.read(CHUNK):
                queue.put_nowait((asyncio.get_running_loop().time(), data))
            await queue.join()
        except OSError:
            pass
        finally:
            deliver.cancel()
        await self._after_end(connection, direction)

    async def _after_end(self, connection: _Connection, direction: Direction) -> None:
        if direction is Direction.ANSWER and connection.dead:
            # The upstream end left, but a half-open connection never tells its client.
            await asyncio.Event().wait()
        for task in connection.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _deliver_all(
        self,
        connection: _Connection,
        queue: asyncio.Queue[tuple[float, bytes]],
        direction: Direction,
    ) -> None:
        while True:
            arrived, data = await queue.get()
            try:
                await self._deliver(connection, direction, arrived, data)
            except OSError:
                connection.client.transport.abort()
                connection.upstream.transport.abort()
            finally:
                queue.task_done()

    async def _deliver(
        self, connection: _Connection, direction: Direction, arrived: float, data: bytes
    ) -> None:
        assert self._flowing is not None
        await self._flowing.wait()
        if not connection.dead and self._kills(connection):
            connection.dead = True
            self.counts.dead += 1
            self.counts.dead_open += 1
        if connection.dead:
            if direction is Direction.REQUEST:
                await self._write(connection.upstream, data)
            return
        if direction is Direction.ANSWER and self.mode is Mode.LATENCY:
            await asyncio.sleep(arrived + self.latency - asyncio.get_running_loop().time())
        if direction is Direction.ANSWER and self.mode is Mode.RESET:
            await self._reset_mid_answer(connection, data)
            return
        await self._write(connection.writer(direction), data)

    def _kills(self, connection: _Connection) -> bool:
        """Whether the fault in force makes this connection half-open now."""
        if self.mode is Mode.HALF_OPEN:
            return True
        if self.mode is Mode.STUCK and self._stuck_left > 0:
            self._stuck_left -= 1
            return True
        return False

    async def _reset_mid_answer(self, connection: _Connection, data: bytes) -> None:
        self.counts.resets += 1
        await self._write(connection.client, data[: len(data) // 2])
        await asyncio.sleep(BEFORE_RESET)
        reset(connection.client)
        connection.upstream.transport.abort()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN: linger on, with a time of 0."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
