"""Receiving an uploaded file: a multipart/form-data body parsed as it arrives, its `file` part streamed into a
storage upload while it is hashed, under the per-file limit and what the storage quota leaves.

The body is never held whole (python-multipart's push parser; at most one received chunk at a time), and the
client's filename and content type are made harmless before they are kept.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anyio import CancelScope
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.agents.storage import Storage, Upload

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
MAX_FILENAME_CHARS = 255
MAX_EXTENSION_CHARS = 16
MAX_OTHER_FIELDS_BYTES = 64 * 1024  # form fields beside the file are read past, within this bound
DEFAULT_FILENAME = "file"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


class UploadError(Exception):
    """An upload that is not stored. Subclasses say why."""


class MalformedUploadError(UploadError):
    """Not a multipart/form-data body with exactly one `file` part."""


class NotMultipartError(MalformedUploadError):
    """The body is not multipart/form-data at all."""


class FileTooLargeError(UploadError):
    """The file is over the per-file limit."""


class StorageQuotaError(UploadError):
    """The file would take the agent past its tier's storage bytes or number of files."""


def safe_filename(raw: str) -> str:
    """A client's filename made harmless to show and to offer back: the last path segment only (`/` and `\\`),
    no control, format (bidi) or unassigned characters, no name of dots alone, at most 255 characters."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C")).strip()
    if not name.strip("."):
        return DEFAULT_FILENAME
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and len(extension) <= MAX_EXTENSION_CHARS:
            name = stem[: MAX_FILENAME_CHARS - len(extension) - 1] + "." + extension
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name


def safe_content_type(raw: str | None) -> str:
    """The part's declared media type without parameters, when it is a plain `type/subtype`."""
    media_type = (raw or "").split(";", 1)[0].strip().lower()
    return media_type if MEDIA_TYPE.fullmatch(media_type) else DEFAULT_CONTENT_TYPE


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data body. Raises `NotMultipartError` for any other type."""
    media_type, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise NotMultipartError("Send the file as multipart/form-data with a 'file' part.")
    return boundary


@dataclass(slots=True)
class Received:
    """A file received into an uncommitted storage upload; the caller commits or aborts `upload`."""

    filename: str
    content_type: str
    size: int
    sha256: str
    upload: Upload = field(repr=False)


PartEvent = dict[bytes, bytes] | bytes | None  # a part's headers, a piece of its body, its end


@dataclass(slots=True)
class _PartEvents:
    """What the push parser reported during one `write`, in order. Its callbacks are synchronous, so they
    queue; the async loop drains the queue after each write (at most one received chunk's worth)."""

    queue: list[PartEvent] = field(default_factory=list)
    header_field: bytes = b""
    header_value: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    finished: bool = False

    def callbacks(self) -> MultipartCallbacks:
        def on_header_field(data: bytes, start: int, end: int) -> None:
            self.header_field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self.header_value += data[start:end]

        def on_header_end() -> None:
            self.headers[self.header_field.strip().lower()] = self.header_value.strip()
            self.header_field = self.header_value = b""

        def on_headers_finished() -> None:
            self.queue.append(self.headers)
            self.headers = {}

        def on_part_data(data: bytes, start: int, end: int) -> None:
            self.queue.append(data[start:end])

        def on_part_end() -> None:
            self.queue.append(None)

        def on_end() -> None:
            self.finished = True

        return {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        }

    def drain(self) -> list[PartEvent]:
        events, self.queue = self.queue, []
        return events


@dataclass(slots=True)
class _FileIntake:
    """One upload's progress: whether the current part is the file, and the file's size and hash so far."""

    upload: Upload
    max_bytes: int
    quota_bytes: int | None
    received: Received | None = None
    in_file: bool = False
    size: int = 0
    other_bytes: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    def part_begins(self, headers: dict[bytes, bytes]) -> None:
        filename = _file_part_name(headers)
        self.in_file = filename is not None
        if filename is None:
            return
        if self.received is not None:
            raise MalformedUploadError("Send one 'file' part per upload.")
        content_type = safe_content_type(headers.get(b"content-type", b"").decode("latin-1"))
        self.received = Received(safe_filename(filename), content_type, 0, "", self.upload)

    async def take(self, data: bytes) -> None:
        if not self.in_file:
            self.other_bytes += len(data)
            if self.other_bytes > MAX_OTHER_FIELDS_BYTES:
                raise MalformedUploadError("Form fields beside the file are too large.")
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            raise FileTooLargeError(f"The file is over the {self.max_bytes}-byte limit per file.")
        if self.quota_bytes is not None and self.size > self.quota_bytes:
            raise StorageQuotaError("The file would exceed the agent's storage quota.")
        self.digest.update(data)
        await self.upload.write(data)

    def finish(self) -> Received:
        if self.received is None:
            raise MalformedUploadError("The upload has no 'file' part.")
        self.received.size, self.received.sha256 = self.size, self.digest.hexdigest()
        return self.received


async def receive_upload(
    body: AsyncIterator[bytes],
    content_type: str | None,
    storage: Storage,
    *,
    max_bytes: int,
    quota_bytes: int | None,
) -> Received:
    """Stream the `file` part of a multipart body into a new storage upload, hashing it on the way.

    `max_bytes` is the per-file limit, `quota_bytes` what the agent's storage quota leaves (None: unlimited).
    Raises `MalformedUploadError`, `FileTooLargeError` or `StorageQuotaError`, having aborted the upload.
    """
    events = _PartEvents()
    try:
        parser = MultipartParser(multipart_boundary(content_type), events.callbacks())
    except FormParserError:
        raise MalformedUploadError("The multipart boundary is not usable.") from None
    intake = _FileIntake(await storage.begin_upload(), max_bytes, quota_bytes)
    try:
        async for chunk in body:
            try:
                parser.write(chunk)
            except FormParserError:
                raise MalformedUploadError("The multipart body is malformed.") from None
            for event in events.drain():
                if isinstance(event, dict):
                    intake.part_begins(event)
                elif isinstance(event, bytes):
                    await intake.take(event)
                else:
                    intake.in_file = False
        if not events.finished:
            raise MalformedUploadError("The multipart body ended early.")
        return intake.finish()
    except BaseException:
        with CancelScope(shield=True):  # also when the client went away (a cancellation)
            await intake.upload.abort()
        raise


def _file_part_name(headers: dict[bytes, bytes]) -> str | None:
    """The client's filename when these part headers open the `file` field (a filename is optional)."""
    disposition, options = parse_options_header(headers.get(b"content-disposition", b"").decode("latin-1"))
    if disposition != b"form-data" or options.get(b"name") != FILE_FIELD.encode():
        return None
    return options.get(b"filename", b"").decode("utf-8", errors="replace")
