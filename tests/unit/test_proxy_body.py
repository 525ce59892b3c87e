"""The proxy's request body (`gateway.proxy.ReverseProxy`): sent to the upstream whole, with its length.

In every chain (`gateway.chains`) a middleware has read the body before the proxy and replays it in one message.
Served here on its own, with no middleware in front, the proxy also gathers a body that the server hands over in
pieces (a client sending it chunked, a piece at a time) and sends it whole: never chunked, never in part.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.proxy import ReverseProxy
from gateway.upstreams import Upstream, UpstreamClients
from tests.serving import LiveServer


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """The upstream: answers with the framing headers it was sent, and the body as it arrived."""
    body = b""
    more_body = True
    while more_body:
        message = await receive()
        body += message.get("body", b"")
        more_body = message.get("more_body", False)
    headers = dict(scope["headers"])
    seen = {
        "content-length": headers.get(b"content-length", b"").decode(),
        "transfer-encoding": headers.get(b"transfer-encoding", b"").decode(),
        "body": body.decode(),
    }
    answer = orjson.dumps(seen)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]}
    )
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def proxy() -> Iterator[str]:
    with LiveServer(echo) as upstream:
        clients = UpstreamClients([Upstream("echo", upstream.url)], connect_timeout=2.0, read_timeout=5.0)

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with clients:
                yield

        route = Route("/echo", ReverseProxy(Upstream("echo", upstream.url), clients=clients, path="/echo"))
        with LiveServer(Starlette(routes=[route], lifespan=lifespan)) as server:
            yield server.url


def test_a_body_sent_in_pieces_reaches_the_upstream_whole_with_its_length(proxy: str) -> None:
    def pieces() -> Iterator[bytes]:
        for piece in (b'{"model": ', b'"m", ', b'"input": "', b"x" * 70_000, b'"}'):
            yield piece
            time.sleep(0.02)  # each piece its own read on the server, so its own message to the proxy

    response = httpx.post(f"{proxy}/echo", content=pieces(), timeout=10)

    assert response.status_code == 200
    body = '{"model": "m", "input": "' + "x" * 70_000 + '"}'
    assert response.json() == {"content-length": str(len(body)), "transfer-encoding": "", "body": body}


def test_a_body_in_one_piece_goes_as_it_came(proxy: str) -> None:
    response = httpx.post(f"{proxy}/echo", content=b'{"a": 1}', timeout=10)

    assert response.json() == {"content-length": "8", "transfer-encoding": "", "body": '{"a": 1}'}


def test_no_body_is_announced_as_none(proxy: str) -> None:
    response = httpx.post(f"{proxy}/echo", timeout=10)

    assert response.json() == {"content-length": "0", "transfer-encoding": "", "body": ""}
