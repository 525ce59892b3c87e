"""The lean HTTP/1.1 upstream client (`gateway.http1`), over real loopback sockets.

Each test scripts a small upstream (`tests.unit.scripted_upstream`): it reads the raw request bytes, writes raw
HTTP/1.1 response bytes, and records what it received and how many connections it accepted. The assertions are
about what a user of `HttpPool` sees: statuses, headers and bodies, the errors by phase, and which connections are
reused. When a request may be sent again: `test_http1_resend.py`; how a response can break off:
`test_http1_breakoff.py`.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.http1 import (
    BrokenOff,
    ConnectFailed,
    HeadersTimeout,
    HttpPool,
    PoolTimeout,
)
from gateway.http1.connection import HIGH_WATER
from tests.unit.scripted_upstream import (
    LOOPS,
    MAX_READ,
    Peer,
    Upstream,
    answering,
    free_port,
    get_text,
    ok,
    pool_to,
    read_all,
    run_on,
)

# Responses as the user sees them.


async def test_content_length_response_status_raw_headers_and_body() -> None:
    """The proxy forwards status, headers (as the upstream spelled them) and body; `has_length` tells it the
    body is framed by Content-Length."""
    raw = (
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-Request-ID: Req_1\r\ncontent-length: 11\r\n\r\n"
        b"hello world"
    )
    async with Upstream(answering(raw)) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/", [], None)
        assert response.status == 201
        assert response.headers == [
            (b"Content-Type", b"text/plain"),
            (b"X-Request-ID", b"Req_1"),
            (b"content-length", b"11"),
        ]
        assert response.has_length is True
        assert await read_all(response) == b"hello world"
        assert await response.read_chunk() == b""  # and stays at its end
        response.release()


async def test_chunked_response_arriving_in_pieces() -> None:
    """A streamed (chunked) answer arrives whole, de-chunked, however the upstream's writes fall; `has_length` is
    false, so the proxy knows not to promise a length."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        for piece in (b"5\r\nhello\r\n", b"1\r\n \r\n6\r\nwor", b"ld!\r\n", b"0\r\n\r\n"):
            await peer.drain()
            await asyncio.sleep(0.02)
            peer.send(piece)
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/stream", [], None)
        assert response.status == 200
        assert response.headers == [
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Type", b"text/event-stream"),
        ]
        assert response.has_length is False
        assert await read_all(response) == b"hello world!"
        response.release()


async def test_chunked_response_with_trailers_completes() -> None:
    """Trailer fields after the last chunk end the body cleanly (they are not body bytes)."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n"
    async with Upstream(answering(raw)) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/", [], None)
        assert await read_all(response) == b"abc"
        response.release()
        assert await get_text(pool) == b"abc"
    assert upstream.accepted == 1


# The request as the upstream sees it.


async def test_request_line_host_and_headers_as_given() -> None:
    """The target goes out byte for byte (no re-encoding of path or query), Host names the origin, and the
    given headers follow in order and case; a GET without a body announces none."""
    target = b"/v1/models/a%2Fb?limit=10&q=a%20b+c&empty=&x=%7E~"
    headers = [(b"X-Api-Key", b"secret"), (b"accept", b"*/*"), (b"X-Dup", b"1"), (b"X-Dup", b"2")]
    async with Upstream(answering(ok())) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", target, headers, None)
        response.release()
    (request,) = upstream.peers[0].requests
    assert request.line == b"GET " + target + b" HTTP/1.1"
    assert request.headers[0] == (b"host", b"127.0.0.1:%d" % upstream.port)
    assert request.headers[1:] == headers
    assert request.values(b"content-length") == []
    assert request.values(b"transfer-encoding") == []
    assert request.raw.endswith(b"\r\n\r\n")


async def test_bytes_body_is_sent_with_its_content_length() -> None:
    """A body in hand goes out with its exact length, so the upstream knows where the request ends."""
    async with Upstream(answering(ok())) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(
            b"POST", b"/v1/chat", [(b"Content-Type", b"application/json")], b'{"a":1}'
        )
        response.release()
    (request,) = upstream.peers[0].requests
    assert request.values(b"content-length") == [b"7"]
    assert request.values(b"transfer-encoding") == []
    assert request.body == b'{"a":1}'
    assert request.raw.endswith(b'\r\n\r\n{"a":1}')


async def test_post_without_body_announces_content_length_zero() -> None:
    """A POST with no body still says `content-length: 0`: some upstreams answer 411 Length Required, and
    without it the request's end would be ambiguous."""
    async with Upstream(answering(ok())) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"POST", b"/reset", [], None)
        response.release()
    (request,) = upstream.peers[0].requests
    assert request.values(b"content-length") == [b"0"]
    assert request.values(b"transfer-encoding") == []
    assert request.body == b""


