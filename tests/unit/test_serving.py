"""The gateway's uvicorn protocol and its request cycle, served by uvicorn on a loopback port and spoken to over
raw sockets: a response whose body is at hand leaves in one write; streamed bodies, request bodies in pieces,
pipelining, 100-continue, HEAD, keep-alive and its timeout, disconnects, bad headers and failing apps behave as
uvicorn's own cycle has them; WebSockets still upgrade. The behaviour tests run against both protocols, the lean
cycle's and uvicorn's own cycle under the edge's limits (`EdgeProtocol`), so that switching back stays one line."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.sync.client import connect

from gateway.serving import EdgeProtocol, GatewayHttpProtocol
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
DISCONNECTS: list[str] = []


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the request's body, its method and the number of body messages it came in."""
    body, messages, more = b"", 0, True
    while more:
        message = await receive()
        body += message.get("body", b"")
        messages += 1
        more = message.get("more_body", False)
    headers = [(b"content-length", str(len(body)).encode()), (b"x-messages", str(messages).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def wait_for_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()  # the (empty) body
    DISCONNECTS.append((await receive())["type"])  # waits until the client leaves


async def bad_header_value(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"x-injected", b"a\r\nset-cookie: stolen=1")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def bad_header_name(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"bad name:", b"x")]})


async def too_long(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"four"})


async def fails(scope: Scope, receive: Receive, send: Send) -> None:
    raise ValueError("boom")


async def says_nothing(scope: Scope, receive: Receive, send: Send) -> None:
    return


BEHAVIOURS = {
    "/echo": echo,
    "/wait": wait_for_disconnect,
    "/bad-value": bad_header_value,
    "/bad-name": bad_header_name,
    "/too-long": too_long,
    "/fails": fails,
    "/nothing": says_nothing,
}


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
    if scope["path"] == "/late":  # the head, then a body that takes its time
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await asyncio.sleep(1)
        await send({"type": "http.response.body", "body": b"later"})
        return
    if scope["path"] in BEHAVIOURS:
        await BEHAVIOURS[scope["path"]](scope, receive, send)
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
    """The lean cycle, its writes recorded."""
    with LiveServer(app, http=RecordedProtocol, loop="uvloop", lifespan="off", timeout_keep_alive=1) as live:
        yield live


@pytest.fixture(scope="module", params=[RecordedProtocol, EdgeProtocol], ids=["lean-cycle", "uvicorn-cycle"])
def any_server(request: pytest.FixtureRequest) -> Any:
    """Each protocol in turn: the behaviour tests hold for both."""
    with LiveServer(app, http=request.param, loop="uvloop", lifespan="off", timeout_keep_alive=1) as live:
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


def test_a_body_sent_without_yielding_goes_out_as_it_is_sent(server: LiveServer) -> None:
    WRITES.clear()
    received = exchange(server.port, REQUEST % (b"tight", b"connection: close\r\n"))
    assert received.endswith(b"\r\n\r\n" + b"x" * 1048576)
    assert len(WRITES) == 64  # the head with the first 16 KiB, then each piece as sent: nothing piles up
    assert max(map(len, WRITES)) <= 16384 + 200


