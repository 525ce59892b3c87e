"""The usage journal: each event appended to a local file before its response ends, so that a killed process loses
nothing; the recorder moves the journal into the database and trims it.

One writer per process, known by a random instance id (a pid is reused, in a container every start), which holds an
exclusive `flock` on `<instance>.lock` for as long as it lives: the kernel lets go of it however the process ends,
SIGKILL included. The writer appends to its open segment, `<instance>-<seq>.jsonl`, and seals it at each flush
(a new segment takes the next appends). A segment whose instance's lock can be taken (or whose lock file is gone)
is dead: whoever takes the lock renames it into its own instance and replays it. A lock file appears only once
locked (made under another name, then renamed), so that no one can take a starting instance for a dead one.
Appends go into the page cache (a process crash loses nothing); `sync` makes them durable, off the event loop.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger("gateway.usage")

Row = dict[str, Any]
SEGMENT = ".jsonl"
LOCK = ".lock"
# Where the spill of earlier versions left rows the database had not taken: replayed once, like a dead segment.
LEGACY_SPILL_FOLDER = "usage-spill"


class UsageJournal:
    """Append-only JSON lines of usage rows under `folder`, in segments owned by this process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.legacy_folder = folder.parent / LEGACY_SPILL_FOLDER
        self.instance = uuid.uuid4().hex
        self.bytes_on_disk = 0  # every segment of ours not yet deleted, the open one included
        self._sizes: dict[Path, int] = {}
        self._seq = 0
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._path: Path | None = None
        self._unsealed: list[Path] = []  # segments appended to since the last `seal`
        self._sealed_fds: list[int] = []  # to sync, then close, off the event loop
        self._dirty = False

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        """Take this instance's lock and start a segment. Raises OSError when the folder cannot be written."""
        if self._lock_fd is None:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            making = self.folder / f"{self.instance}{LOCK}.new"
            fd = os.open(making, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(making, self._lock_path(self.instance))
            except OSError:
                os.close(fd)
                making.unlink(missing_ok=True)
                raise
            self._lock_fd = fd
        if self._fd is None:
            self._start_segment()

    def append(self, line: bytes) -> None:
        """One event's line, into the page cache (no fsync). Raises OSError; the segment is then given up, so that
        a line written in part (a full disk) ends it and is skipped on reading, never glued to the next."""
        fd, path = self._fd, self._path
        if fd is None or path is None:
            raise OSError("the usage journal is not open")
        if not self._unsealed or self._unsealed[-1] != path:
            self._unsealed.append(path)
        try:
            written = os.write(fd, line)
        except OSError:
            self._give_up_segment()
            raise
        if written != len(line):
            self._give_up_segment()
            raise OSError(f"short write to the usage journal ({written} of {len(line)} bytes)")
        self._dirty = True
        self.bytes_on_disk += written
        self._sizes[path] = self._sizes.get(path, 0) + written

    def seal(self) -> list[Path]:
        """End the segments appended to since the last seal and return them; `open` starts the next, at once
        (nothing may be appended in between)."""
        sealed, self._unsealed = self._unsealed, []
        if sealed and sealed[-1] == self._path:
            self._give_up_segment()
        return sealed

    def take_sync_work(self) -> tuple[list[int], int | None]:
        """On the event loop: what `sync` must do now (sealed fds, a duplicate of the open one), or nothing."""
        if not self._dirty and not self._sealed_fds:
            return [], None
        self._dirty = False
        sealed, self._sealed_fds = self._sealed_fds, []
        return sealed, os.dup(self._fd) if self._fd is not None else None

    @staticmethod
    def sync(sealed: list[int], current: int | None) -> None:
        """In a thread: fsync what `take_sync_work` handed over, and close it."""
        for fd in [*sealed, *([current] if current is not None else [])]:
            try:
                os.fsync(fd)
            except OSError as exc:
                logger.error("usage: the journal could not be synced to disk (%s)", exc)
            finally:
                os.close(fd)

    def delete(self, path: Path) -> None:
        """A segment whose every row is in the database."""
        path.unlink(missing_ok=True)
        self.bytes_on_disk -= self._sizes.pop(path, 0)

    def claim_dead(self) -> list[Path]:
        """Segments of dead instances (and the old spill's files), renamed into this instance's: to replay."""
        if self._lock_fd is None:
            return []
        claimed = []
        instances: set[str] = set()
        for path in self.folder.iterdir():
            if path.name.endswith(SEGMENT):
                instances.add(path.name.split("-", 1)[0])
            elif path.name.endswith(LOCK):
                instances.add(path.name.removesuffix(LOCK))
        instances.discard(self.instance)
        for instance in sorted(instances):
            claimed += self._claim_instance(instance)
        if self.legacy_folder.is_dir():
            claimed += self._adopt(sorted(self.legacy_folder.glob(f"*{SEGMENT}")))
        return claimed

    def close(self) -> None:
        """Sync and close every segment, and let go of the lock: what is left is replayed by the next start."""
        if self._path is not None and self._fd is not None and self._path not in self._unsealed:
            self._path.unlink(missing_ok=True)  # the open segment, still empty
        self._give_up_segment()
        self.sync(*self.take_sync_work())
        if self._lock_fd is not None:
            self._lock_path(self.instance).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _claim_instance(self, instance: str) -> list[Path]:
        try:
            fd = os.open(self._lock_path(instance), os.O_RDWR)
        except FileNotFoundError:
            fd = None  # closed cleanly, or its claimer died half-way: its segments are no one's
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return []  # alive
            claimed = self._adopt(sorted(self.folder.glob(f"{instance}-*{SEGMENT}")))
            if fd is not None:
                self._lock_path(instance).unlink(missing_ok=True)
            return claimed
        finally:
            if fd is not None:
                os.close(fd)

    def _adopt(self, paths: list[Path]) -> list[Path]:
        adopted = []
        for path in paths:
            target = self._next_path()
            try:
                os.rename(path, target)
            except FileNotFoundError:
                continue  # another instance took it first
            size = target.stat().st_size
            self._sizes[target] = size
            self.bytes_on_disk += size
            adopted.append(target)
        return adopted

    def _start_segment(self) -> None:
        path = self._next_path()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._path = path

    def _give_up_segment(self) -> None:
        """Stop appending to the open segment; it is synced and closed by the next `sync`."""
        if self._fd is not None:
            self._sealed_fds.append(self._fd)
        self._fd = None

    def _next_path(self) -> Path:
        self._seq += 1
        return self.folder / f"{self.instance}-{self._seq:010d}{SEGMENT}"

    def _lock_path(self, instance: str) -> Path:
        return self.folder / f"{instance}{LOCK}"


def encode(row: Row) -> bytes:
    """A row's journal line. orjson, but for an integer past 64 bits (a broken upstream's usage), which the
    database refuses later as it should, rather than the journal now."""
    try:
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (json.dumps(row, default=datetime.isoformat) + "\n").encode()


def read_rows(path: Path) -> Iterator[Row]:
    """The rows of a segment; a torn line (the last one, after a crash mid-write) is skipped."""
    with path.open("rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                continue
            try:
                row: Row = orjson.loads(line)
                row["created_at"] = datetime.fromisoformat(row["created_at"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                logger.warning("usage: skipped an unreadable line in %s", path.name)
                continue
            yield row
