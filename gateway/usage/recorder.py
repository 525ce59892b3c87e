"""The usage recorder: requests hand it rows without waiting on the database; a background task writes them.

Each row goes into the journal (`gateway.usage.journal`) before its response ends, and into memory. Each flush
seals the journal's segment, writes its rows in batches (by COPY on Postgres, a multi-row INSERT on SQLite) with
their hourly aggregates, and deletes the segment once they are in. When the database is away, or lacks a table or
column (not migrated), the sealed segment stays on disk and its rows leave memory; they are replayed from there,
as are the segments of a process that died. When the journal cannot be written, rows wait in memory up to a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import MISSING, dataclass, fields
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import Database
from gateway.db.models import UsageEvent
from gateway.db.uncancelled import finish_uncancelled
from gateway.errors import database_is_away
from gateway.ids import random_hex
from gateway.usage.hours import add_to_hours, postgres_hours_from
from gateway.usage.journal import Row, UsageJournal, encode, read_rows

logger = logging.getLogger("gateway.usage")

BATCH_SIZE = 1_000
FLUSH_SECONDS = 0.5
COPY_SLICE = 50  # rows encoded for COPY between two turns of the event loop
REPLAY_EVERY_SECONDS = 2.0
# How often the journal's folder is searched for segments of dead processes (a start searches at once): a scan in
# the event loop every replay cost the hot path's instruction count more than its append (bench-instructions).
CLAIM_EVERY_SECONDS = 30.0
# A database call that takes longer is taken for a partition: the rows stay in the journal.
INSERT_TIMEOUT_SECONDS = 10.0
# How long a shutdown may spend writing (within the 3 s the app's lifespan gives its background tasks); what is
# left stays in the journal for the next start.
DRAIN_SECONDS = 2.5
JOURNAL_ERROR_EVERY_SECONDS = 60.0
# The database cannot be reached (as opposed to refusing what is sent): keep the rows for later. Besides these,
# what Postgres says of itself that it cannot serve now (a statement it cancelled: gateway.errors.database_is_away).
DATABASE_AWAY = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError, OSError)
# The database refuses a row's values (data exception, integrity violation): only such a row is dropped.
CONTENT_SQLSTATE_CLASSES = frozenset({"22", "23"})
# The database lacks a table or column (not migrated): keep the rows until it has them.
MISSING_SCHEMA_SQLSTATES = frozenset({"42P01", "42703"})  # Postgres: undefined_table, undefined_column
MISSING_SCHEMA_SQLITE = ("no such table", "no column named", "has no column")


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

    @property
    def cost_usd(self) -> float:
        """The request's whole estimated cost: its tokens' and its OCR pages' (what a budget is charged)."""
        return self.input_cost_usd + self.output_cost_usd + self.ocr_cost_usd


_RECORD_FIELDS = tuple(field.name for field in fields(UsageRecord))
# What a row journaled before a field existed takes for it.
_ROW_DEFAULTS = {field.name: field.default for field in fields(UsageRecord) if field.default is not MISSING}


