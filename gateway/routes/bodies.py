"""Reading a JSON object body in a management route: bounded, parsed once, 400 `invalid_json` otherwise."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from gateway.jsonbody import parse_json_object

MAX_BODY_BYTES = 64 * 1024  # management bodies are small; the proxy has its own, larger limit


async def json_object(request: Request, *, require_json_type: bool = False) -> dict[str, Any]:
    """The request's JSON object body. Raises 415 (when the type is required), 413 or 400."""
    if require_json_type:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaTypeError()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLargeError()
    document = parse_json_object(body)
    return document


def optional_string(body: dict[str, Any], field: str, *, max_length: int) -> str | None:
    """`body[field]` when it is a string within `max_length`; None when absent. Raises 400 otherwise."""
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise InvalidRequestError(
            f"{field} must be a string of at most {max_length} characters.", param=field
        )
    return value
