"""The middleware that opens every request: attaches its `gateway.context.RequestContext`, puts `X-Request-ID` on
the response, and writes the access line."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.accesslog import AccessLog
from gateway.context import REQUEST_ID_HEADER, SCOPE_KEY, RequestContext, request_id_from

_REQUEST_ID_RAW = REQUEST_ID_HEADER.lower().encode("latin-1")


class ContextMiddleware:
    """Opens every HTTP request: attaches a `RequestContext`, puts `X-Request-ID` on the response, and logs the
    response (when given an access log)."""

    def __init__(self, app: ASGIApp, *, access_log: AccessLog | None = None) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.access_log is not None:
            await self.app(scope, receive, self._logging_handshake(scope, send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        context = RequestContext(request_id=request_id_from(scope["headers"]))
        scope[SCOPE_KEY] = context
        request_id_header = (_REQUEST_ID_RAW, context.request_id.encode("ascii"))

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                context.response_started = True
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _REQUEST_ID_RAW]
                headers.append(request_id_header)
                message["headers"] = headers
                if self.access_log is not None:
                    self.access_log.response(scope, message["status"], context.request_id)
            await send(message)

        await self.app(scope, receive, send_with_request_id)

    def _logging_handshake(self, scope: Scope, send: Send) -> Send:
        """A WebSocket's handshake gets its access line: accepted, or the status it was refused with."""
        access_log = self.access_log
        assert access_log is not None

        logged = False

        async def send_logging_handshake(message: Message) -> None:
            nonlocal logged
            kind = message["type"]
            if not logged and kind in (
                "websocket.accept",
                "websocket.http.response.start",
                "websocket.close",
            ):
                logged = True
                if kind == "websocket.accept":
                    access_log.websocket(scope, "accepted")
                elif kind == "websocket.http.response.start":
                    access_log.websocket(scope, str(message["status"]))
                else:
                    access_log.websocket(scope, "403")  # closed before accepting: the server answers 403
            await send(message)

        return send_logging_handshake
