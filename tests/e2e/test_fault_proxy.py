"""The fault proxy does to a connection what each fault says, shown on a tiny echo server."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.fault_proxy import FaultProxy, Mode

#: Seconds a client waits for an answer that a fault may hold back.
WAIT = 0.5


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.server.received.append(data)  # type: ignore[attr-defined]
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received: list[bytes] = []


@pytest.fixture
def echo() -> Iterator[_EchoServer]:
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(echo: _EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.server_address[:2], latency=WAIT) as running:  # type: ignore[arg-type]
        yield running


def _connect(proxy: FaultProxy) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
    client.settimeout(WAIT)
    return client


def _ask(client: socket.socket, data: bytes) -> bytes:
    client.sendall(data)
    return client.recv(4096)


def _read_to_the_end(client: socket.socket) -> tuple[bytes, OSError | None]:
    """What the client reads until the connection ends, and the error it ends with."""
    received = b""
    try:
        while data := client.recv(4096):
            received += data
    except OSError as error:
        return received, error
    return received, None


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    with _connect(proxy) as client:
        assert _ask(client, b"ping") == b"ping"


def test_latency_delays_each_answer(proxy: FaultProxy) -> None:
    with _connect(proxy) as client:
        client.settimeout(WAIT * 4)
        proxy.set(Mode.LATENCY)
        started = time.monotonic()
        assert _ask(client, b"slow") == b"slow"
        assert time.monotonic() - started >= WAIT
        proxy.clear()
        assert _ask(client, b"fast") == b"fast"


def test_black_hole_holds_everything_until_it_clears(proxy: FaultProxy, echo: _EchoServer) -> None:
    with _connect(proxy) as old:
        proxy.set(Mode.BLACK_HOLE)
        with _connect(proxy) as new:  # accepted all the same
            with pytest.raises(TimeoutError):
                _ask(new, b"held")
            assert echo.received == []
            proxy.clear()
            assert new.recv(4096) == b"held"
        assert _ask(old, b"after") == b"after"


def test_reset_cuts_an_answer_in_the_middle(proxy: FaultProxy) -> None:
    with _connect(proxy) as client:
        proxy.set(Mode.RESET)
        client.sendall(b"0123456789")
        received, error = _read_to_the_end(client)
        assert received == b"01234"
        assert isinstance(error, ConnectionResetError)
        assert proxy.counts.resets == 1


def test_half_open_sends_the_request_and_never_answers_nor_closes(
    proxy: FaultProxy, echo: _EchoServer
) -> None:
    with _connect(proxy) as client:
        proxy.set(Mode.HALF_OPEN)
        with pytest.raises(TimeoutError):
            _ask(client, b"lost answer")
        proxy.clear()
        with pytest.raises(TimeoutError):  # still dead: no answer, no end either
            _ask(client, b"again")
        assert b"lost answer" in b"".join(echo.received)
        with _connect(proxy) as fresh:
            assert _ask(fresh, b"new") == b"new"
        assert proxy.counts.dead_open == 1
    deadline = time.monotonic() + WAIT * 10
    while proxy.counts.dead_open and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.counts.dead_open == 0, "the client's close ends it"


def test_stuck_takes_only_the_next_connections(proxy: FaultProxy) -> None:
    proxy.set(Mode.STUCK, count=1)
    with _connect(proxy) as first, _connect(proxy) as second:
        with pytest.raises(TimeoutError):
            _ask(first, b"one")
        assert _ask(second, b"two") == b"two"
    assert proxy.counts.dead == 1
