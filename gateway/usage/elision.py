"""Shortening long JSON strings before ijson sees them: ijson holds each string whole, and OCR bodies carry
base64 images that are single strings of hundreds of megabytes."""

from __future__ import annotations

import re

__all__ = ["StringElider"]

_BACKSLASH = 0x5C


class StringElider:
    """Replaces every JSON string longer than `limit` bytes with "" before the JSON parser sees it.

    Strings are kept or dropped whole, so what the parser sees stays valid JSON (no escape or UTF-8 sequence
    cut in two), and only the scanner's state and at most `limit` bytes are held between chunks.
    """

    __slots__ = ("_escaped", "_in_string", "_kept", "_limit", "_plain", "_too_long")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # Text outside strings and short strings without escapes, skipped over in C (possessive: no backtracking).
        self._plain = re.compile(rb'(?:[^"]+|"[^"\\]{0,%d}")*+' % limit)
        self._in_string = False
        self._escaped = False  # the previous chunk ended inside a string with an unpaired backslash
        self._kept = bytearray()
        self._too_long = False

    def filter(self, chunk: bytes) -> bytes:
        out = bytearray()
        pos = 0
        while pos < len(chunk):
            if not self._in_string:
                plain = self._plain.match(chunk, pos)
                plain_end = plain.end() if plain else pos
                out += chunk[pos : plain_end + 1]  # with the quote opening a string that the slow path reads
                pos = plain_end + 1
                self._in_string = plain_end < len(chunk)
                continue
            closing = self._closing_quote(chunk, pos)
            self._keep(chunk, pos, len(chunk) if closing < 0 else closing)
            if closing < 0:
                break
            if not self._too_long:
                out += self._kept
            out += b'"'
            self._kept.clear()
            self._in_string = self._too_long = self._escaped = False
            pos = closing + 1
        return bytes(out)

    def _closing_quote(self, chunk: bytes, pos: int) -> int:
        """Where the current string ends in `chunk`, or -1; a quote after an odd run of backslashes is escaped."""
        start = pos
        while True:
            quote = chunk.find(b'"', start)
            end = len(chunk) if quote < 0 else quote
            i = end - 1
            while i >= start and chunk[i] == _BACKSLASH:
                i -= 1
            run = end - 1 - i
            if i < pos and self._escaped:  # the run goes on from the previous chunk
                run += 1
            if quote < 0:
                self._escaped = run % 2 == 1
                return -1
            if run % 2 == 0:
                return quote
            start = quote + 1

    def _keep(self, chunk: bytes, start: int, end: int) -> None:
        if self._too_long:
            return
        if len(self._kept) + end - start > self._limit:
            self._too_long = True
            self._kept = bytearray()
        else:
            self._kept += chunk[start:end]
