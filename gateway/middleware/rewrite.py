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
    """Applies `rewrite` to a JSON-object body; 400 `invalid_json` when it is not one, 413 past `max_bytes`.

    On a chain the usage step above has read and parsed the body already (`RequestContext.request_json`, the
    body replayed): the rewrite takes that document, so the body is parsed once. On its own it reads the body.
    """

    def __init__(self, app: ASGIApp, *, rewrite: BodyRewrite, max_bytes: int) -> None:
        self.app = app
        self.rewrite = rewrite
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        context = RequestContext.of(scope)
        document = context.request_json if context is not None else None
        if document is None:  # no step above read the body
            read = await read_json_body(scope, receive, self.max_bytes)
            if read is None:
                return  # the client went away before sending its whole body
            document, receive = read
            if context is not None:
                context.request_json = document

        rewritten = self.rewrite(document)
        if rewritten is None:
            await self.app(scope, receive, send)
            return
        await receive()  # the body as sent, replayed from memory: the rewritten one goes in its place
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


async def read_json_body(scope: Scope, receive: Receive, max_bytes: int) -> tuple[JsonObject, Receive] | None:
    """The request's JSON-object body, parsed once, and a `receive` that replays it; None if the client left
    first. Raises `PayloadTooLargeError` past `max_bytes`, `InvalidRequestError` (`invalid_json`) for a body that
    is not a JSON object."""
    body = await read_body(scope, receive, max_bytes)
    if body is None:
        return None
    return parse_json_object(body), replaying(body, receive)


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
