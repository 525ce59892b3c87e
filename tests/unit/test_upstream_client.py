"""The upstream client's one error map, over real sockets to a scripted upstream: how each way an exchange fails
reaches the proxy, the agents' completions and the Chroma lookups (status and code), and `fetch_json`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from gateway import upstreams
from gateway.errors import UpstreamError, UpstreamIncompleteError
from gateway.upstream_client import UpstreamClient
from tests.unit.scripted_upstream import Handler, Peer, Upstream, answering, free_port, ok, pool_to

CREDENTIAL = (b"authorization", b"Bearer upstream-key")


@asynccontextmanager
async def client_to(
    origin: str, *, max_connections: int = 4, read_timeout: float = 1.0, pool_timeout: float = 1.0
) -> AsyncIterator[UpstreamClient]:
    async with pool_to(
        origin, max_connections=max_connections, read_timeout=read_timeout, pool_timeout=pool_timeout
    ) as http_pool:
        yield UpstreamClient(upstreams.Upstream("scripted", origin, CREDENTIAL), http_pool)


async def never_answers(peer: Peer) -> None:
    await peer.read_request()
    await peer.read_until_eof()


async def hangs_up(peer: Peer) -> None:
    await peer.read_request()


async def huge_head(peer: Peer) -> None:
    await peer.read_request()
    peer.send(b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 70_000 + b"\r\n\r\n")
    await peer.read_until_eof()


BEFORE_THE_ANSWER: list[tuple[str, Handler | None, int, str]] = [
    ("refused", None, 502, "upstream_unavailable"),
    ("closed before answering", hangs_up, 502, "upstream_unavailable"),
    ("head over 64 KiB", huge_head, 502, "upstream_unavailable"),
    ("no headers within the read timeout", never_answers, 504, "upstream_timeout"),
]


@pytest.mark.parametrize(
    ("handler", "status", "code"),
    [case[1:] for case in BEFORE_THE_ANSWER],
    ids=[case[0] for case in BEFORE_THE_ANSWER],
)
async def test_a_failure_before_the_answer_is_mapped_by_phase(
    handler: Handler | None, status: int, code: str
) -> None:
    async def send(origin: str) -> None:
        async with client_to(origin, read_timeout=0.3) as client:
            await client.request(b"POST", b"/v1/chat/completions", [], b"{}")

    with pytest.raises(UpstreamError) as raised:
        if handler is None:
            await send(f"http://127.0.0.1:{free_port()}")
        else:
            async with Upstream(handler) as upstream:
                await send(upstream.origin)

    assert (raised.value.status_code, raised.value.code) == (status, code)


async def test_a_full_pool_is_503_upstream_busy_after_the_pool_timeout() -> None:
    async with (
        Upstream(answering(ok())) as upstream,
        client_to(upstream.origin, max_connections=1, pool_timeout=0.2) as client,
    ):
        held = await client.request(b"GET", b"/", [], None)  # not read yet: its connection stays taken
        with pytest.raises(UpstreamError) as raised:
            await client.request(b"GET", b"/", [], None)
        assert await held.read_chunk() == b"hello"
        held.release()
        again = await client.request(b"GET", b"/", [], None)  # the released connection serves the next one
        assert await again.read_all(100) == b"hello"

    assert (raised.value.status_code, raised.value.code) == (503, "upstream_busy")


def breaking_off(framing: bytes, end: Callable[[Peer], Awaitable[None]]) -> Handler:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n")
        peer.send(b"5\r\nhello\r\n" if b"chunked" in framing else b"hello")
        await peer.drain()
        await asyncio.sleep(0.1)
        await end(peer)

    return handler


async def fin(peer: Peer) -> None:
    peer.writer.close()


async def rst(peer: Peer) -> None:
    peer.reset()


async def silence(peer: Peer) -> None:
    await peer.read_until_eof()


@pytest.mark.parametrize(
    ("framing", "end"),
    [
        (b"transfer-encoding: chunked\r\n", fin),
        (b"transfer-encoding: chunked\r\n", rst),
        (b"transfer-encoding: chunked\r\n", silence),
        (b"content-length: 100\r\n", fin),
        (b"content-length: 100\r\n", rst),
        (b"content-length: 100\r\n", silence),
        (b"", rst),  # delimited by the connection's end: a FIN would be its end, a reset is not
        (b"", silence),
    ],
    ids=[
        "chunked-fin",
        "chunked-rst",
        "chunked-silent",
        "length-fin",
        "length-rst",
        "length-silent",
        "close-rst",
        "close-silent",
    ],
)
async def test_an_answer_that_breaks_off_after_it_started_is_incomplete(
    framing: bytes, end: Callable[[Peer], Awaitable[None]]
) -> None:
    async with (
        Upstream(breaking_off(framing, end)) as upstream,
        client_to(upstream.origin, read_timeout=0.5) as client,
    ):
        response = await client.request(b"GET", b"/", [], None)
        assert response.status == 200
        assert await response.read_chunk() == b"hello"
        with pytest.raises(UpstreamIncompleteError) as raised:
            await response.read_chunk()
        response.close()

    assert (raised.value.status_code, raised.value.code) == (502, "upstream_incomplete")


async def test_fetch_json_sends_the_credential_and_the_json_and_reads_the_answer() -> None:
    async with (
        Upstream(answering(ok(b'{"name": "db"}'))) as upstream,
        client_to(upstream.origin + "/base") as client,
    ):
        answer = await client.fetch_json("POST", "/api/things", json={"name": "db"})
        request = upstream.peers[0].requests[0]

    assert (answer.status, answer.document) == (200, {"name": "db"})
    assert request.line == b"POST /base/api/things HTTP/1.1"
    assert request.values(b"authorization") == [CREDENTIAL[1]]
    assert request.values(b"content-type") == [b"application/json"]
    assert json.loads(request.body) == {"name": "db"}


@pytest.mark.parametrize("body", [b"not json", b'"' + b"x" * 200 + b'"'], ids=["not-json", "over-the-bound"])
async def test_fetch_json_gives_the_status_without_a_document_it_cannot_read(body: bytes) -> None:
    async with Upstream(answering(ok(body))) as upstream, client_to(upstream.origin) as client:
        answer = await client.fetch_json("GET", "/", max_bytes=100)

    assert (answer.status, answer.document) == (200, None)
