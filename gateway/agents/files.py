"""Agents' files: a multipart upload streamed into storage while it is hashed, then recorded; and the queries.

The body is parsed as it arrives (python-multipart's push parser), never held whole: each chunk of the `file`
part goes to the storage upload and the SHA-256 at once, under the per-file limit and what the storage quota
leaves. The record is written in a transaction that locks the agent and counts again, so concurrent uploads
cannot overshoot the quota; only then are the bytes made readable.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from anyio import CancelScope
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.agents.quotas import lock_agent, storage_used
from gateway.agents.storage import Storage, Upload
from gateway.agents.tiers import Tier
from gateway.db.asset_models import AgentFile
from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.ids import new_id

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
FILE_ID_PREFIX = "file"
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


def attachment_disposition(filename: str) -> str:
    """`Content-Disposition` for a download: an ASCII fallback and the exact name as RFC 8187 UTF-8."""
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\;%' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


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


@dataclass(slots=True)
class _PartEvents:
    """What the push parser reported during one `write`, in order: ("headers", {name: value}), ("data",
    bytes), ("end", None). The callbacks are synchronous, so they queue; the async loop drains."""

    queue: list[tuple[str, object]] = field(default_factory=list)
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
            self.queue.append(("headers", self.headers))
            self.headers = {}

        def on_part_data(data: bytes, start: int, end: int) -> None:
            self.queue.append(("data", data[start:end]))

        def on_part_end() -> None:
            self.queue.append(("end", None))

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

    def drain(self) -> list[tuple[str, object]]:
        events, self.queue = self.queue, []
        return events


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
    upload = await storage.begin_upload()
    try:
        received: Received | None = None
        digest = hashlib.sha256()
        in_file = False
        size = other_bytes = 0
        async for chunk in body:
            try:
                parser.write(chunk)
            except FormParserError:
                raise MalformedUploadError("The multipart body is malformed.") from None
            for kind, value in events.drain():
                if kind == "headers":
                    assert isinstance(value, dict)
                    filename = _file_part_name(value)
                    in_file = filename is not None
                    if in_file and received is not None:
                        raise MalformedUploadError("Send one 'file' part per upload.")
                    if filename is not None:
                        content = value.get(b"content-type", b"").decode("latin-1")
                        received = Received(
                            safe_filename(filename), safe_content_type(content), 0, "", upload
                        )
                elif kind == "data" and in_file:
                    assert isinstance(value, bytes)
                    size += len(value)
                    if size > max_bytes:
                        raise FileTooLargeError(f"The file is over the {max_bytes}-byte limit per file.")
                    if quota_bytes is not None and size > quota_bytes:
                        raise StorageQuotaError("The file would exceed the agent's storage quota.")
                    digest.update(value)
                    await upload.write(value)
                elif kind == "data":
                    assert isinstance(value, bytes)
                    other_bytes += len(value)
                    if other_bytes > MAX_OTHER_FIELDS_BYTES:
                        raise MalformedUploadError("Form fields beside the file are too large.")
                elif kind == "end":
                    in_file = False
        if not events.finished:
            raise MalformedUploadError("The multipart body ended early.")
        if received is None:
            raise MalformedUploadError("The upload has no 'file' part.")
        received.size, received.sha256 = size, digest.hexdigest()
        return received
    except BaseException:
        with CancelScope(shield=True):  # also when the client went away (a cancellation)
            await upload.abort()
        raise


def _file_part_name(headers: dict[bytes, bytes]) -> str | None:
    """The client's filename when these part headers open the `file` field (a filename is optional)."""
    disposition, options = parse_options_header(headers.get(b"content-disposition", b"").decode("latin-1"))
    if disposition != b"form-data" or options.get(b"name") != FILE_FIELD.encode():
        return None
    return options.get(b"filename", b"").decode("utf-8", errors="replace")


async def store_upload(
    database: Database, storage: Storage, received: Received, *, agent_id: str, tier: Tier
) -> AgentFile:
    """Record `received` and make its bytes readable, unless that takes the agent past its tier's storage bytes
    or files (`StorageQuotaError`, the upload aborted). Counted after locking the agent, so it holds."""
    file_id = new_id(FILE_ID_PREFIX)
    key = f"{agent_id}/{file_id}"
    placed = False
    try:
        async with database.session() as session, session.begin():
            await lock_agent(session, agent_id)
            record = AgentFile(
                id=file_id,
                agent_id=agent_id,
                filename=received.filename,
                content_type=received.content_type,
                size=received.size,
                sha256=received.sha256,
                storage_key=key,
                created_at=utcnow(),
            )
            session.add(record)
            await session.flush()  # written before counting: on SQLite that takes the one writer's lock
            stored_bytes, files = await storage_used(session, agent_id)
            if tier.storage_bytes is not None and stored_bytes > tier.storage_bytes:
                raise StorageQuotaError("The file would exceed the agent's storage quota.")
            if tier.files is not None and files > tier.files:
                raise StorageQuotaError(f"The agent already stores its {tier.files} files.")
            await received.upload.commit(key)
            placed = True
        return record
    except BaseException:
        with CancelScope(shield=True):
            if placed:
                await storage.delete(key)
            else:
                await received.upload.abort()
        raise


async def list_files(session: AsyncSession, agent_id: str) -> list[AgentFile]:
    """The agent's files, newest first."""
    query = (
        select(AgentFile)
        .where(AgentFile.agent_id == agent_id)
        .order_by(AgentFile.created_at.desc(), AgentFile.id.desc())
    )
    return list((await session.scalars(query)).all())


async def find_file(session: AsyncSession, *, agent_id: str, file_id: str) -> AgentFile | None:
    return await session.scalar(
        select(AgentFile).where(AgentFile.id == file_id, AgentFile.agent_id == agent_id)
    )


async def delete_file(database: Database, storage: Storage, *, agent_id: str, file_id: str) -> bool:
    """Deletes the record, then the bytes; False when the agent has no such file."""
    async with database.session() as session, session.begin():
        record = await find_file(session, agent_id=agent_id, file_id=file_id)
        if record is None:
            return False
        key = record.storage_key
        await session.delete(record)
    await storage.delete(key)
    return True


async def remove_agent_files(storage: Storage, agent_id: str) -> None:
    """Deletes every stored byte of an agent (its records go with the agent's row)."""
    await storage.delete_prefix(agent_id)
