"""What a proxied response says it used, learnt from its body chunks as they go by.

Observers only read: the bytes sent to the client are never changed or held back, and an observer's memory
stays bounded whatever the size of the body, so a stream is observed exactly as it is forwarded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import ijson
import orjson

from gateway.usage.decoding import Inflater, decoders_for, undo_codings
from gateway.usage.elision import StringElider
from gateway.usage.sse import EventStreamParser

__all__ = ["ObservedUsage", "ResponseObserver", "observer_for"]

logger = logging.getLogger(__name__)

MAX_JSON_STRING_BYTES = 1024
"""Longer JSON strings never reach the JSON parser: no value we read is that long, and one OCR image in base64
can be hundreds of megabytes in a single string, which the parser would otherwise hold whole."""
MAX_BUFFERED_JSON_BYTES = 64 * 1024
"""A JSON body up to this size (a chat completion is well under it) is kept and parsed once, by orjson, when it
ends; a larger one is read as it passes by ijson's push parser, which costs far more per byte but holds nothing."""

_OBSERVED_KINDS = frozenset({"chat", "ocr"})
_TOKEN_PATHS = (
    "usage.prompt_tokens",
    "usage.input_tokens",
    "usage.completion_tokens",
    "usage.output_tokens",
    "usage.total_tokens",
)
_TOKEN_KEYS = tuple((path, path.removeprefix("usage.")) for path in _TOKEN_PATHS)  # (path, key in "usage")
_PAGES_PROCESSED = "usage_info.pages_processed"
_COUNT_PATHS = frozenset({*_TOKEN_PATHS, _PAGES_PROCESSED})
_WATCHED_PREFIXES = frozenset({"model", "pages", "pages.item", *_COUNT_PATHS})
_VALUE_EVENTS = frozenset({"start_map", "start_array", "string", "number", "boolean", "null"})
# What `_Findings.absorb_event` takes from an event once the model is known: a usage or usage_info object, or a
# pages array. An event without these keys followed by `{` or `[` is not parsed at all. (A false match only
# costs a parse; inside a JSON string the quotes are escaped, so the keys cannot be faked there.)
_MAY_CARRY_USAGE = re.compile(rb'"(?:usage|usage_info)"\s*:\s*\{|"pages"\s*:\s*\[')


@dataclass(slots=True)
class ObservedUsage:
    """What the upstream reported in its response; None where it said nothing (or was cut off before)."""

    input_tokens: int | None = None  # usage.prompt_tokens, else usage.input_tokens
    output_tokens: int | None = None  # usage.completion_tokens, else usage.output_tokens
    total_tokens: int | None = None  # usage.total_tokens, else input + output when both are known
    ocr_pages: int | None = None  # usage_info.pages_processed, else the number of top-level "pages"
    model: str | None = None  # the first top-level "model"


class ResponseObserver(Protocol):
    """Watches one response body go by."""

    def feed(self, chunk: bytes) -> None:
        """Reads the next body chunk; never raises, so observing cannot break the response."""

    def result(self) -> ObservedUsage:
        """What was seen so far: the stream may have ended early."""


def observer_for(kind: str, *, content_type: str | None, content_encoding: str | None) -> ResponseObserver:
    """An observer for a response of `kind` ("chat" or "ocr") with these headers.

    Event streams and JSON bodies are read, after undoing gzip or deflate. Anything else gets an observer that
    sees nothing: another kind or media type, and content-codings we do not undo (br, zstd or unknown ones),
    whose responses still stream and are recorded with unknown usage.
    """
    decoders = decoders_for(content_encoding)
    if kind not in _OBSERVED_KINDS or decoders is None:
        return _BlindObserver()
    reader = _reader_for(content_type or "")
    if reader is None:
        return _BlindObserver()
    return _BodyObserver(decoders, reader())


