"""Parsing a request body that must be a JSON object, with the API's one error for anything else."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequestError


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`. Raises `InvalidRequestError` (`invalid_json`) for anything else."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(document, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    return document
