"""What a client sends the databases, checked before they see it, so that SQLite and Postgres answer alike.

Postgres refuses a NUL in text and a string past its VARCHAR's length; SQLite stores both; a lone surrogate
cannot be encoded for either. Text is refused here with 400 naming the field (or made storable, for values the
gateway must record whatever they are); ids of the wrong form are not looked up; query integers are ASCII digits
of bounded length, never handed to `int()` as `str.isdigit()` would let them (`²`, `٣`, 5,000 digits).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import QueryableAttribute

from gateway.errors import InvalidRequestError

# What no database column can hold: NUL (Postgres refuses it) and UTF-16 surrogates, which have no UTF-8 form.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# `gateway.ids.new_id`: a prefix, an underscore and 24 lowercase hex digits.
ID_FORM = re.compile(r"([a-z]+)_[0-9a-f]{24}")
ASCII_DIGITS = re.compile(r"[0-9]+")
# A bound on a query number's length: `int()` stays cheap and far from its 4,300-digit limit.
MAX_QUERY_DIGITS = 64


def column_length(column: QueryableAttribute[Any]) -> int | None:
    """The length of a model's String column (None for unbounded text): the models are the one source."""
    kind = column.expression.type
    return kind.length if isinstance(kind, String) else None


def is_storable(text: str) -> bool:
    """Whether every database can store `text` as it is (no NUL, no lone surrogate)."""
    return UNSTORABLE.search(text) is None


def check_text(value: str, *, param: str, column: QueryableAttribute[Any] | None = None) -> str:
    """`value` when it can be stored, and within `column`'s length. Raises 400 naming `param` otherwise."""
    if not is_storable(value):
        raise _unstorable(param)
    limit = column_length(column) if column is not None else None
    if limit is not None and len(value) > limit:
        raise InvalidRequestError(f"{param} must be at most {limit} characters.", param=param)
    return value


def check_document(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (a JSON object) when all its text, names included, can be stored. Raises 400 naming the
    top-level field that holds text that cannot."""
    for key, value in document.items():
        if not is_storable(key) or _holds_unstorable(value):
            raise _unstorable(UNSTORABLE.sub(REPLACEMENT, key))
    return document


def storable_text(value: str, *, column: QueryableAttribute[Any]) -> str:
    """`value` as `column` can hold it: NUL and lone surrogates replaced (U+FFFD), cut to the column's length.
    For what the gateway records whatever the client sent (a usage row's path), where refusing is no option."""
    if UNSTORABLE.search(value) is not None:
        value = UNSTORABLE.sub(REPLACEMENT, value)
    limit = column_length(column)
    return value[:limit] if limit is not None else value


def _holds_unstorable(value: object) -> bool:
    if isinstance(value, str):
        return not is_storable(value)
    if isinstance(value, dict):
        return any(not is_storable(key) or _holds_unstorable(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_unstorable(item) for item in value)
    return False


def _unstorable(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{param} holds a character that cannot be stored (NUL or a lone surrogate).", param=param
    )


def is_id(value: str, prefix: str) -> bool:
    """Whether `value` has the form of an id `gateway.ids.new_id(prefix)` makes: one not worth looking up if not."""
    match = ID_FORM.fullmatch(value)
    return match is not None and match.group(1) == prefix


def query_int(raw: str | None, *, param: str, low: int, high: int | None, default: int | None = None) -> int:
    """A whole number from the query string: ASCII digits (leading zeros allowed), at most `MAX_QUERY_DIGITS` of
    them, from `low` to `high` (None: no upper bound); `default` when absent. Raises 400 naming `param` otherwise
    (also when absent without a default)."""
    if raw is None and default is not None:
        return default
    if raw is None or len(raw) > MAX_QUERY_DIGITS or not ASCII_DIGITS.fullmatch(raw):
        raise _not_a_number(param, low, high)
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise _not_a_number(param, low, high)
    return value


def _not_a_number(param: str, low: int, high: int | None) -> InvalidRequestError:
    bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
    return InvalidRequestError(f"{param} must be a whole number {bound}.", param=param)
