"""ContextMiddleware: every response carries a request id, the client's when it is sane."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from gateway.context import RequestContext
from gateway.routing import Gateway
from tests.serving import LiveServer


async def echo_context(request: Request) -> JSONResponse:
    context = RequestContext.of(request.scope)
    assert context is not None
    return JSONResponse({"request_id": context.request_id})


async def crash(request: Request) -> PlainTextResponse:
    raise RuntimeError("secret internals: sk-do-not-show")


async def own_request_id(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok", headers={"x-request-id": "from-the-app"})


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    app = Gateway(
        routes=[Route("/context", echo_context), Route("/crash", crash), Route("/own", own_request_id)]
    )
    with LiveServer(app) as live:
        yield live


def test_a_sane_client_request_id_is_echoed_and_shared_with_the_app(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/context", headers={"x-request-id": "trace:01J9-abc_def.1"})

    assert response.headers["x-request-id"] == "trace:01J9-abc_def.1"
    assert response.json() == {"request_id": "trace:01J9-abc_def.1"}


@pytest.mark.parametrize(
    "sent", ["x" * 129, "has space", 'quote"d', "semi;colon", "ünïcode".encode().decode()]
)
def test_an_insane_client_request_id_is_replaced(server: LiveServer, sent: str) -> None:
    response = httpx.get(f"{server.url}/context", headers={"x-request-id": sent.encode("utf-8")})

    generated = response.headers["x-request-id"]
    assert generated != sent
    assert len(generated) == 32 and generated.isalnum()


def test_without_a_client_id_each_response_gets_a_fresh_one(server: LiveServer) -> None:
    ids = {httpx.get(f"{server.url}/context").headers["x-request-id"] for _ in range(5)}

    assert len(ids) == 5


def test_the_gateway_id_replaces_one_set_downstream(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/own", headers={"x-request-id": "mine"})

    assert response.headers.get_list("x-request-id") == ["mine"]


def test_an_unexpected_error_is_a_generic_500_envelope_with_the_request_id(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/crash", headers={"x-request-id": "crash-1"})

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["x-request-id"] == "crash-1"
    assert "sk-do-not-show" not in response.text and "Traceback" not in response.text
