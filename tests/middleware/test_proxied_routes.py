"""The proxied routes' own way in (`gateway.routing.ProxiedRoutes` inside `gateway.app.Gateway`): past
Starlette's app-wide layers, yet every error answered as those layers answer it, with the request id."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.app import Gateway
from gateway.context import RequestContext
from gateway.errors import EXCEPTION_HANDLERS, AuthenticationError
from tests.serving import LiveServer


async def refuses(scope: Scope, receive: Receive, send: Send) -> None:
    raise AuthenticationError("A valid credential is required.", headers={"WWW-Authenticate": "Bearer"})


async def crashes(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("secret internals: sk-do-not-show")


async def breaks_mid_body(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("the upstream broke off")


async def answers(scope: Scope, receive: Receive, send: Send) -> None:
    context = RequestContext.of(scope)
    assert context is not None  # the context middleware ran before the fast way in
    body = context.request_id.encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


class Endpoint:
    """An ASGI app as the proxied routes' endpoints are (a `ReverseProxy` instance), not a request function."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    proxied = [
        Route(path, Endpoint(app), methods=["POST"])
        for path, app in [
            ("/v1/refuses", refuses),
            ("/v1/crashes", crashes),
            ("/v1/breaks", breaks_mid_body),
            ("/v1/answers", answers),
        ]
    ]
    shadowed = Route("/v1/shadowed", Endpoint(crashes), methods=["POST"])
    earlier = Route("/v1/{name}", Endpoint(answers), methods=["POST"])  # takes /v1/shadowed first
    app = Gateway(
        routes=[*proxied, earlier, shadowed],
        proxied=[*proxied, shadowed],
        access_log=None,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    with LiveServer(app) as live:
        yield live


def test_a_proxied_route_answers_with_the_request_context_set(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/v1/answers", headers={"x-request-id": "fast-1"})

    assert response.status_code == 200
    assert response.text == "fast-1"
    assert response.headers["x-request-id"] == "fast-1"


def test_our_error_is_its_envelope_with_its_headers_and_the_request_id(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/v1/refuses", headers={"x-request-id": "fast-2"})

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-request-id"] == "fast-2"


def test_an_unexpected_error_is_the_generic_500_envelope(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/v1/crashes", headers={"x-request-id": "fast-3"})

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers.get_list("x-request-id") == ["fast-3"]
    assert "sk-do-not-show" not in response.text and "Traceback" not in response.text


def test_an_error_after_the_response_started_cuts_the_connection(server: LiveServer) -> None:
    """Nothing can be said once the status is out: the client must see a broken body, not a clean short one."""
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{server.url}/v1/breaks")


def test_another_method_on_a_proxied_path_goes_through_starlette(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/v1/answers")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["x-request-id"]


def test_an_unknown_path_is_the_404_envelope(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/v1/answers/more")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_a_proxied_path_an_earlier_route_takes_is_left_to_the_router(server: LiveServer) -> None:
    """The way in never answers for a path the router would give to another route first."""
    response = httpx.post(f"{server.url}/v1/shadowed", headers={"x-request-id": "fast-4"})

    assert response.status_code == 200
    assert response.text == "fast-4"  # the earlier pattern route answered, not the crashing proxied one
