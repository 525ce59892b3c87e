"""The access log's lines: uvicorn's format plus the request id, one write per loop turn, nothing forgeable."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.accesslog import AccessLog


def scope(raw_path: bytes, query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "http_version": "1.1",
        "client": ("10.0.0.7", 50123),
    }


async def test_lines_of_one_turn_are_written_together_at_its_end(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog()
    log.response(scope(b"/v1/chat/completions"), 200, "abc")
    log.response(scope(b"/v1/ocr", b"x=1"), 502, "def")
    assert capsys.readouterr().out == ""  # not yet: the turn is not over
    await asyncio.sleep(0)
    assert capsys.readouterr().out == (
        'INFO:     10.0.0.7:50123 - "POST /v1/chat/completions HTTP/1.1" 200 abc\n'
        'INFO:     10.0.0.7:50123 - "POST /v1/ocr?x=1 HTTP/1.1" 502 def\n'
    )


async def test_unprintable_target_bytes_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever a server lets through, a control character or a newline in the target never reaches the log raw:
    it could colour a terminal or start a forged line."""
    log = AccessLog()
    log.response(scope(b"/a\r\nINFO:     forged\x1b[31m\xff"), 404, "r1")
    await asyncio.sleep(0)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "\x1b" not in out and "\r" not in out
    assert '"POST /a\\r\\nINFO:     forged\\x1b[31m\\xff HTTP/1.1" 404 r1' in out