def test_a_head_whose_body_is_late_goes_alone_at_once(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
        client.sendall(REQUEST % (b"late", b"connection: close\r\n"))
        client.settimeout(0.4)  # the body comes a second later
        head = client.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        client.settimeout(5)
        assert client.recv(65536) == b"later"


def test_websockets_work_through_it(any_server: LiveServer) -> None:
    with connect(f"ws://127.0.0.1:{any_server.port}/ws") as websocket:
        for text in ("hello", "again"):
            websocket.send(text)
            assert websocket.recv(timeout=5) == text.upper()


def read_response(client: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One response with a Content-Length from `client`: (head, body, what came after it)."""
    received = buffered
    while b"\r\n\r\n" not in received:
        received += client.recv(65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.startswith(b"content-length:")).split(b":")[1]
    )
    while len(rest) < length:
        rest += client.recv(65536)
    return head, rest[:length], rest[length:]


def post(path: bytes, body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"POST /%s HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n%s\r\n%s" % (
        path,
        len(body),
        extra,
        body,
    )


def test_a_request_body_sent_in_pieces_is_all_received(any_server: LiveServer) -> None:
    body = b"x" * 200_000
    with socket.create_connection(("127.0.0.1", any_server.port), timeout=5) as client:
        request = post(b"echo", body)
        for start in range(0, len(request), 50_000):
            client.sendall(request[start : start + 50_000])
        head, received, _ = read_response(client)
    assert head.startswith(b"HTTP/1.1 200 OK") and received == body


def test_pipelined_requests_are_answered_in_order(any_server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", any_server.port), timeout=5) as client:
        client.sendall(post(b"echo", b"first") + post(b"echo", b"second") + post(b"echo", b"third"))
        answers, rest = [], b""
        for _ in range(3):
            _, body, rest = read_response(client, rest)
            answers.append(body)
    assert answers == [b"first", b"second", b"third"]


def test_expect_100_continue_is_answered_before_the_body_is_read(any_server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", any_server.port), timeout=5) as client:
        client.sendall(
            post(b"echo", b"", b"expect: 100-continue").replace(b"content-length: 0", b"content-length: 4")
        )
        assert client.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(b"body")
        head, body, _ = read_response(client)
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"body"


def test_head_gets_the_headers_without_the_body(any_server: LiveServer) -> None:
    received = exchange(any_server.port, b"HEAD / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 OK") and b"content-length: 5" in received
    assert received.endswith(b"\r\n\r\n")


def test_http_1_0_closes_after_the_response(any_server: LiveServer) -> None:
    received = exchange(any_server.port, b"GET / HTTP/1.0\r\nhost: test\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in received
    assert received.endswith(b"hello")


def test_a_busy_connection_outlives_the_keep_alive_timeout_and_an_idle_one_does_not(
    any_server: LiveServer,
) -> None:
    with socket.create_connection(("127.0.0.1", any_server.port), timeout=5) as client:
        rest = b""
        for _ in range(6):  # 1.8 s of use, never idle for the 1 s timeout
            client.sendall(REQUEST % (b"", b""))
            received = rest
            while not received.endswith(b"hello"):
                received += client.recv(65536)
            time.sleep(0.3)
        started = time.monotonic()
        assert client.recv(65536) == b""  # idle now: closed by the server
        assert 0.5 < time.monotonic() - started < 2.5


def test_the_app_hears_of_a_client_that_left(any_server: LiveServer) -> None:
    DISCONNECTS.clear()
    with socket.create_connection(("127.0.0.1", any_server.port), timeout=5) as client:
        client.sendall(REQUEST % (b"wait", b""))
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while not DISCONNECTS and time.monotonic() < deadline:
        time.sleep(0.02)
    assert DISCONNECTS == ["http.disconnect"]


@pytest.mark.parametrize("path", [b"bad-value", b"bad-name"])
def test_a_header_that_would_split_the_response_never_leaves(any_server: LiveServer, path: bytes) -> None:
    received = exchange(any_server.port, REQUEST % (path, b""))
    assert b"stolen" not in received and b"bad name" not in received
    assert received == b""  # the response had started: the connection is closed instead


def test_a_body_longer_than_its_content_length_is_not_sent(any_server: LiveServer) -> None:
    received = exchange(any_server.port, REQUEST % (b"too-long", b""))
    assert b"four" not in received and received.endswith(b"content-length: 2\r\n\r\n")


@pytest.mark.parametrize("path", [b"fails", b"nothing"])
def test_an_app_that_fails_or_says_nothing_gets_a_500(any_server: LiveServer, path: bytes) -> None:
    received = exchange(any_server.port, REQUEST % (path, b""))
    assert received.startswith(b"HTTP/1.1 500 Internal Server Error") and received.endswith(
        b"Internal Server Error"
    )


def test_unparseable_requests_get_a_400(any_server: LiveServer) -> None:
    received = exchange(any_server.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 Bad Request")