@functools.lru_cache(maxsize=64)
def _reader_for(content_type: str) -> type[_EventStreamReader | _JsonReader] | None:
    """The reader for a media type (responses carry few distinct Content-Types, so each is parsed once)."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "text/event-stream":
        return _EventStreamReader
    if media_type == "application/json" or media_type.endswith("+json"):
        return _JsonReader
    return None


class _BlindObserver:
    """For bodies we cannot or need not read."""

    def feed(self, chunk: bytes) -> None:
        pass

    def result(self) -> ObservedUsage:
        return ObservedUsage()


@dataclass(slots=True)
class _Findings:
    """The values as the response reported them; `usage()` settles which ones count."""

    model: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # by dotted path, e.g. "usage.prompt_tokens"
    page_items: int | None = None  # items of the top-level "pages" array, once it has started

    def record(self, path: str, value: object) -> None:
        count = _as_count(value)
        if count is not None:
            self.counts[path] = count

    def absorb_event(self, event: dict[str, Any]) -> None:
        """One streamed event; a later usage object replaces an earlier one, as the last is the total."""
        model = event.get("model")
        if self.model is None and isinstance(model, str) and model:
            self.model = model
        usage = event.get("usage")
        if isinstance(usage, dict):
            counts = self.counts
            for path, key in _TOKEN_KEYS:
                count = _as_count(usage.get(key))
                if count is None:
                    counts.pop(path, None)
                else:
                    counts[path] = count
        usage_info = event.get("usage_info")
        if isinstance(usage_info, dict):
            self.record(_PAGES_PROCESSED, usage_info.get("pages_processed"))
        pages = event.get("pages")
        if isinstance(pages, list):
            self.page_items = len(pages)

    def usage(self) -> ObservedUsage:
        counts = self.counts
        input_tokens = counts.get("usage.prompt_tokens", counts.get("usage.input_tokens"))
        output_tokens = counts.get("usage.completion_tokens", counts.get("usage.output_tokens"))
        total_tokens = counts.get("usage.total_tokens")
        if total_tokens is None and input_tokens is not None and output_tokens is not None:
            total_tokens = input_tokens + output_tokens
        return ObservedUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=total_tokens,
            ocr_pages=counts.get(_PAGES_PROCESSED, self.page_items),
            model=self.model,
        )


class _BodyReader(Protocol):
    def feed(self, data: bytes) -> None: ...

    def findings(self) -> _Findings: ...


class _BodyObserver:
    """Undoes the content-coding, hands the bytes to a reader, and stops for good at the first error."""

    __slots__ = ("_decoders", "_reader", "_stopped")

    def __init__(self, decoders: Sequence[Inflater], reader: _BodyReader) -> None:
        self._decoders = decoders
        self._reader = reader
        self._stopped = False

    def feed(self, chunk: bytes) -> None:
        if self._stopped or not chunk:
            return
        try:
            if not self._decoders:
                self._reader.feed(chunk)  # the common case, without a generator per chunk
            else:
                for data in undo_codings(self._decoders, chunk):
                    self._reader.feed(data)
        except Exception:  # a corrupt body, or a bug here, must never break the response it came with
            self._stopped = True
            logger.debug("stopped observing a response body", exc_info=True)

    def result(self) -> ObservedUsage:
        return self._reader.findings().usage()


class _EventStreamReader:
    """Each event's data as one JSON document; a malformed event costs only itself."""

    __slots__ = ("_found", "_parser")

    def __init__(self) -> None:
        self._parser = EventStreamParser()
        self._found = _Findings()

    def findings(self) -> _Findings:
        return self._found

    def feed(self, data: bytes) -> None:
        found = self._found
        for event in self._parser.feed(data):
            if event == b"[DONE]":
                continue
            if found.model is not None and _MAY_CARRY_USAGE.search(event) is None:
                continue  # a plain delta ("usage": null at most): nothing in it that `absorb_event` would keep
            try:
                document = orjson.loads(event)
            except orjson.JSONDecodeError:
                continue
            if isinstance(document, dict):
                found.absorb_event(document)


class _JsonReader:
    """One JSON document: kept and parsed once at the end while it is small, streamed through ijson past that.

    Both read the same values; a body orjson cannot parse (cut short, or malformed) is handed to the streaming
    reader, which finds what comes before the break, as it would have had it read the body all along.
    """

    __slots__ = ("_chunks", "_size", "_streaming")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._streaming: _StreamingJsonReader | None = None

    def feed(self, data: bytes) -> None:
        if self._streaming is None:
            self._size += len(data)
            if self._size <= MAX_BUFFERED_JSON_BYTES:
                self._chunks.append(data)
                return
            self._streaming = _StreamingJsonReader()
            held, self._chunks = self._chunks, []
            for chunk in held:
                self._streaming.feed(chunk)
        self._streaming.feed(data)

    def findings(self) -> _Findings:
        if self._streaming is not None:
            return self._streaming.findings()
        body = b"".join(self._chunks)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            streaming = _StreamingJsonReader()
            with contextlib.suppress(Exception):  # it stops at the break, as it would have while streaming
                streaming.feed(body)
            return streaming.findings()
        found = _Findings()
        if isinstance(document, dict):
            model = document.get("model")
            if isinstance(model, str) and len(model.encode()) > MAX_JSON_STRING_BYTES:
                document = {**document, "model": ""}  # the streaming reader never sees one this long
            found.absorb_event(document)
        return found


class _StreamingJsonReader:
    """One JSON document read with ijson's push parser: values are picked out as they pass, nothing is kept."""

    __slots__ = ("_events", "_found", "_in_pages", "_parser", "_strings")

    def __init__(self) -> None:
        self._found = _Findings()
        self._strings = StringElider(MAX_JSON_STRING_BYTES)
        self._events = ijson.sendable_list()
        self._parser = ijson.parse_coro(self._events)
        self._in_pages = False

    def feed(self, data: bytes) -> None:
        data = self._strings.filter(data)
        if not data:
            return
        try:
            self._parser.send(data)  # raises ijson.JSONError on invalid JSON: the observer then stops
        finally:
            for prefix, event, value in self._events:
                if prefix in _WATCHED_PREFIXES:
                    self._absorb(prefix, event, value)
            del self._events[:]

    def findings(self) -> _Findings:
        return self._found

    def _absorb(self, prefix: str, event: str, value: object) -> None:
        findings = self._found
        if prefix == "pages.item":
            if self._in_pages and event in _VALUE_EVENTS and findings.page_items is not None:
                findings.page_items += 1
        elif prefix == "pages":
            self._in_pages = event == "start_array"
            if self._in_pages and findings.page_items is None:
                findings.page_items = 0
        elif prefix == "model":
            if event == "string" and findings.model is None and isinstance(value, str) and value:
                findings.model = value
        elif prefix in _COUNT_PATHS and event == "number":
            findings.record(prefix, value)


def _as_count(value: object) -> int | None:
    """A non-negative whole number, or None: a bool, a fraction or a negative number is not a count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float | Decimal):
        try:
            whole = int(value)
        except (ValueError, OverflowError):
            return None
        return whole if whole == value and whole >= 0 else None
    return None