async def test_get_without_body_has_no_content_length() -> None:
    """A GET announces no body at all: no Content-Length, no Transfer-Encoding."""
    async with Upstream(answering(ok())) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/", [], None)
        response.release()
    (request,) = upstream.peers[0].requests
    assert request.values(b"content-length") == []
    assert request.values(b"transfer-encoding") == []


async def test_large_body_to_an_upstream_slow_to_read_arrives_whole_and_in_order() -> None:
    """A big body (a document for OCR) to an upstream that does not read at first: far more than the sockets
    hold, it leaves as the upstream takes it, and every byte arrives in order, under its exact length."""
    body = b"".join(bytes([index % 251]) * 65536 for index in range(256))  # 16 MiB in 64 KiB runs

    async def handler(peer: Peer) -> None:
        await asyncio.sleep(0.3)  # does not read at first
        if await peer.read_request() is not None:
            peer.send(ok())
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"POST", b"/upload", [], body)
        assert await read_all(response) == b"hello"
        response.release()
    (request,) = upstream.peers[0].requests
    assert request.values(b"content-length") == [b"%d" % len(body)]
    assert hashlib.sha256(request.body).hexdigest() == hashlib.sha256(body).hexdigest()


async def test_header_with_cr_or_lf_is_refused_before_anything_is_sent() -> None:
    """A CR or LF in a header (or the target) would smuggle a header or a second request to the upstream: the
    pool refuses it before writing a byte, and the connection stays good for the next request."""
    bad_requests: list[tuple[bytes, list[tuple[bytes, bytes]]]] = [
        (b"/", [(b"X-A", b"1\r\nX-Injected: yes")]),
        (b"/", [(b"X-A", b"1\nX-Injected: yes")]),
        (b"/", [(b"X-A", b"1\rX-Injected: yes")]),
        (b"/", [(b"X-A\r\nX-Injected", b"yes")]),
        (b"/ HTTP/1.1\r\nX-Injected: yes\r\nX-B:", []),
    ]
    async with Upstream(answering(ok())) as upstream, pool_to(upstream.origin) as pool:
        assert await get_text(pool, b"/first") == b"hello"
        sent_before = bytes(upstream.peers[0].received)
        for target, headers in bad_requests:
            with pytest.raises(ValueError):
                await pool.request(b"GET", target, headers, None)
        await asyncio.sleep(0.05)
        assert bytes(upstream.peers[0].received) == sent_before
        assert await get_text(pool, b"/after") == b"hello"
    assert upstream.accepted == 1
    assert [request.target for request in upstream.peers[0].requests] == [b"/first", b"/after"]
    assert b"Injected" not in upstream.peers[0].received


async def test_header_with_cr_or_lf_on_a_fresh_pool_connects_nowhere() -> None:
    """Refused before a connection is even made: the upstream accepts nothing, receives nothing."""
    async with Upstream(answering(ok())) as upstream, pool_to(upstream.origin) as pool:
        with pytest.raises(ValueError):
            await pool.request(b"POST", b"/", [(b"X-A", b"v\r\n\r\nGET /admin HTTP/1.1")], b"x")
        await asyncio.sleep(0.05)
    assert upstream.accepted == 0


async def test_userinfo_in_the_origin_is_not_sent_as_host() -> None:
    """Credentials written into an origin URL never reach the upstream in the Host header."""
    async with Upstream(answering(ok())) as upstream:
        origin = f"http://user:pass@127.0.0.1:{upstream.port}"
        async with pool_to(origin) as pool:
            assert await get_text(pool) == b"hello"
    (request,) = upstream.peers[0].requests
    assert request.values(b"host") == [b"127.0.0.1:%d" % upstream.port]
    assert b"pass" not in upstream.peers[0].received


