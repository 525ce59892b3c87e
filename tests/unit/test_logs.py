"""The log filter that keeps a failed statement's values out of the logs, on records as the background writers
write them (their one line quotes the database error's text, with no traceback)."""

from __future__ import annotations

import logging

import pytest

from gateway.logs import DatabaseDetailFilter

SECRET = "sk-live-0123456789abcdef"


def written(level: int, message: str, *args: object) -> str:
    record = logging.LogRecord("gateway.test", level, __file__, 1, message, args, None)
    assert DatabaseDetailFilter().filter(record)
    return record.getMessage()


@pytest.mark.parametrize(
    "error",
    [
        f'invalid input syntax for type integer: "{SECRET}"',
        f"invalid input for query argument $2: '{SECRET}' (expected str, got int)",
        f"duplicate key value violates unique constraint\nDETAIL:  Key (name)=({SECRET}) already exists.",
    ],
)
def test_a_warning_quoting_a_database_error_loses_the_value(error: str) -> None:
    line = written(logging.WARNING, "budgets: writing failed (%s: %s); it carries on", "DBAPIError", error)

    assert SECRET not in line
    assert line.startswith("budgets: writing failed (DBAPIError: ")


def test_an_error_given_whole_loses_its_quoted_values() -> None:
    error = Exception(f'(DataError) invalid input syntax for type integer: "{SECRET}"\n[SQL: INSERT ...]')

    line = written(logging.ERROR, "budgets: writing failed (%s: %s); it carries on", "DBAPIError", error)

    assert SECRET not in line
    assert "[SQL: INSERT ...]" in line


def test_other_lines_are_left_as_they_are() -> None:
    assert written(logging.WARNING, "usage: %d events written", 3) == "usage: 3 events written"
    quoted = f'invalid input syntax for type integer: "{SECRET}"'
    assert written(logging.INFO, "%s", quoted) == quoted  # an access line is not looked at
