"""How an upstream response can break off, and what `gateway.http1` reports: never a clean end that was not one.

A body is framed by Content-Length, by chunked encoding, or by the end of the connection; it can end in a FIN, an
RST, or silence. Only a FIN ends a close-delimited body; every other break-off is `BrokenOff` (or `BodyTimeout`
for silence), after the bytes that came. The response head is bounded too (`HeadersTooLarge`). The body cases
run on asyncio's loop and on uvloop, which serves the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from gateway.http1 import BodyTimeout, BrokenOff, HeadersTooLarge
from gateway.http1.connection import HIGH_WATER, MAX_HEAD_BYTES
from tests.unit.scripted_upstream import LOOPS, Peer, Upstream, ok, pool_to, read_all, run_on

# Each framing's head and the first part of its body: ten bytes that came before the break-off.
FRAMINGS = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    "close-delimited": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n0123456789",
}
READ_TIMEOUT = 0.3


@pytest.mark.parametrize("ending", ["fin", "rst", "silence"])
@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("loop", LOOPS)
def test_body_break_off_is_reported_unless_a_fin_ends_a_close_delimited_body(
    loop: str, framing: str, ending: str
) -> None:
    """Ten bytes of the body come, then the upstream closes (FIN), resets (RST) or goes silent. The user gets the
    ten bytes, then: a clean end only for a FIN on a close-delimited body (its legitimate end); `BodyTimeout`
    after about the read timeout for silence; `BrokenOff` otherwise. A truncated body never looks complete."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(FRAMINGS[framing])
        await peer.drain()
        await asyncio.sleep(0.05)  # the first bytes are read on their own
        if ending == "fin":
            peer.writer.close()
        elif ending == "rst":
            peer.reset()
        else:
            await peer.read_until_eof()

    async def scenario() -> None:
        async with Upstream(handler) as upstream, pool_to(upstream.origin, read_timeout=READ_TIMEOUT) as pool:
            response = await pool.request(b"GET", b"/", [], None)
            assert response.has_length is (framing == "content-length")
            assert response.close_delimited is (framing == "close-delimited")
            assert await response.read_chunk() == b"0123456789"
            started = time.monotonic()
            if framing == "close-delimited" and ending == "fin":
                assert await response.read_chunk() == b""
                assert response.ended
                response.release()
            else:
                error = BodyTimeout if ending == "silence" else BrokenOff
                with pytest.raises(error):
                    await response.read_chunk()
                with pytest.raises(error):
                    await response.read_chunk()  # and again: it never turns into an end
                assert not response.ended
                response.close()
                if ending == "silence":
                    await asyncio.wait_for(upstream.peers[0].eof.wait(), 2)  # the stalled exchange is ended
            elapsed = time.monotonic() - started
        if ending == "silence":
            assert READ_TIMEOUT * 0.9 <= elapsed < READ_TIMEOUT + 2.0

    run_on(loop, scenario())


@pytest.mark.parametrize("tail", [b"0\r\n", b"0\r\n\r", b"a\r\n01234", b"a\r\n0123456789"])
async def test_chunked_body_without_its_whole_last_chunk_is_broken_off(tail: bytes) -> None:
    """A chunked body that stops anywhere before the end of its last-chunk line is cut short, even one CRLF
    before its end."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n" + tail)

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        response = await pool.request(b"GET", b"/", [], None)
        with pytest.raises(BrokenOff):
            await read_all(response)
        response.close()
    assert upstream.accepted == 1


@pytest.mark.parametrize("ending", ["fin", "rst"])
@pytest.mark.parametrize("loop", LOOPS)
def test_large_close_delimited_body_read_slowly_ends_as_the_connection_did(loop: str, ending: str) -> None:
    """A close-delimited body larger than the buffer, so the socket is not read while the user is slow: the
    upstream's FIN or RST is only heard once reading resumes, and is still told apart: the whole body and a
    clean end after a FIN, `BrokenOff` after an RST."""
    body = bytes(range(256)) * (4 * HIGH_WATER // 256)

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\n\r\n" + body)
        await peer.drain()
        if ending == "rst":
            await asyncio.sleep(0.05)
            peer.reset()

    async def scenario() -> None:
        async with Upstream(handler) as upstream, pool_to(upstream.origin, read_timeout=2.0) as pool:
            response = await pool.request(b"GET", b"/", [], None)
            received = b""
            outcome: type[Exception] | None = None
            try:
                while chunk := await response.read_chunk():
                    received += chunk
                    await asyncio.sleep(0.02)
            except BrokenOff as error:
                outcome = type(error)
            response.close()
            assert upstream.accepted == 1
        if ending == "fin":
            assert outcome is None
            assert received == body
        else:
            assert outcome is BrokenOff
            assert body.startswith(received)

    run_on(loop, scenario())


# The response head is bounded.


def head_of(size: int, body: bytes) -> bytes:
    """A response whose status line and headers take exactly `size` bytes, its body following in the same write."""
    start = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Pad: " % len(body)
    pad = size - len(start) - len(b"\r\n\r\n")
    return start + b"p" * pad + b"\r\n\r\n" + body


@pytest.mark.parametrize("extra", [0, 1])
async def test_response_head_past_64_kib_is_headers_too_large(extra: int) -> None:
    """A head of exactly 64 KiB is taken, with a large body in the same write (counted as body, not head); one
    byte more is `HeadersTooLarge`, a `BrokenOff` (the proxy's 502), and the connection is closed."""
    body = b"b" * (3 * MAX_HEAD_BYTES)

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(head_of(MAX_HEAD_BYTES + extra, body))
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        if extra:
            with pytest.raises(HeadersTooLarge) as raised:
                await pool.request(b"GET", b"/", [], None)
            assert isinstance(raised.value, BrokenOff)
            await asyncio.wait_for(upstream.peers[0].eof.wait(), 2)
        else:
            response = await pool.request(b"GET", b"/", [], None)
            assert await read_all(response) == body
            response.release()


async def test_endless_response_head_is_refused_as_soon_as_it_passes_the_limit() -> None:
    """An upstream that sends a header that never ends: the pool gives up once 64 KiB have come, long before the
    read timeout, and closes the connection, so the upstream's writes fail soon after."""
    sent = 0
    refused = asyncio.Event()

    async def handler(peer: Peer) -> None:
        nonlocal sent
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            while sent < 256 * 1024 * 1024:
                peer.send(b"e" * 65536)
                sent += 65536
                await peer.writer.drain()
        refused.set()

    async with Upstream(handler) as upstream, pool_to(upstream.origin, read_timeout=10.0) as pool:
        with pytest.raises(HeadersTooLarge):
            await asyncio.wait_for(pool.request(b"GET", b"/", [], None), 5)
        await asyncio.wait_for(refused.wait(), 5)
    assert upstream.accepted == 1
    assert sent < 64 * 1024 * 1024  # what the kernels buffered on the way, not the whole stream


async def test_interim_responses_count_toward_the_head_limit() -> None:
    """Interim responses (103 Early Hints) are part of the head: an upstream cannot pass the limit with many small
    ones."""
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: </" + b"s" * 1000 + b">; rel=preload\r\n\r\n"

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(hint * (MAX_HEAD_BYTES // len(hint) + 1) + ok())
        await peer.read_until_eof()

    async with Upstream(handler) as upstream, pool_to(upstream.origin) as pool:
        with pytest.raises(HeadersTooLarge):
            await pool.request(b"GET", b"/", [], None)
    assert upstream.accepted == 1
