"""The gateway's uvicorn protocol: a response's writes of one loop turn reach the socket as one write, in order,
before any close; streamed bodies and WebSockets still flow. Served by uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.sync.client import connect

from gateway.serving import HOLD_AT_MOST, CoalescingTransport, GatewayHttpProtocol
from tests.serving import LiveServer

REQUEST = b"GET /%s HTTP/1.1\r\nhost: test\r\n%s\r\n"


class RecordingTransport:
    """Stands between the socket's transport and the protocol's, to see what reaches the socket."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


WRITES: list[bytes] = []


class RecordedProtocol(GatewayHttpProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(RecordingTransport(transport, WRITES))  # type: ignore[arg-type]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "websocket":
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                text = await websocket.receive_text()
                await websocket.send_text(text.upper())
        return
    if scope["path"] == "/tight":  # a big body sent in a loop that never yields to the event loop
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1048576")]}
        )
        for _ in range(64):
            await send({"type": "http.response.body", "body": b"x" * 16384, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/stream":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    body = b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Any:
    with LiveServer(app, http=RecordedProtocol, loop="uvloop", lifespan="off") as live:
        yield live


def exchange(port: int, request: bytes) -> bytes:
    """Sends `request`, returns everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
        return received


def test_a_response_made_in_one_turn_reaches_the_socket_in_one_write(server: LiveServer) -> None:
    WRITES.clear()
    received = exchange(server.port, REQUEST % (b"", b"connection: close\r\n"))
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\nhello")
    assert [received] == WRITES  # head and body together, and all of it before the connection closed


def test_keep_alive_answers_each_request_in_one_write(server: LiveServer) -> None:
    WRITES.clear()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
        for _ in range(3):
            client.sendall(REQUEST % (b"", b""))
            received = b""
            while not received.endswith(b"hello"):
                received += client.recv(65536)
            assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(WRITES) == 3


def test_a_streamed_body_still_leaves_chunk_by_chunk_in_order(server: LiveServer) -> None:
    WRITES.clear()
    received = exchange(server.port, REQUEST % (b"stream", b"connection: close\r\n"))
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"
    assert len(WRITES) >= 4  # the head with the first chunk, then a write per turn
    assert b"".join(WRITES) == received


def test_a_body_sent_without_yielding_is_not_held_back_whole(server: LiveServer) -> None:
    WRITES.clear()
    received = exchange(server.port, REQUEST % (b"tight", b"connection: close\r\n"))
    assert received.endswith(b"\r\n\r\n" + b"x" * 1048576)
    assert len(WRITES) >= 1048576 // HOLD_AT_MOST  # it went out as it came, the transport's flow control on
    assert max(map(len, WRITES)) <= HOLD_AT_MOST + 16384


def test_websockets_work_through_it(server: LiveServer) -> None:
    with connect(f"ws://127.0.0.1:{server.port}/ws") as websocket:
        for text in ("hello", "again"):
            websocket.send(text)
            assert websocket.recv(timeout=5) == text.upper()


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 10


async def test_held_writes_count_in_the_buffer_size_and_go_at_the_end_of_the_turn() -> None:
    inner = FakeTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"abc")
    transport.writelines([b"de", bytearray(b"f")])
    assert inner.writes == [] and transport.get_write_buffer_size() == 16
    await asyncio.sleep(0)
    assert inner.writes == [b"abcdef"] and transport.get_write_buffer_size() == 10
    transport.write(b"g")
    transport.close()  # what is held goes first
    assert inner.writes == [b"abcdef", b"g"] and inner.closed
    await asyncio.sleep(0)
    assert inner.writes == [b"abcdef", b"g"]


async def test_past_the_limit_what_is_held_goes_at_once() -> None:
    inner = FakeTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    quarter = b"q" * (HOLD_AT_MOST // 4)
    for _ in range(5):
        transport.write(quarter)
    assert inner.writes == [quarter * 4]
    await asyncio.sleep(0)
    assert inner.writes == [quarter * 4, quarter]


async def test_abort_drops_what_is_held() -> None:
    inner = FakeTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"abc")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.writes == [] and inner.aborted
