"""The edge's limits over raw sockets, with both request cycles (the lean one and uvicorn's own under
`EdgeProtocol`): oversized or too many headers refused with 431 as soon as they cross the limit, slow headers and
stalled bodies 408, the connection cap shedding the oldest connection that serves no request (else 503), the
connection closed after a 413 or a 5xx without reading the rest, HTTP/1.0 bodies close-delimited, a response the
app aborts after its start cut without its end, and warnings that a flood cannot multiply."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from gateway.errors import UpstreamIncompleteError
from gateway.serving import EdgeLimits, EdgeProtocol, GatewayHttpProtocol, protocol
from tests.serving import LiveServer, read_all

LIMITS = EdgeLimits(max_header_bytes=4096, max_headers=20, header_timeout=1.0, body_timeout=1.0)
PROTOCOLS = [GatewayHttpProtocol, EdgeProtocol]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/too-large":  # refuses as the gateway's body limit does: from the declared length, unread
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"big!"})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/abort":  # an upstream's answer that broke off after it began
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: partial\n\n", "more_body": True})
        raise UpstreamIncompleteError()
    if path == "/fails":
        raise ValueError("boom")
    if path == "/started":  # answers first, then reads the body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started", "more_body": True})
        await Request(scope, receive).body()
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/hold":  # serves until the client leaves
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    body = await Request(scope, receive).body()
    answer = b"read %d" % len(body)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]}
    )
    await send({"type": "http.response.body", "body": answer})


@contextlib.contextmanager
def serving(protocol_class: type[EdgeProtocol], limits: EdgeLimits = LIMITS) -> Iterator[LiveServer]:
    http = protocol(limits, protocol_class)
    with LiveServer(app, http=http, loop="uvloop", lifespan="off", timeout_keep_alive=5) as live:
        yield live


@pytest.fixture(scope="module", params=PROTOCOLS, ids=["lean-cycle", "uvicorn-cycle"])
def server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    with serving(request.param) as live:
        yield live


@pytest.fixture(params=PROTOCOLS, ids=["lean-cycle", "uvicorn-cycle"])
def protocol_class(request: pytest.FixtureRequest) -> type[EdgeProtocol]:
    return request.param  # type: ignore[no-any-return]


def connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def exchange(server: LiveServer, request: bytes) -> bytes:
    with connect(server) as client:
        client.sendall(request)
        return read_all(client)


def get(path: str = "/", *headers: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nhost: test\r\n%s\r\n" % (
        path.encode(),
        b"".join(h + b"\r\n" for h in headers),
    )


def test_a_request_within_the_limits_is_served(server: LiveServer) -> None:
    received = exchange(
        server, get("/", *[b"x-n%d: v" % n for n in range(18)], b"connection: close")
    )  # 20 fields
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"read 0")


def test_headers_at_the_limit_with_a_body_in_the_same_write_are_served(server: LiveServer) -> None:
    body = b"b" * 100_000
    head = b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body)
    padding = (
        b"x-pad: " + b"p" * (LIMITS.max_header_bytes - len(head) - len(b"x-pad: \r\n\r\n")) + b"\r\n\r\n"
    )
    assert len(head + padding) == LIMITS.max_header_bytes
    received = exchange(server, head + padding + body)
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"read 100000")


def test_one_field_past_max_headers_gets_431_and_the_connection_closed(server: LiveServer) -> None:
    received = exchange(server, get("/", *[b"x-n%d: v" % n for n in range(20)]))
    assert received.startswith(b"HTTP/1.1 431 ") and b"connection: close" in received


def test_an_endless_header_gets_431_long_before_it_is_sent_and_others_are_served_meanwhile(
    server: LiveServer,
) -> None:
    """64 MiB of one header value, sent as fast as the socket takes it: refused once past 4 KiB, while another
    connection is answered at once. What was sent before the refusal arrived is what the two sockets' buffers
    took (some MiB on loopback), far from all."""
    total = 64 * 1024 * 1024
    outcome: dict[str, Any] = {}

    def flood() -> None:
        with connect(server) as client:
            client.sendall(b"GET / HTTP/1.1\r\nhost: test\r\nx-flood: ")
            sent, piece = 0, b"a" * 65536
            try:
                while sent < total:
                    if select.select([client], [], [], 0)[0]:
                        break  # the server answered
                    sent += client.send(piece)
            except OSError:
                pass
            outcome["sent"] = sent
            outcome["answer"] = read_all(client)

    sender = threading.Thread(target=flood)
    sender.start()
    started = time.monotonic()
    answer = exchange(server, get("/", b"connection: close"))
    assert time.monotonic() - started < 2.0 and answer.startswith(b"HTTP/1.1 200 OK")
    sender.join(30)
    assert outcome["answer"].startswith(b"HTTP/1.1 431 ")
    assert outcome["sent"] < total // 8  # refused as it crossed the limit, not once the header had all come


def test_a_header_sent_in_pieces_is_counted_across_them(server: LiveServer) -> None:
    with connect(server) as client:
        client.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n")
        for _ in range(3):
            client.sendall(b"x-piece: " + b"p" * 1500 + b"\r\n")
            time.sleep(0.05)
        assert read_all(client).startswith(b"HTTP/1.1 431 ")


def test_headers_not_complete_within_header_timeout_get_408(server: LiveServer) -> None:
    with connect(server) as client:
        client.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n")
        started = time.monotonic()
        for _ in range(4):  # a byte every 0.3 s: bytes coming do not extend the time headers get
            time.sleep(0.3)
            with contextlib.suppress(OSError):
                client.sendall(b"x")
        received = read_all(client)
    assert received.startswith(b"HTTP/1.1 408 ") and b"connection: close" in received
    assert 0.8 < time.monotonic() - started < 5


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: LiveServer) -> None:
    with connect(server) as client:
        started = time.monotonic()
        assert read_all(client) == b""
    assert 0.8 < time.monotonic() - started < 5


def test_a_body_that_stalls_past_body_timeout_gets_408(server: LiveServer) -> None:
    with connect(server) as client:
        client.sendall(b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n\r\nabc")
        started = time.monotonic()
        received = read_all(client)
    assert received.startswith(b"HTTP/1.1 408 ") and b"connection: close" in received
    assert 0.8 < time.monotonic() - started < 5


def test_a_slow_body_that_never_stalls_past_body_timeout_is_read_whole(server: LiveServer) -> None:
    with connect(server) as client:
        client.sendall(b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 6\r\nconnection: close\r\n\r\n")
        for _ in range(6):  # 2.4 s in all, never 1 s without a byte
            time.sleep(0.4)
            client.sendall(b"x")
        assert read_all(client).endswith(b"read 6")


def test_a_stalled_body_after_the_response_started_only_closes(server: LiveServer) -> None:
    with connect(server) as client:
        client.sendall(b"POST /started HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n\r\nabc")
        received = read_all(client)
    assert received.startswith(b"HTTP/1.1 200 OK") and b"408" not in received
    assert not received.endswith(b"0\r\n\r\n")  # no end of message: the client sees it cut


def test_an_idle_keep_alive_connection_is_closed_after_uvicorns_timeout(server: LiveServer) -> None:
    with connect(server) as client:
        client.sendall(get("/"))
        assert client.recv(65536).endswith(b"read 0")
        started = time.monotonic()
        assert read_all(client) == b""
    assert 4 < time.monotonic() - started < 8


def test_a_413_closes_the_connection_without_reading_the_rest_of_the_body(server: LiveServer) -> None:
    declared = 300 * 1024 * 1024
    with connect(server) as client:
        client.sendall(b"POST /too-large HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % declared)
        sent, answer = 0, b""
        with contextlib.suppress(OSError):
            while sent < declared and not answer:
                if select.select([client], [], [], 0)[0]:
                    answer = client.recv(65536)
                    break
                sent += client.send(b"z" * 65536)
        answer += read_all(client)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer.lower()
    assert sent < declared // 10


def test_a_5xx_says_connection_close_and_closes(server: LiveServer) -> None:
    with connect(server) as client:
        client.sendall(get("/fails"))
        received = read_all(client)  # returns: the server closed the connection
    assert received.startswith(b"HTTP/1.1 500 ") and b"connection: close" in received


def test_http_1_0_gets_a_close_delimited_body_never_chunks(server: LiveServer) -> None:
    received = exchange(server, b"GET /stream HTTP/1.0\r\nhost: test\r\n\r\n")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head and body == b"one,two,three"


def test_http_1_1_still_gets_chunks(server: LiveServer) -> None:
    received = exchange(server, get("/stream", b"connection: close"))
    assert received.endswith(b"5\r\nthree\r\n0\r\n\r\n")


def test_an_upstream_that_broke_off_aborts_the_response_without_its_end_in_one_log_line(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        received = exchange(server, get("/abort"))
        time.sleep(0.1)
    assert received.startswith(b"HTTP/1.1 200 OK") and b"data: partial" in received
    assert not received.endswith(b"0\r\n\r\n")
    aborts = [r for r in caplog.records if "upstream_incomplete" in r.getMessage()]
    assert len(aborts) == 1 and aborts[0].levelno == logging.WARNING and aborts[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_client_that_leaves_mid_body_logs_no_traceback(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), connect(server) as client:
        client.sendall(b"POST / HTTP/1.1\r\nhost: test\r\ncontent-length: 1000\r\n\r\nsome")
        time.sleep(0.2)
    time.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_the_oldest_connection_serving_no_request_makes_room_for_a_new_one(
    protocol_class: type[EdgeProtocol],
) -> None:
    with serving(protocol_class, EdgeLimits(max_connections=4, header_timeout=30)) as live:
        first = connect(live)
        first.sendall(b"GET / HTTP/1.1\r\n")  # half a request
        time.sleep(0.1)
        others = [connect(live) for _ in range(3)]
        time.sleep(0.1)
        with connect(live) as newcomer:
            newcomer.sendall(get("/", b"connection: close"))
            assert read_all(newcomer).endswith(b"read 0")
        assert read_all(first) == b""  # shed: closed without a word
        for client in [first, *others]:
            client.close()


def test_past_max_connections_all_serving_a_new_connection_gets_503(
    protocol_class: type[EdgeProtocol], caplog: pytest.LogCaptureFixture
) -> None:
    with serving(protocol_class, EdgeLimits(max_connections=2)) as live:
        busy = [connect(live) for _ in range(2)]
        for client in busy:
            client.sendall(get("/hold"))
        time.sleep(0.2)
        with caplog.at_level(logging.WARNING):
            refused = [exchange(live, get("/")) for _ in range(5)]
        for client in busy:
            client.close()
    assert all(answer.startswith(b"HTTP/1.1 503 ") and b"connection: close" in answer for answer in refused)
    warnings = [r for r in caplog.records if "MAX_CONNECTIONS" in r.getMessage()]
    assert len(warnings) == 1  # five refusals, one line


def test_a_flood_of_bad_requests_is_one_warning_line(
    protocol_class: type[EdgeProtocol], caplog: pytest.LogCaptureFixture
) -> None:
    with serving(protocol_class) as live, caplog.at_level(logging.WARNING):
        for _ in range(20):
            assert exchange(live, get("/", *[b"x-n%d: v" % n for n in range(30)])).startswith(b"HTTP/1.1 431")
    assert len([r for r in caplog.records if "431" in r.getMessage()]) == 1
