"""BodyRewriteMiddleware: one bounded read, the rewritten body replayed with a correct Content-Length."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.middleware.rewrite import BodyRewriteMiddleware
from gateway.routing import Gateway
from tests.serving import LiveServer

LIMIT = 1000


def add_flag(body: dict[str, Any]) -> dict[str, Any] | None:
    return None if body.get("keep") else {**body, "flag": True}


async def describe_body(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "body": body.decode(),
            "content_length": request.headers.get("content-length"),
            "transfer_encoding": request.headers.get("transfer-encoding"),
        }
    )


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    # As in gateway.chains: the middleware sits on the route, inside the app's error handling.
    route = Route(
        "/",
        describe_body,
        methods=["POST"],
        middleware=[Middleware(BodyRewriteMiddleware, rewrite=add_flag, max_bytes=LIMIT)],
    )
    app = Gateway(routes=[route])
    with LiveServer(app) as live:
        yield live


def test_a_rewritten_body_arrives_with_its_new_content_length(server: LiveServer) -> None:
    seen = httpx.post(server.url, content=b'{"a": 1}').json()

    assert seen["body"] == '{"a":1,"flag":true}'
    assert seen["content_length"] == str(len(seen["body"]))


def test_a_chunked_body_arrives_whole_with_a_content_length(server: LiveServer) -> None:
    seen = httpx.post(server.url, content=iter([b'{"a":', b" 2}"])).json()

    assert seen["body"] == '{"a":2,"flag":true}'
    assert seen["content_length"] == str(len(seen["body"]))
    assert seen["transfer_encoding"] is None


def test_an_unchanged_body_arrives_byte_for_byte(server: LiveServer) -> None:
    body = b'{ "keep" : true,   "x": "\\u00e9" }'
    seen = httpx.post(server.url, content=body).json()

    assert seen["body"].encode() == body
    assert seen["content_length"] == str(len(body))


def test_a_body_exactly_at_the_limit_is_accepted(server: LiveServer) -> None:
    body = b'{"keep": true, "pad": "' + b"x" * (LIMIT - 25) + b'"}'
    assert len(body) == LIMIT

    assert httpx.post(server.url, content=body).status_code == 200


def test_a_declared_length_over_the_limit_is_413_before_reading(server: LiveServer) -> None:
    response = httpx.post(server.url, content=b"{" + b" " * LIMIT + b"}")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_streamed_body_over_the_limit_is_413(server: LiveServer) -> None:
    response = httpx.post(server.url, content=iter([b"{", b" " * LIMIT, b"}"]))

    assert response.status_code == 413
