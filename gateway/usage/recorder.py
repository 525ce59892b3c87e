"""The usage recorder: requests hand it rows without waiting; a background task writes them in batches.

The hot path only appends to an in-process queue. Each flush writes what was queued when it began, in batches (by
COPY on Postgres, a multi-row INSERT on SQLite), with their hourly aggregates; when the database cannot take
them, the rows go to the spill file and are replayed once the database answers again. The queue is bounded: past
its bound rows go straight to the spill. Shutdown drains the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import Database
from gateway.db.models import UsageEvent
from gateway.ids import random_hex
from gateway.usage.hours import add_to_hours, postgres_hours_from
from gateway.usage.spill import Row, SpillFile, read_rows

logger = logging.getLogger("gateway.usage")

MAX_QUEUE = 100_000
BATCH_SIZE = 1_000
FLUSH_SECONDS = 0.5
COPY_SLICE = 50  # rows encoded for COPY between two turns of the event loop
REPLAY_EVERY_SECONDS = 2.0
# The database cannot be reached (as opposed to refusing what is sent): keep the rows for later.
DATABASE_AWAY = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError, OSError)


@dataclass(slots=True)
class UsageRecord:
    """What one request used, as the usage middleware saw it."""

    created_at: datetime
    request_id: str
    request_type: str
    method: str
    path: str
    status: int
    latency_ms: float
    is_stream: bool = False
    ttfb_ms: float | None = None
    user_id: str | None = None
    token_id: str | None = None
    agent_id: str | None = None
    provider: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    ocr_pages: int = 0
    input_cost_usd: float = 0.0
    output_cost_usd: float = 0.0
    ocr_cost_usd: float = 0.0
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    error: str | None = (
        None  # the gateway's error code when it failed the request (`upstream_incomplete`, ...)
    )


_RECORD_FIELDS = tuple(field.name for field in fields(UsageRecord))
# What a row spilled before a field existed takes for it.
_ROW_DEFAULTS = {field.name: field.default for field in fields(UsageRecord) if field.default is not MISSING}


class UsageRecorder:
    """Queues usage rows and writes them in batches; nothing is lost short of a crash."""

    def __init__(self, database: Database, spill: SpillFile, *, dataset: str) -> None:
        self.database = database
        self.spill = spill
        self.dataset = dataset
        self._queue: deque[Row] = deque()
        self._wakeup = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._last_replay = 0.0

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def record(self, record: UsageRecord) -> None:
        """Queue a row (never waits on the database)."""
        # Every field is immutable (str, int, float, datetime, None): a shallow copy is what `asdict`'s deep one
        # gave, at a fraction of its cost on the hot path.
        row = {name: getattr(record, name) for name in _RECORD_FIELDS}
        row["id"] = random_hex()
        row["dataset"] = self.dataset
        row["is_error"] = record.status >= 400
        if len(self._queue) >= MAX_QUEUE:
            self.spill.append([row])  # rare: the writer is far behind; the disk is the queue now
            return
        self._queue.append(row)
        if len(self._queue) >= BATCH_SIZE:
            self._wakeup.set()

    async def run(self) -> None:
        """Write queued rows every flush interval (sooner when a batch is full) until cancelled, then drain."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), FLUSH_SECONDS)
                self._wakeup.clear()
                try:
                    await self.flush()
                    await self._replay_spill_now_and_then()
                except Exception:
                    # The writer must outlive any one failure: once it is gone, every later row would be lost.
                    logger.exception("usage: the writer failed; it carries on")
        finally:
            await asyncio.shield(self.drain())

    async def drain(self) -> None:
        """Write (or spill) everything still queued."""
        await self.flush(until_empty=True)

    async def flush(self, *, until_empty: bool = False) -> None:
        """Write the rows queued when the flush began; rows queued while it writes wait for the next one (or all,
        with `until_empty`). Under steady load a flush that chased the queue never ended, writing batch after
        small batch back to back: a statement's fixed cost paid a few rows at a time (BENCHMARKS.md)."""
        async with self._write_lock:
            budget = len(self._queue)
            while self._queue and (budget > 0 or until_empty):
                batch = list(islice(self._queue, BATCH_SIZE))
                if await self._insert(batch):
                    for _ in batch:
                        self._queue.popleft()
                    budget -= len(batch)
                    continue
                # The database is away: everything queued goes to disk, to be replayed later.
                rows = list(self._queue)
                await asyncio.to_thread(self.spill.append, rows)
                for _ in rows:  # only once they are on disk; rows queued meanwhile stay queued
                    self._queue.popleft()
                logger.warning(
                    "usage: database unavailable, %d rows spilled to %s", len(rows), self.spill.folder
                )
                return

    async def _replay_spill_now_and_then(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_replay < REPLAY_EVERY_SECONDS:
            return
        self._last_replay = loop.time()
        if await asyncio.to_thread(self.spill.has_rows):
            await self.replay_spill()

    async def replay_spill(self) -> int:
        """Insert the rows of every claimable spill file; returns how many rows went in."""
        replayed = 0
        async with self._write_lock:
            for path in await asyncio.to_thread(self.spill.claim_replayable):
                rows = await asyncio.to_thread(_read_all, path)
                for start in range(0, len(rows), BATCH_SIZE):
                    if not await self._insert(rows[start : start + BATCH_SIZE]):
                        return replayed  # still away; the claimed file stays for the next try
                    replayed += min(BATCH_SIZE, len(rows) - start)
                await asyncio.to_thread(path.unlink, missing_ok=True)
        if replayed:
            logger.info("usage: replayed %d spilled rows", replayed)
        return replayed

    async def _insert(self, rows: list[Row]) -> bool:
        """One multi-row INSERT, skipping rows already there (replays); False when the database is away.

        A batch the database refuses for its content is retried row by row, and only the rows it still refuses
        are dropped (and logged): one bad row must neither block the others nor come back from the spill forever.
        """
        try:
            async with self.database.session() as session, session.begin():
                await write_events(session, rows)
        except DATABASE_AWAY as exc:
            logger.debug("usage insert failed: %s", type(exc).__name__)
            return False
        except Exception as exc:
            if len(rows) > 1:
                for row in rows:
                    if not await self._insert([row]):
                        return False
                return True
            logger.error(
                "usage: dropped row %s, which the database refuses (%s)", rows[0]["id"], type(exc).__name__
            )
        return True


def _read_all(path: Path) -> list[Row]:
    """A spill file's rows, each with every field: a file spilled by an older version lacks the newer ones, which
    a multi-row INSERT or a COPY would fail on."""
    return [{**_ROW_DEFAULTS, **row} for row in read_rows(path)]


async def write_events(session: AsyncSession, rows: list[Row]) -> None:
    """Insert event rows, skipping those already there (a replay), and add the new ones to their hours."""
    if session.get_bind().dialect.name == "postgresql":
        await _copy_events(session, rows)
        return
    statement = sqlite_insert(UsageEvent).on_conflict_do_nothing(index_elements=["id"])
    inserted = set((await session.execute(statement.returning(UsageEvent.id), rows)).scalars())
    await add_to_hours(session, (row for row in rows if row["id"] in inserted))


async def _copy_events(session: AsyncSession, rows: list[Row]) -> None:
    """Postgres: the rows go in by binary COPY into a transaction-scoped staging table, then one statement inserts
    those not already there and adds them to their hours. The ORM's multi-row INSERT cost about 45 µs of CPU per
    row in the gateway's event loop, and the hours' upserts through it some 8 ms a flush (BENCHMARKS.md); this
    costs the loop a few µs a row."""
    # Through SQLAlchemy, so that its transaction is open on the connection before the driver is used directly.
    await session.execute(text(_STAGING_TABLE))
    connection = await session.connection()
    driver: Any = (await connection.get_raw_connection()).driver_connection
    await driver.copy_records_to_table(_STAGING, records=_in_slices(rows), columns=_EVENT_COLUMNS)
    await driver.execute(_FROM_STAGING)


async def _in_slices(rows: list[Row]) -> AsyncIterator[tuple[Any, ...]]:
    """The rows for COPY, letting the event loop serve requests between slices: encoding a thousand rows in one
    go held it for some 8 ms, which a request arriving then waited out (the one-client p99, BENCHMARKS.md)."""
    for start in range(0, len(rows), COPY_SLICE):
        if start:
            await asyncio.sleep(0)
        for row in rows[start : start + COPY_SLICE]:
            yield _event_values(row)


_EVENT_COLUMNS = tuple(column.name for column in UsageEvent.__table__.columns)
_values_of = itemgetter(*_EVENT_COLUMNS)


def _event_values(row: Row) -> tuple[Any, ...]:
    """A row's values in the table's column order; a row made without a newer field (by a caller of
    `write_events` other than the recorder) takes that field's default."""
    try:
        return _values_of(row)  # type: ignore[no-any-return]
    except KeyError:
        return _values_of({**_ROW_DEFAULTS, **row})  # type: ignore[no-any-return]


_STAGING = "usage_events_incoming"
_STAGING_TABLE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} (LIKE usage_events INCLUDING DEFAULTS)"
    " ON COMMIT DELETE ROWS"
)
_FROM_STAGING = (
    f"WITH inserted AS (INSERT INTO usage_events ({', '.join(_EVENT_COLUMNS)})"
    f" SELECT {', '.join(_EVENT_COLUMNS)} FROM {_STAGING} ON CONFLICT (id) DO NOTHING RETURNING *),"
    f" {postgres_hours_from('inserted')}"
)