def test_origin_must_be_http_or_https() -> None:
    """A misconfigured upstream fails when the pool is made, not on the first request."""
    for origin in ("ftp://example.com", "example.com:80", "http://", "unix:///tmp/sock"):
        with pytest.raises(ValueError):
            HttpPool(origin, max_connections=1, keepalive_seconds=1, connect_timeout=1, read_timeout=1)


# Keep-alive.


async def test_released_connection_is_reused() -> None:
    """Two requests one after the other share one connection: no new TCP handshake per request."""
    async with Upstream(answering(ok())) as upstream, pool_to(upstream.origin) as pool:
        assert await get_text(pool, b"/1") == b"hello"
        assert await get_text(pool, b"/2") == b"hello"
    assert upstream.accepted == 1
    assert [request.target for request in upstream.peers[0].requests] == [b"/1", b"/2"]


async def test_closed_response_connection_is_not_reused() -> None:
    """`close()` abandons a response mid-body: the upstream sees the connection end (and can stop
    generating), and the next request gets a new connection."""

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        if len(upstream.peers) == 1:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            await peer.read_until_eof()
        else:
            peer.send(ok())
            await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/1", [], None)
        assert await response.read_chunk() == b"partial"
        response.close()
        assert await response.read_chunk() == b""
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 1)
        assert await get_text(pool, b"/2") == b"hello"
    assert upstream.accepted == 2


async def test_response_released_before_its_end_is_not_reused() -> None:
    """Releasing a response whose body was not read to the end must not put the connection back: its unread
    bytes would become the next request's answer. The upstream sees it close."""

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        if len(upstream.peers) == 1:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf ")
        else:
            peer.send(ok(b"next"))
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/1", [], None)
        assert await response.read_chunk() == b"half "
        response.release()
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 1)
        assert await get_text(pool, b"/2") == b"next"
    assert upstream.accepted == 2


async def test_connection_close_response_is_not_reused() -> None:
    """An upstream that says `Connection: close` will not read another request on that connection, even if it
    leaves it open: the pool closes it and makes a new one."""
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    async with Upstream(answering(raw)) as upstream, pool_to(upstream.origin) as pool:
        assert await get_text(pool, b"/1") == b"hello"
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 1)
        assert await get_text(pool, b"/2") == b"hello"
    assert upstream.accepted == 2
    assert [len(peer.requests) for peer in upstream.peers] == [1, 1]


async def test_connection_idle_past_keepalive_is_not_reused() -> None:
    """An idle connection older than `keepalive_seconds` is likely closed by the upstream by now: a new one is
    made, and the stale one is closed."""
    async with (
        Upstream(answering(ok())) as upstream,
        pool_to(upstream.origin, keepalive_seconds=0.05) as pool,
    ):
        assert await get_text(pool, b"/1") == b"hello"
        await asyncio.sleep(0.15)
        assert await get_text(pool, b"/2") == b"hello"
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 1)
    assert upstream.accepted == 2


async def test_connection_within_keepalive_is_reused() -> None:
    """The counterpart: idle for less than `keepalive_seconds`, the connection is reused."""
    async with Upstream(answering(ok())) as upstream, pool_to(upstream.origin, keepalive_seconds=1.0) as pool:
        assert await get_text(pool, b"/1") == b"hello"
        await asyncio.sleep(0.1)
        assert await get_text(pool, b"/2") == b"hello"
    assert upstream.accepted == 1


async def test_request_read_on_a_reused_connection_then_closed_is_broken_off_not_resent() -> None:
    """The upstream reads a POST on a kept-alive connection, then closes it without answering. It may have acted
    on it (a paid completion): the request is not sent again, and the user gets `BrokenOff` (the proxy's 502)."""

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        peer.send(ok(b"first"))
        await peer.read_request()  # the second request arrives, and the upstream closes without a word

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        assert await get_text(pool, b"/1") == b"first"
        with pytest.raises(BrokenOff):
            await pool.request(b"POST", b"/2", [(b"X-A", b"b")], b"payload")
    assert upstream.accepted == 1
    assert [request.target for request in upstream.peers[0].requests] == [b"/1", b"/2"]
    assert upstream.peers[0].requests[1].body == b"payload"


