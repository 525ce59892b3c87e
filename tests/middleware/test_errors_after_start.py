"""An error of ours raised once the response has started (an upstream answer that broke off) is never rendered:
it reaches the server as ours, whatever the route (a fixed path, a path with parameters, a request function's
streamed response), so that the server aborts the connection; and it is not logged as an unhandled fault."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import UpstreamIncompleteError
from gateway.routing import Gateway


async def breaks_off(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
    raise UpstreamIncompleteError()


class Endpoint:
    """An ASGI app as the proxied routes' endpoints are (a `ReverseProxy` instance)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await breaks_off(scope, receive, send)


def request(path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def streams_then_breaks_off(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        raise UpstreamIncompleteError()

    return StreamingResponse(body())


@pytest.mark.parametrize("path", ["/v1/fixed", "/v1/with/params", "/api/streamed"])
async def test_the_server_is_given_our_error_and_nothing_is_logged_as_unhandled(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = Gateway(
        routes=[Route("/api/streamed", streams_then_breaks_off, methods=["POST"])],
        proxied=[
            Route("/v1/fixed", Endpoint(), methods=["POST"]),  # found by the router's path lookup
            Route("/v1/with/{name}", Endpoint(), methods=["POST"]),  # found by its scan
        ],
    )
    sent: list[Message] = []

    bodies = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if bodies:
            return bodies.pop()
        await asyncio.Event().wait()  # as a server does: nothing more until the client leaves
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    with caplog.at_level(logging.WARNING), pytest.raises(UpstreamIncompleteError):
        await app(request(path), receive, send)

    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert sent[-1]["more_body"] is True  # the message was never ended
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
