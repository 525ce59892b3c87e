"""The access log: a line per HTTP response, uvicorn's format with the request id, written a loop turn at a time.

uvicorn's own access line goes through `logging` for every request (a record, a formatter, a lock and a flush):
about 6% of the gateway's CPU per proxied request (docs/BENCHMARKS.md). Here a line is one f-string; the lines of
one event-loop turn go to stdout in one write, so a busy gateway writes many lines per system call and a quiet one
writes each line as soon as the turn ends. With LOG_FORMAT=json a line is a JSON object with the keys of the other
log records' (`gateway.logs`) and the exchange's parts as fields of their own.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import Scope

LOGGER_NAME = "gateway.access"


class AccessLog:
    """Collects the turn's lines and writes them at the end of it."""

    def __init__(self, *, log_format: str = "text") -> None:
        self._lines: list[str] = []
        self._json = log_format == "json"

    def response(self, scope: Scope, status: int, request_id: str) -> None:
        """Log a response as it starts: `INFO:     client - "METHOD /path?query HTTP/1.1" 200 request-id`."""
        peer, method, target = _peer(scope), scope["method"], _target(scope)
        request_line = f"{method} {target} HTTP/{scope['http_version']}"
        if self._json:
            self._add_json(
                f'{peer} - "{request_line}" {status}',
                request_id=request_id,
                client=peer,
                method=method,
                target=target,
                status=status,
            )
        else:
            self._add(f'INFO:     {peer} - "{request_line}" {status} {request_id}\n')

    def websocket(self, scope: Scope, outcome: str, request_id: str | None = None) -> None:
        """Log a WebSocket handshake, as uvicorn does: `INFO:     client - "WebSocket /path" accepted`."""
        peer, target = _peer(scope), _target(scope)
        if self._json:
            self._add_json(
                f'{peer} - "WebSocket {target}" {outcome}',
                request_id=request_id,
                client=peer,
                method="WebSocket",
                target=target,
                status=outcome,
            )
        else:
            self._add(f'INFO:     {peer} - "WebSocket {target}" {outcome}\n')

    def _add_json(self, message: str, **fields: Any) -> None:
        record = {"level": "INFO", "logger": LOGGER_NAME, "message": message}
        record.update((key, value) for key, value in fields.items() if value is not None)
        record["time"] = datetime.now(UTC).isoformat()
        self._add(orjson.dumps(record).decode() + "\n")

    def _add(self, line: str) -> None:
        if not self._lines:
            asyncio.get_running_loop().call_soon(self._write)
        self._lines.append(line)

    def _write(self) -> None:
        lines, self._lines = self._lines, []
        try:
            sys.stdout.write("".join(lines))
            sys.stdout.flush()
        except (OSError, ValueError):
            pass  # stdout is gone (closed, or a full disk): the requests go on without their log


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _target(scope: Scope) -> str:
    """The target as the client sent it; anything unprintable escaped, so that no line can forge another."""
    target: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    if query := scope.get("query_string"):
        target += b"?" + query
    text = target.decode("latin-1")
    return text if text.isascii() and text.isprintable() else text.encode("unicode_escape").decode("ascii")