async def test_upstream_closing_right_after_a_response_does_not_fail_the_next_request() -> None:
    """The upstream closes an idle kept-alive connection right after its response, without saying
    `Connection: close`; the next request, sent straight away (before the loop has handled the FIN), still
    succeeds: the idle check finds the FIN waiting on the socket, and a new connection carries the request."""

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.send(ok(b"answer"))
        # returning closes the connection at once

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/1", [], None)
        assert await read_all(response) == b"answer"
        response.release()
        second = await pool.request(b"POST", b"/2", [], b"payload")
        assert await read_all(second) == b"answer"
        second.release()
    assert upstream.accepted == 2
    assert upstream.peers[1].requests[0].body == b"payload"


async def test_idle_connection_sent_unsolicited_bytes_is_not_reused() -> None:
    """Bytes from an upstream on an idle connection belong to no request: reusing that connection would hand
    them to the next request as its answer. The pool drops it."""

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        peer.send(ok(b"first"))
        if len(upstream.peers) == 1:
            await asyncio.sleep(0.05)
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        else:
            while await peer.read_request() is not None:
                peer.send(ok(b"other"))
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        assert await get_text(pool, b"/1") == b"first"
        await asyncio.sleep(0.15)
        assert await get_text(pool, b"/2") == b"first"
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 1)
    assert upstream.accepted == 2
    assert len(upstream.peers[0].requests) == 1


async def test_bytes_after_a_complete_response_are_not_taken_as_its_body() -> None:
    """An upstream that writes more than one response's worth in one go (a second, unasked-for response):
    the body ends where its Content-Length says, the surplus is not appended to it, and the connection is not
    reused."""
    raw = ok(b"hello") + b"HTTP/1.1 404 Not Found\r\nX-Stale: 1\r\nContent-Length: 5\r\n\r\nstale"

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            peer.send(raw)

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/1", [], None)
        assert response.status == 200
        assert await read_all(response) == b"hello"
        assert response.headers == [(b"Content-Length", b"5")]
        response.release()
        assert await get_text(pool, b"/2") == b"hello"
    assert upstream.accepted == 2


async def test_aclose_closes_idle_connections() -> None:
    """At shutdown the pool closes its kept-alive connections: the upstream sees them end."""
    async with Upstream(answering(ok())) as upstream:
        pool = HttpPool(
            upstream.origin, max_connections=4, keepalive_seconds=5, connect_timeout=1, read_timeout=1
        )
        try:
            assert await get_text(pool) == b"hello"
            assert not upstream.peers[0].eof.is_set()
        finally:
            await pool.aclose()
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 1)


async def test_request_after_aclose_fails() -> None:
    """A pool that has shut down makes no new connections."""
    async with Upstream(answering(ok())) as upstream, pool_to(upstream.origin) as pool:
        await pool.aclose()
        with pytest.raises(ConnectFailed):
            await pool.request(b"GET", b"/", [], None)
    assert upstream.accepted == 0


# Errors by phase.


async def test_refused_connection_is_connect_failed() -> None:
    """Nothing listening: `ConnectFailed` (the proxy's 502), not an OSError leaking out."""
    async with pool_to(f"http://127.0.0.1:{free_port()}") as pool:
        with pytest.raises(ConnectFailed):
            await pool.request(b"GET", b"/", [], None)


async def test_silent_upstream_is_headers_timeout() -> None:
    """Connected and sent, but no answer: `HeadersTimeout` after about the read timeout (the proxy's 504),
    and the connection is given up, so the upstream sees it close."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin, read_timeout=0.3) as pool:
        started = time.monotonic()
        with pytest.raises(HeadersTimeout):
            await pool.request(b"GET", b"/", [], None)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 1)
    assert 0.27 <= elapsed < 1.0


async def test_upstream_closing_without_answer_is_broken_off() -> None:
    """On a fresh connection, a close before any answer is `BrokenOff`, and it is not retried: the upstream
    read the request."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        with pytest.raises(BrokenOff):
            await pool.request(b"POST", b"/", [], b"body")
    assert upstream.accepted == 1


