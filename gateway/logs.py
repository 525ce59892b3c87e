"""How the gateway's log lines look (LOG_FORMAT): uvicorn's text, or one JSON object per line, each carrying the
id of the request it was written in.

The JSON lines come from python-json-logger's orjson formatter, set on the handlers uvicorn's `log_config` builds,
so that uvicorn's records, the gateway's and any library's that reach the root logger look alike; the access log
writes its own lines in the same shape (`gateway.accesslog`)."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from uvicorn.config import LOGGING_CONFIG

from gateway.context import current_request

# The keys of a JSON line, the access log's included: `time` (ISO 8601, UTC), `level`, `logger`, `message`, and
# `request_id` when written while a request was served; a traceback goes under `exc_info`.
JSON_FIELDS = "{levelname}{name}{message}"
JSON_RENAMED = {"levelname": "level", "name": "logger"}
# Postgres' DETAIL line, which asyncpg puts in its errors' text: a constraint's violation quotes the row's values
# there ("Key (email)=(a@example.com) already exists"), which SQLAlchemy's hide_parameters does not reach.
DATABASE_DETAIL = re.compile(r"^DETAIL:  .*$", re.MULTILINE)
HIDDEN_DETAIL = "DETAIL:  [hidden: it may quote the statement's values]"
# The errors whose first line quotes a value: Postgres' on a value it cannot take as its type ('invalid input
# syntax for type integer: "..."', and the like for enums, ranges and dates), and asyncpg's on an argument it
# cannot encode ("invalid input for query argument $2: '...' (reason)", where the reason may quote it again).
QUOTED_VALUE = re.compile(
    r"(invalid input syntax for type [^:\n]+: |invalid input value for enum [^:\n]+: "
    r"|field value out of range: |value )\"[^\n]*?\"(?=$| is out of range)"
    r"|(invalid input for query argument \$\d+[^:\n]*: ).*$",
    re.MULTILINE,
)
HIDDEN_VALUE = "[hidden: a value]"


class RequestIdFilter(logging.Filter):
    """Gives a record written while a request is served that request's id (`gateway.context.current_request`),
    unless it names one already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            context = current_request.get()
            if context is not None:
                record.request_id = context.request_id
        return True


class DatabaseDetailFilter(logging.Filter):
    """Writes a record's traceback without the database's DETAIL lines, which may quote the values of a failed
    statement, nor the values its errors quote (`QUOTED_VALUE`): the traceback is formatted here, once, and the
    formatters take the text as it is. A warning or an error that puts a database error's text in its message (a
    background writer's one line) is cleaned alike; the access lines (INFO) are not looked at."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = hide_values(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.levelno >= logging.WARNING and isinstance(record.args, tuple):
            record.args = tuple(_hidden_arg(arg) for arg in record.args)
        return True


def _hidden_arg(arg: object) -> object:
    """A message's argument: an error's text (or the text of one) without the values it quotes, else as it is.
    Each argument alone, as `QUOTED_VALUE` reads a quoted value to the end of its text."""
    if not isinstance(arg, str | BaseException):
        return arg
    text = str(arg)
    hidden = hide_values(text)
    return arg if hidden == text else hidden


def hide_values(text: str) -> str:
    """`text` without the values a database error may quote (its DETAIL lines, `QUOTED_VALUE`)."""
    text = QUOTED_VALUE.sub(lambda match: (match[1] or match[2]) + HIDDEN_VALUE, text)
    return DATABASE_DETAIL.sub(HIDDEN_DETAIL, text)


class HandshakeEchoFilter(logging.Filter):
    """Drops uvicorn's and websockets' lines on a WebSocket handshake's answer (`uvicorn.error`): the gateway's
    access line says the same, with the request id, so a refused handshake is one line, not three."""

    ECHOES = frozenset(
        {'%s - "WebSocket %s" [accepted]', '%s - "WebSocket %s" 403', '%s - "WebSocket %s" %d'}
    )
    ECHOES |= {"connection rejected (%d %s)"}

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.ECHOES


def logging_config(log_format: str = "text") -> dict[str, Any]:
    """uvicorn's `log_config` for `log_format` ("text" or "json"): its own loggers, the gateway's, and the root
    logger (libraries' warnings) on the same handlers."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "request_id": {"()": RequestIdFilter},
        "database_detail": {"()": DatabaseDetailFilter},
        "handshake_echo": {"()": HandshakeEchoFilter},
    }
    for handler in config["handlers"].values():
        handler["filters"] = ["request_id", "database_detail"]
    config["loggers"]["uvicorn.error"]["filters"] = ["handshake_echo"]
    config["loggers"]["gateway"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    if log_format == "json":
        json_formatter = {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
            "fmt": JSON_FIELDS,
            "style": "{",
            "rename_fields": JSON_RENAMED,
            "timestamp": "time",
            "reserved_attrs": [
                *RESERVED_ATTRS,
                "color_message",
            ],  # uvicorn's message again, with ANSI colours
        }
        config["formatters"] = {"default": json_formatter, "access": dict(json_formatter)}
    return config
