"""Reading a JSON object body in a management route: bounded, parsed once, 400 `invalid_json` otherwise, and
400 naming the field that holds text no database can store (`gateway.fields`), whatever the route does with it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import QueryableAttribute
from starlette.requests import Request

from gateway.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from gateway.fields import check_document, column_length
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
    return check_document(parse_json_object(body))


def optional_string(body: dict[str, Any], field: str, *, column: QueryableAttribute[Any]) -> str | None:
    """`body[field]` when it is a string that fits `column`; None when absent. Raises 400 otherwise."""
    value = body.get(field)
    if value is None:
        return None
    max_length = column_length(column)
    if not isinstance(value, str) or (max_length is not None and len(value) > max_length):
        raise InvalidRequestError(
            f"{field} must be a string of at most {max_length} characters.", param=field
        )
    return value
