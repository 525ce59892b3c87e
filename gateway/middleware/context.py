"""The middleware that opens every request and WebSocket: attaches its `gateway.context.RequestContext`, puts
`X-Request-ID` on the answer, writes the access line, and counts the response in the metrics.

The metrics are counted here, at the response's start that this layer already watches, rather than in a layer of
their own: one more ASGI layer cost the request path some 18,000 instructions (bench-instructions)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.accesslog import AccessLog
from gateway.context import REQUEST_ID_HEADER, SCOPE_KEY, RequestContext, current_request, request_id_from
from gateway.metrics import UNMATCHED_ROUTE, Metrics

_REQUEST_ID_RAW = REQUEST_ID_HEADER.lower().encode("latin-1")
# The handshake's answers: accepted, refused with an HTTP response, or closed before accepting.
_HANDSHAKE_ANSWERS = ("websocket.accept", "websocket.http.response.start", "websocket.close")


class ContextMiddleware:
    """Opens every HTTP request and WebSocket: attaches a `RequestContext` (the client's `X-Request-ID` when sane),
    puts `X-Request-ID` on the response or the handshake's answer, and logs it (when given an access log).

    Given `metrics`, every HTTP response is counted by its route's template (never the raw path: the series stay
    bounded) and status, with the time the gateway added to its upstreams' when it went upstream; the request is
    the `current_request` of the code below, so that the upstream client can add its waits to it."""

    def __init__(
        self, app: ASGIApp, *, access_log: AccessLog | None = None, metrics: Metrics | None = None
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._handshake(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        context = RequestContext(request_id=request_id_from(scope["headers"]))
        scope[SCOPE_KEY] = context
        request_id_header = (_REQUEST_ID_RAW, context.request_id.encode("ascii"))

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_request_id(message.get("headers", ()), request_id_header)
                if self.access_log is not None:
                    self.access_log.response(scope, message["status"], context.request_id)
                if self.metrics is not None:
                    _count(self.metrics, scope, context, message["status"])
            await send(message)

        token = current_request.set(context)
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            current_request.reset(token)

    async def _handshake(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket: the same context (the chat's turns carry its request id), the id on the handshake's
        answer, and an access line: accepted, or the status it was refused with."""
        context = RequestContext(request_id=request_id_from(scope["headers"]))
        scope[SCOPE_KEY] = context
        request_id_header = (_REQUEST_ID_RAW, context.request_id.encode("ascii"))
        access_log = self.access_log
        answered = False

        async def send_answering_handshake(message: Message) -> None:
            nonlocal answered
            kind = message["type"]
            if not answered and kind in _HANDSHAKE_ANSWERS:
                answered = True
                if kind != "websocket.close":
                    message = {
                        **message,
                        "headers": _with_request_id(message.get("headers", ()), request_id_header),
                    }
                if access_log is not None:
                    if kind == "websocket.accept":
                        outcome = "accepted"
                    elif kind == "websocket.http.response.start":
                        outcome = str(message["status"])
                    else:
                        outcome = "403"  # closed before accepting: the server answers 403
                    access_log.websocket(scope, outcome, request_id=context.request_id)
            await send(message)

        token = current_request.set(context)  # the chat's log lines carry its request id
        try:
            await self.app(scope, receive, send_answering_handshake)
        finally:
            current_request.reset(token)


def _count(metrics: Metrics, scope: Scope, context: RequestContext, status: int) -> None:
    route = scope.get("route")  # the router's match, a 405's too; none for a 404
    upstream = context.upstream_seconds
    added = None if upstream is None else time.perf_counter() - context.started_at - upstream
    metrics.responded(route.path if route else UNMATCHED_ROUTE, status, added)


def _with_request_id(
    headers: list[tuple[bytes, bytes]] | tuple[()], request_id_header: tuple[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if name.lower() != _REQUEST_ID_RAW]
    kept.append(request_id_header)
    return kept
