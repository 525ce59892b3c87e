"""The one way in (`gateway.routing.Gateway`): a proxied route (an ASGI endpoint, as a `ReverseProxy` is, found by
the router's path lookup) and a management route (a request function, found by its scan) fail along one path: the
same envelope with the request id, the same one log line for a fault, the same abort once the response started."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway.context import RequestContext
from gateway.errors import AuthenticationError
from gateway.routing import Gateway
from tests.serving import LiveServer

PROXIED = "/v1/proxied"
MANAGEMENT = "/api/managed"


def refuses() -> None:
    raise AuthenticationError("A valid credential is required.", headers={"WWW-Authenticate": "Bearer"})


def crashes() -> None:
    raise RuntimeError("secret internals: sk-do-not-show")


async def proxied_refuses(scope: Scope, receive: Receive, send: Send) -> None:
    refuses()


async def proxied_crashes(scope: Scope, receive: Receive, send: Send) -> None:
    crashes()


async def proxied_breaks_mid_body(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("the upstream broke off")


async def proxied_answers(scope: Scope, receive: Receive, send: Send) -> None:
    context = RequestContext.of(scope)
    assert context is not None  # the context middleware ran first
    body = context.request_id.encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


async def managed_refuses(request: Request) -> Response:
    refuses()
    raise AssertionError("unreachable")


async def managed_crashes(request: Request) -> Response:
    crashes()
    raise AssertionError("unreachable")


async def managed_breaks_mid_body(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("the file's storage broke off")

    return StreamingResponse(body(), headers={"content-length": "100"})


async def refuses_the_handshake(websocket: WebSocket) -> None:
    refuses()


class Endpoint:
    """An ASGI app as the proxied routes' endpoints are (a `ReverseProxy` instance), not a request function."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    proxied = [
        Route(f"{PROXIED}/refuses", Endpoint(proxied_refuses), methods=["POST"]),
        Route(f"{PROXIED}/crashes", Endpoint(proxied_crashes), methods=["POST"]),
        Route(f"{PROXIED}/breaks", Endpoint(proxied_breaks_mid_body), methods=["POST"]),
        Route(f"{PROXIED}/answers", Endpoint(proxied_answers), methods=["POST"]),
        # A pattern that takes the fixed path after it: the router's dispatch must answer as its scan would.
        Route(f"{PROXIED}/{{name}}/shadowed", Endpoint(proxied_answers), methods=["POST"]),
        Route(f"{PROXIED}/x/shadowed", Endpoint(proxied_crashes), methods=["POST"]),
    ]
    managed = [
        Route(f"{MANAGEMENT}/refuses", managed_refuses, methods=["POST"]),
        Route(f"{MANAGEMENT}/crashes", managed_crashes, methods=["POST"]),
        Route(f"{MANAGEMENT}/breaks", managed_breaks_mid_body, methods=["POST"]),
        WebSocketRoute(f"{MANAGEMENT}/socket", refuses_the_handshake),
    ]
    with LiveServer(Gateway(routes=managed, proxied=proxied)) as live:
        yield live


def test_a_proxied_route_answers_with_the_request_context_set(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}{PROXIED}/answers", headers={"x-request-id": "fast-1"})

    assert response.status_code == 200
    assert response.text == "fast-1"
    assert response.headers["x-request-id"] == "fast-1"


@pytest.mark.parametrize("base", [PROXIED, MANAGEMENT])
def test_our_error_is_its_envelope_with_its_headers_and_the_request_id(server: LiveServer, base: str) -> None:
    response = httpx.post(f"{server.url}{base}/refuses", headers={"x-request-id": "refused-1"})

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers.get_list("x-request-id") == ["refused-1"]


def test_an_unexpected_error_is_the_same_500_envelope_and_one_log_line_on_either_kind_of_route(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    answers = {}
    lines = {}
    for base, request_id in [(PROXIED, "crash-proxied"), (MANAGEMENT, "crash-managed")]:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            answers[base] = httpx.post(f"{server.url}{base}/crashes", headers={"x-request-id": request_id})
        # Only this server's lines: the session's other servers (a gateway's revocation feed) log from their
        # own threads into the same capture.
        faults = [
            record
            for record in caplog.records
            if record.levelno >= logging.WARNING and record.thread == server.thread_id
        ]
        assert len(faults) == 1, [record.getMessage() for record in faults]
        assert faults[0].name == "gateway.errors" and faults[0].exc_info is not None  # its traceback, once
        lines[base] = faults[0].getMessage()

    assert lines[PROXIED] == f"unhandled RuntimeError on POST {PROXIED}/crashes (request crash-proxied)"
    assert lines[MANAGEMENT] == f"unhandled RuntimeError on POST {MANAGEMENT}/crashes (request crash-managed)"
    proxied, managed = answers[PROXIED], answers[MANAGEMENT]
    assert proxied.status_code == managed.status_code == 500
    assert proxied.content == managed.content
    assert proxied.json()["error"]["code"] == "internal_error"
    assert "sk-do-not-show" not in proxied.text and "Traceback" not in proxied.text
    assert proxied.headers.get_list("x-request-id") == ["crash-proxied"]
    assert managed.headers.get_list("x-request-id") == ["crash-managed"]


@pytest.mark.parametrize("base", [PROXIED, MANAGEMENT])
def test_an_error_after_the_response_started_cuts_the_connection(server: LiveServer, base: str) -> None:
    """Nothing can be said once the status is out: the client must see a broken body, not a clean short one."""
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{server.url}{base}/breaks")


def test_another_method_on_a_proxied_path_is_the_405_envelope(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}{PROXIED}/answers", headers={"x-request-id": "wrong-method"})

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"
    assert response.headers["x-request-id"] == "wrong-method"


def test_an_unknown_path_is_the_404_envelope(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}{PROXIED}/answers/more")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.headers["x-request-id"]


def test_a_proxied_path_an_earlier_pattern_takes_is_answered_by_that_route(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}{PROXIED}/x/shadowed", headers={"x-request-id": "shadowed-1"})

    assert response.status_code == 200
    assert response.text == "shadowed-1"  # the earlier pattern route answered, not the crashing fixed one


def test_an_error_of_ours_before_a_websocket_is_accepted_is_its_envelope_on_the_handshake(
    server: LiveServer,
) -> None:
    url = server.url.replace("http://", "ws://") + f"{MANAGEMENT}/socket"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"x-request-id": "socket-1"}).close()

    response = refused.value.response
    assert response.status_code == 401
    assert b'"type":"authentication_error"' in response.body
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-request-id"] == "socket-1"
