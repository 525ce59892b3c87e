"""The access log as a server writes it: a line per HTTP response and per WebSocket handshake."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway.accesslog import AccessLog
from gateway.middleware.context import ContextMiddleware
from tests.serving import LiveServer


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def accepts(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hi")
    await websocket.close()


async def refuses(websocket: WebSocket) -> None:
    await websocket.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    app = Starlette(
        routes=[
            Route("/hello", hello),
            WebSocketRoute("/ws/open", accepts),
            WebSocketRoute("/ws/shut", refuses),
        ],
        middleware=[Middleware(ContextMiddleware, access_log=AccessLog())],
    )
    with LiveServer(app) as live:
        yield live


def logged(capsys: pytest.CaptureFixture[str], *expected: str) -> list[str]:
    """The lines written so far, once each of `expected` ends one (the log is written at the end of a loop turn)."""
    deadline = time.monotonic() + 5
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines += capsys.readouterr().out.splitlines()
        if all(any(line.endswith(ending) for line in lines) for ending in expected):
            return lines
        time.sleep(0.01)
    raise AssertionError(f"not every one of {expected} ends a line of {lines}")


def test_a_response_is_logged_with_its_request_id(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    httpx.get(f"{server.url}/hello?x=1", headers={"x-request-id": "log-1"})

    assert logged(capsys, '"GET /hello?x=1 HTTP/1.1" 200 log-1')


def test_websocket_handshakes_are_logged_accepted_or_refused(
    server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ws_url = server.url.replace("http://", "ws://")
    with connect(f"{ws_url}/ws/open") as websocket:
        assert websocket.recv() == "hi"
    with pytest.raises(InvalidStatus):
        connect(f"{ws_url}/ws/shut")

    assert logged(capsys, '"WebSocket /ws/open" accepted', '"WebSocket /ws/shut" 403')
