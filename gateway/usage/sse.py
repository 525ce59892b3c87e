"""Incremental Server-Sent Events parsing: the data of each event, from bytes pushed in however they were split."""

from __future__ import annotations

import re

MAX_EVENT_BYTES = 1024 * 1024
"""An event past this size is dropped whole: a broken or hostile stream must not grow our memory."""

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class EventStreamParser:
    """Turns pushed bytes into the `data` of each complete event, in order.

    Follows the WHATWG event-stream rules for line endings (CRLF, LF or CR, even when a CRLF is split across
    chunks), comments and multi-line `data`. The `event`, `id` and `retry` fields are ignored: usage lives in
    the data. Bytes are never decoded here; the caller parses each event's data as it likes. An event that
    does not end before the stream does is not returned.
    """

    __slots__ = ("_after_cr", "_data", "_first_line", "_has_data", "_line", "_max", "_oversized", "_skipped")

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._line = bytearray()  # the unfinished line, carried to the next chunk
        self._data = bytearray()  # the current event's data lines, joined by LF
        self._has_data = False  # `data:` with an empty value still makes an event
        self._oversized = False  # the current event passed the limit: skip to its blank line
        self._skipped = False  # the unfinished line had bytes we dropped, so it is not blank
        self._after_cr = False  # the last chunk ended in CR: a leading LF completes that CRLF
        self._first_line = True

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of each event that this chunk completes (often none, sometimes several)."""
        events: list[bytes] = []
        start = 1 if self._after_cr and chunk[:1] == b"\n" else 0
        if chunk:
            self._after_cr = chunk.endswith(b"\r")
        for line_end in _LINE_END.finditer(chunk, start):
            line = chunk[start : line_end.start()]
            if self._line:
                line = bytes(self._line) + line
                self._line.clear()
            self._end_line(line, events)
            start = line_end.end()
        if start < len(chunk):
            if self._oversized:
                self._skipped = True
            else:
                self._line += chunk[start:]
                self._check_size()
        return events

    def _end_line(self, line: bytes, events: list[bytes]) -> None:
        if self._first_line:
            line = line.removeprefix(_BOM)
            self._first_line = False
        skipped, self._skipped = self._skipped, False
        if not line and not skipped:
            if self._has_data and not self._oversized:
                events.append(bytes(self._data))
            self._data.clear()
            self._has_data = self._oversized = False
            return
        if self._oversized or line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name != b"data":
            return
        if self._has_data:
            self._data += b"\n"
        self._data += value[1:] if value.startswith(b" ") else value
        self._has_data = True
        self._check_size()

    def _check_size(self) -> None:
        if len(self._data) + len(self._line) > self._max:
            self._oversized = True
            self._skipped = bool(self._line)
            self._has_data = False
            self._data = bytearray()  # new objects, so the memory is given back now
            self._line = bytearray()