class UsageRecorder:
    """Journals usage rows and writes them in batches; nothing is lost short of a machine crash (past the last
    fsync) or a journal that cannot be written (then past `max_queue` rows held in memory)."""

    def __init__(
        self,
        database: Database,
        journal_folder: Path,
        *,
        dataset: str,
        fsync_ms: int,
        max_queue: int,
        required: bool,
    ) -> None:
        self.database = database
        self.journal = UsageJournal(journal_folder)
        self.dataset = dataset
        self.fsync_seconds = fsync_ms / 1000
        self.max_queue = max_queue
        self.required = required
        self.rows_written = 0
        self.rows_dropped = 0
        self._pending: list[Row] = []  # journaled since the last flush
        self._held: deque[Row] = deque()  # not journaled: the journal could not be written
        self._backlog: list[Path] = []  # sealed segments whose rows are only on disk
        self._journal_ok = False
        self._journal_failing = False
        self._not_migrated = False
        self._last_journal_error = -JOURNAL_ERROR_EVERY_SECONDS
        self._last_unexpected_error = -JOURNAL_ERROR_EVERY_SECONDS
        self._last_replay = -REPLAY_EVERY_SECONDS
        self._last_claim = -CLAIM_EVERY_SECONDS
        self._wakeup = asyncio.Event()
        self._write_lock = asyncio.Lock()

    @property
    def queue_depth(self) -> int:
        """Rows in memory, waiting for the database."""
        return len(self._pending) + len(self._held)

    @property
    def journal_bytes(self) -> int:
        """Bytes of the journal on disk whose rows are not known to be in the database."""
        return self.journal.bytes_on_disk

    @property
    def refuses_requests(self) -> bool:
        """Whether a new request must be refused: its row could be kept neither on disk nor in memory."""
        return self.required and len(self._held) >= self.max_queue

    @property
    def problem(self) -> str | None:
        """Why usage is not safe now, for /ready: `usage_unavailable`, `database_not_migrated`, or None."""
        if self._journal_failing or len(self._held) >= self.max_queue:
            return "usage_unavailable"
        if self._not_migrated:
            return "database_not_migrated"
        return None

    def record(self, record: UsageRecord) -> None:
        """Journal a row (an append into the page cache) and queue it; never waits on the database."""
        # Every field is immutable (str, int, float, datetime, None): a shallow copy is what `asdict`'s deep one
        # gave, at a fraction of its cost on the hot path.
        row = {name: getattr(record, name) for name in _RECORD_FIELDS}
        row["id"] = random_hex()
        row["dataset"] = self.dataset
        row["is_error"] = record.status >= 400
        if self._journal_ok:
            try:
                self.journal.append(encode(row))
            except OSError as exc:
                self._journal_failed(exc)
            else:
                self._pending.append(row)
                if len(self._pending) >= BATCH_SIZE:
                    self._wakeup.set()
                return
        if len(self._held) >= self.max_queue:
            self.rows_dropped += 1
            return
        self._held.append(row)

    async def run(self) -> None:
        """Write rows every flush interval (sooner when a batch is full) and replay the journal's backlog until
        cancelled; then drain for at most `DRAIN_SECONDS` and close the journal (synced)."""
        syncing = asyncio.create_task(self._sync_periodically(), name="usage journal sync")
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), FLUSH_SECONDS)
                self._wakeup.clear()
                try:
                    # A cancel (the app stopping) does not cut the round's statements: it goes on, and the drain
                    # that follows waits for it (the write lock), within the drain's bound.
                    await finish_uncancelled(self._round(), grace=0)
                except Exception:
                    # The writer must outlive any one failure: once it is gone, every later row would stay put.
                    logger.exception("usage: the writer failed; it carries on")
        finally:
            syncing.cancel()
            await asyncio.shield(self.close())

    async def _round(self) -> None:
        if await self.flush():
            await self._replay_now_and_then()

    async def close(self) -> None:
        """Drain for at most `DRAIN_SECONDS`, then sync and close the journal: what was not written stays in it.

        The drain runs as a task of its own and is abandoned (cancelled, not awaited) at the bound: a cancelled
        insert may go on waiting for a silent network to close its connection, and the journal must not wait
        with it. Whatever the abandoned drain does later deletes no segment whose rows it did not write."""
        draining = asyncio.create_task(self.drain(), name="usage drain")
        try:
            await asyncio.wait({draining}, timeout=DRAIN_SECONDS)
        finally:
            if not draining.done():
                draining.cancel()
                logger.warning(
                    "usage: the drain did not end within %.1f s; the rest stays in the journal", DRAIN_SECONDS
                )
            elif not draining.cancelled() and draining.exception() is not None:
                logger.error(
                    "usage: the drain failed (%s); the rest stays in the journal", draining.exception()
                )
            self._open_journal()  # one last try, for rows held in memory
            if self._held:
                logger.error(
                    "usage: %d events lost: neither the journal nor the database took them", len(self._held)
                )
                self.rows_dropped += len(self._held)
                self._held.clear()
            self.journal.close()

    async def drain(self) -> None:
        """Write everything journaled or held, and the backlog."""
        await self.flush(until_empty=True)
        await self.replay()

    async def flush(self, *, until_empty: bool = False) -> bool:
        """Write the rows journaled since the last flush (or all, with `until_empty`); False when the database
        did not take them. Rows recorded while it writes wait for the next flush: under steady load a flush that
        chased the queue never ended, paying a statement's fixed cost a few rows at a time (BENCHMARKS.md)."""
        async with self._write_lock:
            while True:
                self._open_journal()
                rows, self._pending = self._pending, []
                segments = self.journal.seal()
                self._open_journal()  # the next segment, before anything else is recorded
                try:
                    written = await self._insert_all(rows)
                except BaseException:
                    self._backlog += segments
                    raise
                if written:
                    for path in segments:
                        self.journal.delete(path)
                    written = await self._write_held()
                else:
                    self._backlog += segments  # their rows are on disk only from now on
                if not (until_empty and written and self._pending):
                    return written

    async def replay(self, *, claim: bool = True) -> int:
        """Insert the rows of every segment only on disk (this process's, and with `claim` those of dead ones,
        claimed now); returns how many rows went in."""
        replayed = 0
        async with self._write_lock:
            self._open_journal()
            try:
                self._backlog += self.journal.claim_dead() if claim else []
            except OSError as exc:  # the journal's own failures are reported where it is written
                logger.debug("usage: could not look for dead journals: %s", exc)
            while self._backlog:
                path = self._backlog[0]
                rows = await asyncio.to_thread(_read_all, path)
                if not await self._insert_all(rows):
                    break  # still away; the segment stays for the next try
                self.journal.delete(path)
                self._backlog.pop(0)
                replayed += len(rows)
        if replayed:
            logger.info("usage: replayed %d journaled rows", replayed)
        return replayed

    async def _replay_now_and_then(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_claim >= CLAIM_EVERY_SECONDS:
            self._last_claim = self._last_replay = now
            await self.replay()
        elif self._backlog and now - self._last_replay >= REPLAY_EVERY_SECONDS:
            self._last_replay = now
            await self.replay(claim=False)

    async def _write_held(self) -> bool:
        """The rows the journal could not take, straight to the database."""
        held = list(self._held)
        if not await self._insert_all(held):
            return False
        for _ in held:  # rows held meanwhile stay held
            self._held.popleft()
        return True

    async def _sync_periodically(self) -> None:
        """fsync the journal every `fsync_seconds`, when something was appended since, in a thread."""
        while True:
            await asyncio.sleep(self.fsync_seconds)
            sealed, current = self.journal.take_sync_work()
            if sealed or current is not None:
                await asyncio.to_thread(UsageJournal.sync, sealed, current)

    def _open_journal(self) -> None:
        """Start a segment when none is open (after a seal, or while the journal could not be written, which is
        retried so); rows held in memory meanwhile go into it."""
        if self.journal.is_open:
            return
        try:
            self.journal.open()
            if self._held:
                self.journal.append(b"".join(encode(row) for row in self._held))
        except OSError as exc:
            self._journal_failed(exc)
            return
        self._pending += self._held
        self._held.clear()
        if self._journal_failing:
            logger.warning("usage: the journal in %s can be written again", self.journal.folder)
        self._journal_ok = True
        self._journal_failing = False

    def _report_unexpected(self, exc: Exception) -> None:
        """One line a minute at most: the same failure repeats at every flush and replay."""
        now = time.monotonic()
        if now - self._last_unexpected_error >= JOURNAL_ERROR_EVERY_SECONDS:
            self._last_unexpected_error = now
            logger.error(
                "usage: writing to the database failed (%s: %s); the events stay in the journal",
                type(exc).__name__,
                _first_line(exc),
            )

    def _journal_failed(self, exc: OSError) -> None:
        self._journal_ok = False
        self._journal_failing = True
        now = time.monotonic()
        if now - self._last_journal_error >= JOURNAL_ERROR_EVERY_SECONDS:
            self._last_journal_error = now
            logger.error(
                "usage: the journal in %s cannot be written (%s); events are held in memory (%d, at most %d)",
                self.journal.folder,
                exc,
                len(self._held),
                self.max_queue,
            )

    async def _insert_all(self, rows: list[Row]) -> bool:
        for start in range(0, len(rows), BATCH_SIZE):
            if not await self._insert(rows[start : start + BATCH_SIZE]):
                return False
        return True

    async def _insert(self, rows: list[Row]) -> bool:
        """One multi-row INSERT, skipping rows already there (replays); False when the database is away or lacks
        the schema.

        A batch the database refuses for its content is retried row by row, and only the rows it still refuses
        are dropped (and logged): one bad row must neither block the others nor come back from the journal forever.
        """
        try:
            async with asyncio.timeout(INSERT_TIMEOUT_SECONDS):
                async with self.database.session() as session, session.begin():
                    await write_events(session, rows)
        except Exception as exc:
            if _is_missing_schema(exc):
                if not self._not_migrated:
                    logger.error(
                        "usage: the database lacks a usage table or column (%s); events stay in the journal"
                        " until `gateway migrate` has run",
                        _first_line(exc),
                    )
                self._not_migrated = True
                return False
            if isinstance(exc, DATABASE_AWAY) or database_is_away(exc):
                logger.debug("usage insert failed: %s", type(exc).__name__)
                return False
            if not _refuses_content(exc):
                # Not the database saying no to these rows (a closing loop, a driver's state, a bug): they stay
                # in the journal rather than be dropped for it.
                self._report_unexpected(exc)
                return False
            if len(rows) > 1:
                for row in rows:
                    if not await self._insert([row]):
                        return False
                return True
            logger.error(
                "usage: dropped row %s, which the database refuses (%s)", rows[0]["id"], type(exc).__name__
            )
            self.rows_dropped += 1
            return True
        if self._not_migrated:
            logger.info("usage: the database has the usage schema now")
        self._not_migrated = False
        self.rows_written += len(rows)
        return True


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc`, then what it wraps (SQLAlchemy's `orig`, the driver's `__cause__`), a few levels down."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 4:
        chain.append(seen)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return chain


def _refuses_content(exc: BaseException) -> bool:
    """Whether the rows themselves were refused: a value the driver cannot encode (an integer past 64 bits) or
    the database's data or integrity error (SQLSTATE classes 22 and 23). Only such a row may be dropped."""
    for cause in _causes(exc):
        if isinstance(cause, (ValueError, OverflowError, TypeError, DataError, IntegrityError)):
            return True
        if str(getattr(cause, "sqlstate", "") or "")[:2] in CONTENT_SQLSTATE_CLASSES:
            return True
    return False


def _is_missing_schema(exc: BaseException) -> bool:
    """Whether the database refused for a missing table or column (Postgres by SQLSTATE, through SQLAlchemy's
    wrapper and the driver's; SQLite by message)."""
    if any(getattr(cause, "sqlstate", None) in MISSING_SCHEMA_SQLSTATES for cause in _causes(exc)):
        return True
    message = str(exc)
    return any(words in message for words in MISSING_SCHEMA_SQLITE)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _read_all(path: Path) -> list[Row]:
    """A segment's rows, each with every field: a row journaled by an older version lacks the newer ones, which
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
    await driver.copy_records_to_table(
        _STAGING, records=_in_slices(rows), columns=_EVENT_COLUMNS, timeout=INSERT_TIMEOUT_SECONDS
    )
    await driver.execute(_FROM_STAGING, timeout=INSERT_TIMEOUT_SECONDS)


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
