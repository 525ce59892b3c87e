"""Undoing gzip and deflate content-codings incrementally, so usage can be read from compressed bodies.

br and zstd are not decoded: responses using them are observed as unreadable.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

__all__ = ["MAX_INFLATE_STEP", "Inflater", "decoders_for", "undo_codings"]

MAX_INFLATE_STEP = 64 * 1024
"""Decompressed bytes made per step, so a small compressed chunk cannot become one huge allocation."""

_INFLATABLE = frozenset({"gzip", "x-gzip", "deflate"})
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class Inflater:
    """Undoes gzip or deflate incrementally, in output steps of at most MAX_INFLATE_STEP bytes."""

    __slots__ = ("_decoder", "_gzip", "_head")

    def __init__(self, coding: str) -> None:
        self._gzip = coding != "deflate"
        self._decoder = zlib.decompressobj(_GZIP_WBITS) if self._gzip else None
        self._head = b""  # deflate only: the first bytes, until they show whether a zlib header is there

    def inflate(self, data: bytes) -> Iterator[bytes]:
        """Raises zlib.error on a corrupt stream."""
        if self._decoder is None:
            # HTTP's "deflate" means zlib-wrapped, but some servers send raw deflate: look before choosing.
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            self._head = b""
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS if _has_zlib_header(data) else -zlib.MAX_WBITS)
        decoder = self._decoder
        while True:
            out = decoder.decompress(data, MAX_INFLATE_STEP)
            if out:
                yield out
            if decoder.eof:
                data = decoder.unused_data
                if not (self._gzip and data):
                    return  # bytes after a deflate stream are not part of it
                decoder = self._decoder = zlib.decompressobj(_GZIP_WBITS)  # the next gzip member
                continue
            data = decoder.unconsumed_tail
            if not data and len(out) < MAX_INFLATE_STEP:
                return


def decoders_for(content_encoding: str | None) -> list[Inflater] | None:
    """The decoders that undo `content_encoding`, first to apply first; None when we cannot undo it."""
    if not content_encoding:
        return []  # most responses: nothing to undo
    codings = [coding.strip().lower() for coding in content_encoding.split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    if any(coding not in _INFLATABLE for coding in codings):
        return None
    return [Inflater(coding) for coding in reversed(codings)]


def undo_codings(decoders: Sequence[Inflater], data: bytes) -> Iterator[bytes]:
    """`data` decoded by each of `decoders` in turn, as it comes out; raises zlib.error on a corrupt stream."""
    if not decoders:
        yield data
        return
    for piece in decoders[0].inflate(data):
        yield from undo_codings(decoders[1:], piece)


def _has_zlib_header(data: bytes) -> bool:
    return data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
