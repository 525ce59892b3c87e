"""Where agents' file bytes live: a small interface, and the local directory that implements it by default.

An upload is written as it arrives into a private incoming area, then committed under its key (or aborted), so
that a half-received file is never readable. An S3-compatible backend implements the same three steps with a
multipart upload (`CreateMultipartUpload`, `UploadPart`, `CompleteMultipartUpload` / `AbortMultipartUpload`).
Keys are `{agent_id}/{file_id}`; nothing of a client's filename ever reaches a path.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, Protocol

from anyio import to_thread

WRITE_BUFFER_BYTES = 1024 * 1024  # bytes gathered before one write in a worker thread
READ_CHUNK_BYTES = 256 * 1024
INCOMING_FOLDER = ".incoming"
# Agents' files are users' documents: the owner's alone, whatever the umask.
PRIVATE_FOLDER_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
STORAGE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}(?:/[A-Za-z0-9_-]{1,64})*")


class StorageKeyError(ValueError):
    """A storage key that is not a plain `segment/segment` path (never built from client input)."""


class ObjectMissingError(LookupError):
    """No object is stored under the key."""


class Upload(Protocol):
    """One object being written: `write` as bytes arrive, then exactly one of `commit` or `abort`."""

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self, key: str) -> None: ...

    async def abort(self) -> None: ...


class Storage(Protocol):
    """Stores, streams and deletes objects by key."""

    async def begin_upload(self) -> Upload: ...

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes, opened now (`ObjectMissingError` if absent) and streamed as iterated."""
        ...

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> None: ...


def checked_key(key: str) -> str:
    if not STORAGE_KEY.fullmatch(key):
        raise StorageKeyError(f"not a storage key: {key!r}")
    return key


class LocalStorage:
    """Objects as files under `root`; uploads in `root/.incoming` until committed by an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.incoming = self.root / INCOMING_FOLDER

    def path_of(self, key: str) -> Path:
        return self.root / checked_key(key)

    async def begin_upload(self) -> LocalUpload:
        def open_incoming() -> tuple[Path, BinaryIO]:
            _make_private_folder(self.root)
            _make_private_folder(self.incoming)
            path = self.incoming / secrets.token_hex(16)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
            os.fchmod(descriptor, PRIVATE_FILE_MODE)
            return path, os.fdopen(descriptor, "wb")

        path, file = await to_thread.run_sync(open_incoming)
        return LocalUpload(self, path, file)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        try:
            file = await to_thread.run_sync(self.path_of(key).open, "rb")
        except FileNotFoundError:
            raise ObjectMissingError(key) from None
        return _chunks(file)

    async def delete(self, key: str) -> None:
        await to_thread.run_sync(lambda: self.path_of(key).unlink(missing_ok=True))

    async def delete_prefix(self, prefix: str) -> None:
        await to_thread.run_sync(lambda: shutil.rmtree(self.path_of(prefix), ignore_errors=True))


def _make_private_folder(folder: Path) -> None:
    """`folder` created 0700 whatever the umask (its parents too: the storage's root may not exist yet); left as
    it is when it exists (FILES_DIR may be a folder the operator made)."""
    if folder.is_dir():
        return
    _make_private_folder(folder.parent)
    try:
        folder.mkdir(mode=PRIVATE_FOLDER_MODE)
    except FileExistsError:
        return  # a concurrent upload made it
    os.chmod(folder, PRIVATE_FOLDER_MODE)


async def _chunks(file: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await to_thread.run_sync(file.read, READ_CHUNK_BYTES):
            yield chunk
    finally:
        file.close()  # not in a thread: this also runs when the download is cancelled


class LocalUpload:
    """A file being received into the incoming area; buffered so each thread hop writes a megabyte."""

    def __init__(self, storage: LocalStorage, path: Path, file: BinaryIO) -> None:
        self.storage = storage
        self.path = path
        self.file = file
        self.buffer = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) >= WRITE_BUFFER_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        data, self.buffer = bytes(self.buffer), bytearray()
        await to_thread.run_sync(self.file.write, data)

    async def commit(self, key: str) -> None:
        """Make the upload readable as `key` (replacing nothing: keys are fresh ids)."""
        target = self.storage.path_of(key)
        await self._flush()

        def place() -> None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            _make_private_folder(target.parent)
            os.replace(self.path, target)

        await to_thread.run_sync(place)

    async def abort(self) -> None:
        # Not in a thread: this runs when the upload is cancelled, where an await would be cancelled too.
        self.buffer = bytearray()
        self.file.close()
        self.path.unlink(missing_ok=True)
