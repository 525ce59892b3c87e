"""Request-body rewriting: read the JSON body once, within the size limit, change it, replay it downstream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import RequestContext
from gateway.errors import InvalidRequestError, PayloadTooLargeError
from gateway.jsonbody import parse_json_object

JsonObject = dict[str, Any]
# Returns the rewritten body, or None when the body is to go on byte for byte as the client sent it.
BodyRewrite = Callable[[JsonObject], JsonObject | None]


class BodyRewriteMiddleware:
    """Applies `rewrite` to a JSON-object body; 400 `invalid_json` when it is not one, 413 past `max_bytes`."""

    def __init__(self, app: ASGIApp, *, rewrite: BodyRewrite, max_bytes: int) -> None:
        self.app = app
        self.rewrite = rewrite
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        body = await self._read_body(scope, receive)
        if body is None:
            return  # the client went away before sending its whole body
        document = parse_json_object(body)
        context = RequestContext.of(scope)
        if context is not None:
            context.request_json = document  # read once: usage capture takes its fields from here

        rewritten = self.rewrite(document)
        if rewritten is not None:
            body = orjson.dumps(rewritten)
            scope = dict(scope)
            scope["headers"] = [
                *(
                    (k, v)
                    for k, v in scope["headers"]
                    if k.lower() not in (b"content-length", b"transfer-encoding")
                ),
                (b"content-length", str(len(body)).encode("latin-1")),
            ]

        await self.app(scope, replaying(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        return await read_body(scope, receive, self.max_bytes)


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes | None:
    """The whole request body, or None if the client left first; 413 as soon as it is over `max_bytes`."""
    declared = _content_length(scope)
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
        more_body = message.get("more_body", False)
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` in one message, then hands over to the client's (for the disconnect)."""
    replayed = False

    async def receive_body() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_body


def _too_large(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is over the limit of {max_bytes} bytes.")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise InvalidRequestError("Content-Length is not a number.") from None
    return None
