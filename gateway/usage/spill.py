"""The spill: usage rows the database could not take, appended to a file in the data directory until it can.

Each process appends to its own file (`<pid>.jsonl`), so workers never interleave writes. A file is replayed by
renaming it aside first, to a name of its own (new spills start a fresh file, and a later claim never replaces an
earlier one still waiting), and deleted only once every row is in the database;
rows carry their own ids, so a replay cut short and repeated inserts nothing twice. Files left by a process that
died are replayed by whichever process finds them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

Row = dict[str, Any]
SUFFIX = ".jsonl"
REPLAYING = ".replaying"


class SpillFile:
    """Append-only JSON lines of usage rows, one file per process, under `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pid = os.getpid()

    @property
    def path(self) -> Path:
        return self.folder / f"{self.pid}{SUFFIX}"

    def append(self, rows: list[Row]) -> None:
        """Write `rows` durably (flushed and fsynced) before returning. Blocking: run it in a thread."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(row, default=_encode) + "\n" for row in rows)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())

    def claim_replayable(self) -> list[Path]:
        """Files to replay now: this process's own and those of dead processes, each renamed aside (claimed)."""
        if not self.folder.is_dir():
            return []
        claimed = []
        for path in sorted(self.folder.iterdir()):
            owner = _owner(path)
            if owner is None or (owner != self.pid and _is_alive(owner)):
                continue
            if owner == self.pid and path.name.endswith(REPLAYING + SUFFIX):
                claimed.append(path)  # our own replay that was cut short: finish it
                continue
            # A name of its own for every claim: renaming onto an earlier claim would silently replace its rows.
            target = path.with_name(f"{self.pid}-{uuid.uuid4().hex}{REPLAYING}{SUFFIX}")
            try:
                path.rename(target)
            except FileNotFoundError:
                continue  # another process claimed it first
            claimed.append(target)
        return claimed

    def has_rows(self) -> bool:
        return self.folder.is_dir() and any(self.folder.iterdir())


def read_rows(path: Path) -> Iterator[Row]:
    """The rows of a spill file; a torn last line (a crash mid-write) is skipped."""
    with path.open(encoding="utf-8") as file:
        for line in file:
            try:
                row: Row = json.loads(line)
            except json.JSONDecodeError:
                continue
            row["created_at"] = datetime.fromisoformat(row["created_at"])
            yield row


def _encode(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot spill a {type(value).__name__}")


def _owner(path: Path) -> int | None:
    """The pid that owns a spill file (the first number of its name)."""
    head = path.name.split("-", 1)[0].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