async def test_invalid_response_is_broken_off() -> None:
    """Garbage instead of HTTP is `BrokenOff`, and the connection is closed."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        with pytest.raises(BrokenOff):
            await pool.request(b"GET", b"/", [], None)
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 1)
    assert upstream.accepted == 1


async def test_invalid_response_on_a_reused_connection_is_not_retried() -> None:
    """An upstream that answered (even garbage) has seen the request: it is not sent again."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(ok())
        await peer.read_request()
        peer.send(b"HTTP/1.1 abc nonsense\r\n\r\n")
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        assert await get_text(pool) == b"hello"
        with pytest.raises(BrokenOff):
            await pool.request(b"POST", b"/", [], b"once")
    assert upstream.accepted == 1


# Bodies without a length, and responses without a body (every way a body can break off:
# test_http1_breakoff.py).


async def test_body_delimited_by_close_is_read_whole_and_not_reused() -> None:
    """No Content-Length and not chunked: the body is everything until the upstream closes, which is its
    complete end (not an error); that connection is of course not reused."""

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        if len(upstream.peers) == 1:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
            await peer.drain()
            await asyncio.sleep(0.05)
            peer.send(b"second part")
            await peer.drain()
            return  # the close ends the body
        peer.send(ok(b"next"))
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/1", [], None)
        assert response.has_length is False
        assert await read_all(response) == b"first part, second part"
        assert await response.read_chunk() == b""
        response.release()
        assert await get_text(pool, b"/2") == b"next"
    assert upstream.accepted == 2


async def test_head_response_completes_without_waiting_for_a_body() -> None:
    """A HEAD answer carries the Content-Length the GET would have, but no body: the exchange ends with the
    headers instead of waiting for bytes that never come."""

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n")

    async with Upstream(handler) as upstream, pool_to(upstream.origin, read_timeout=2.0) as pool:
        started = time.monotonic()
        response = await pool.request(b"HEAD", b"/file", [], None)
        assert response.status == 200
        assert response.headers[0] == (b"Content-Length", b"1234")
        assert await response.read_chunk() == b""
        response.release()
        assert time.monotonic() - started < 1.0
    assert upstream.peers[0].requests[0].line == b"HEAD /file HTTP/1.1"


async def test_no_content_response_completes_without_waiting() -> None:
    """A 204 has no body by definition: it completes at once."""
    raw = b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
    async with Upstream(answering(raw)) as upstream, pool_to(upstream.origin, read_timeout=2.0) as pool:
        started = time.monotonic()
        response = await pool.request(b"DELETE", b"/thing", [], None)
        assert response.status == 204
        assert response.headers == [(b"X-A", b"1")]
        assert await response.read_chunk() == b""
        response.release()
        assert time.monotonic() - started < 1.0


async def test_no_content_connection_is_reused() -> None:
    """A complete 204 leaves the connection ready for the next request."""
    raw = b"HTTP/1.1 204 No Content\r\n\r\n"
    async with Upstream(answering(raw)) as upstream, pool_to(upstream.origin) as pool:
        for _ in range(3):
            response = await pool.request(b"DELETE", b"/thing", [], None)
            assert response.status == 204
            assert await response.read_chunk() == b""
            response.release()
    assert upstream.accepted == 1


async def test_not_modified_with_content_length_completes_without_waiting() -> None:
    """A 304 may carry the Content-Length of the representation it stands for, yet has no body."""
    raw = b'HTTP/1.1 304 Not Modified\r\nContent-Length: 500\r\nETag: "x"\r\n\r\n'
    async with Upstream(answering(raw)) as upstream, pool_to(upstream.origin, read_timeout=2.0) as pool:
        started = time.monotonic()
        response = await pool.request(b"GET", b"/cached", [(b"If-None-Match", b'"x"')], None)
        assert response.status == 304
        assert await response.read_chunk() == b""
        response.release()
        assert time.monotonic() - started < 1.0
        assert await get_text(pool, b"/cached") == b""
    assert upstream.accepted == 1


async def test_interim_continue_is_skipped() -> None:
    """A `100 Continue` before the real answer is not the answer: the user sees the final status and only its
    headers."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
        await peer.drain()
        await asyncio.sleep(0.05)
        peer.send(b"HTTP/1.1 201 Created\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok")
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"POST", b"/", [], b"data")
        assert response.status == 201
        assert response.headers == [(b"X-Final", b"1"), (b"Content-Length", b"2")]
        assert await read_all(response) == b"ok"
        response.release()


async def test_interim_responses_in_the_same_packet_are_skipped() -> None:
    """Several interim answers (103 Early Hints, 100 Continue) arriving with the final one in one read."""
    raw = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    )
    async with Upstream(answering(raw)) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/", [], None)
        assert response.status == 200
        assert response.headers == [(b"Content-Length", b"5")]
        assert await read_all(response) == b"final"
        response.release()
        assert await get_text(pool) == b"final"
    assert upstream.accepted == 1


# Flow control.


async def test_large_chunked_body_read_slowly_arrives_whole() -> None:
    """A multi-megabyte stream read slowly by the consumer (a slow client behind the proxy) arrives complete and
    in order, while the gateway holds only a bounded amount of it at a time."""
    pieces = [bytes([index % 256]) * 65536 + index.to_bytes(4, "big") for index in range(128)]  # ~8 MiB
    expected = b"".join(pieces)

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            peer.send(b"%x\r\n%b\r\n" % (len(piece), piece))
            await peer.drain()
        peer.send(b"0\r\n\r\n")
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/big", [], None)
        digest = hashlib.sha256()
        size = largest = 0
        while chunk := await response.read_chunk():
            digest.update(chunk)
            size += len(chunk)
            largest = max(largest, len(chunk))
            await asyncio.sleep(0.01)
        response.release()
        assert size == len(expected)
        assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
        assert largest <= HIGH_WATER + MAX_READ
    assert upstream.accepted == 1


# The connection limit.


async def test_request_waits_for_a_connection_at_the_limit() -> None:
    """With `max_connections=1`, a second concurrent request waits until the first response is released, then
    goes out on that same connection."""
    async with (
        Upstream(answering(ok())) as upstream,
        pool_to(upstream.origin, max_connections=1, pool_timeout=1.0) as pool,
    ):
        first = await pool.request(b"GET", b"/1", [], None)
        second_task = asyncio.create_task(pool.request(b"GET", b"/2", [], None))
        await asyncio.sleep(0.1)
        assert not second_task.done()
        assert await read_all(first) == b"hello"
        first.release()
        second = await asyncio.wait_for(second_task, 1)
        assert await read_all(second) == b"hello"
        second.release()
    assert upstream.accepted == 1
    assert [request.target for request in upstream.peers[0].requests] == [b"/1", b"/2"]


async def test_request_at_the_limit_gives_up_after_pool_timeout() -> None:
    """With the only connection held, a second request fails with `PoolTimeout` (the proxy answers 503
    `upstream_busy`) after about the pool timeout, instead of queueing forever; the connect timeout, far longer
    here, does not apply to the wait."""
    async with (
        Upstream(answering(ok())) as upstream,
        pool_to(upstream.origin, max_connections=1, connect_timeout=30.0, pool_timeout=0.3) as pool,
    ):
        first = await pool.request(b"GET", b"/1", [], None)
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await pool.request(b"GET", b"/2", [], None)
        elapsed = time.monotonic() - started
        assert await read_all(first) == b"hello"
        first.release()
    assert 0.27 <= elapsed < 1.0
    assert upstream.accepted == 1


async def test_pool_is_usable_after_a_waiter_gave_up() -> None:
    """A request that timed out waiting leaves no trace in the pool: the held connection, once released, serves
    the next request."""
    async with (
        Upstream(answering(ok())) as upstream,
        pool_to(upstream.origin, max_connections=1, pool_timeout=0.2) as pool,
    ):
        first = await pool.request(b"GET", b"/1", [], None)
        with pytest.raises(PoolTimeout):
            await pool.request(b"GET", b"/2", [], None)
        assert await read_all(first) == b"hello"
        first.release()
        assert await get_text(pool, b"/3") == b"hello"
    assert upstream.accepted == 1
    assert [request.target for request in upstream.peers[0].requests] == [b"/1", b"/3"]


async def test_waiter_gets_room_when_the_held_connection_is_closed() -> None:
    """At the limit, a connection that is closed rather than released makes room: the waiting request gets a new
    connection at once."""
    async with (
        Upstream(answering(ok())) as upstream,
        pool_to(upstream.origin, max_connections=1, pool_timeout=2.0) as pool,
    ):
        first = await pool.request(b"GET", b"/1", [], None)
        second_task = asyncio.create_task(pool.request(b"GET", b"/2", [], None))
        await asyncio.sleep(0.05)
        first.close()
        second = await asyncio.wait_for(second_task, 1.0)
        assert await read_all(second) == b"hello"
        second.release()
    assert upstream.accepted == 2


async def test_cancelled_request_closes_its_connection_and_frees_its_room() -> None:
    """A request cancelled while waiting for headers (the client went away) closes its connection, so the
    upstream sees it end and the next request is not kept waiting for room."""

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        if len(upstream.peers) == 1:
            await peer.read_until_eof()  # never answers
            return
        peer.send(ok())
        await peer.read_until_eof()

    async with (
        Upstream(handler) as upstream,
        pool_to(upstream.origin, max_connections=1, pool_timeout=2.0, read_timeout=5) as pool,
    ):
        task = asyncio.create_task(pool.request(b"GET", b"/slow", [], None))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(upstream.peers[0].eof.wait(), 1)
        assert await asyncio.wait_for(get_text(pool, b"/next"), 1.0) == b"hello"
    assert upstream.accepted == 2


# TLS: real upstreams (OpenAI, Mistral) are https.


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def tls_upstream(
    cert_file: Path, key_file: Path, peers: list[Peer] | None = None
) -> tuple[asyncio.Server, int]:
    """An https upstream answering every request; each connection it accepts is appended to `peers`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        if peers is not None:
            peers.append(peer)
        while await peer.read_request() is not None:
            peer.send(ok(b"over tls"))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def test_https_upstream_is_reached_over_verified_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https origin is spoken to over TLS, its certificate verified against the trusted roots (here the test's
    own, through SSL_CERT_FILE as OpenSSL reads it), and its connections kept alive like any other."""
    cert_file, key_file = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    server, port = await tls_upstream(cert_file, key_file)
    try:
        async with pool_to(f"https://127.0.0.1:{port}") as pool:
            assert await get_text(pool) == b"over tls"
            assert await get_text(pool) == b"over tls"
            assert len(pool._open) == 1
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_https_connection_is_reused_after_a_pause(
    loop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before reuse the pool polls the raw socket under TLS, where records other than the response (a TLS 1.3
    session ticket, say) could wait: a TLS connection left idle between requests is still found alive and reused,
    on either loop."""
    cert_file, key_file = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))

    async def scenario() -> None:
        peers: list[Peer] = []
        server, port = await tls_upstream(cert_file, key_file, peers)
        try:
            async with pool_to(f"https://127.0.0.1:{port}") as pool:
                for _ in range(3):
                    assert await get_text(pool) == b"over tls"
                    await asyncio.sleep(0.05)
            assert len(peers) == 1
            assert len(peers[0].requests) == 3
        finally:
            server.close()
            await server.wait_closed()

    run_on(loop, scenario())


async def test_https_upstream_with_an_untrusted_certificate_is_connect_failed(tmp_path: Path) -> None:
    """A certificate no trusted root signed is refused while connecting: the request never leaves the gateway."""
    cert_file, key_file = self_signed(tmp_path)
    server, port = await tls_upstream(cert_file, key_file)
    try:
        async with pool_to(f"https://127.0.0.1:{port}") as pool:
            with pytest.raises(ConnectFailed):
                await pool.request(b"GET", b"/", [], None)
    finally:
        server.close()
        await server.wait_closed()
