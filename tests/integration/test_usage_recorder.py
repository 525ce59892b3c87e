"""The recorder on its own, against a real database: a row the database refuses costs only that row; a database
that lacks the schema or cannot be reached keeps the rows in the journal until it can take them."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from gateway.db.engine import Database
from gateway.db.migrate import downgrade, upgrade
from gateway.db.models import UsageEvent
from gateway.settings import DEFAULT_USAGE_JOURNAL_FSYNC_MS, DEFAULT_USAGE_MAX_QUEUE, sqlite_url
from gateway.usage.journal import LEGACY_SPILL_FOLDER, encode
from gateway.usage.recorder import UsageRecord, UsageRecorder
from tests.conftest import PostgresServer
from tests.serving import free_port

REVISION_BEFORE_ERRORS = "0008_agent_assets"  # usage_events without its `error` column


def usage_record(**overrides: object) -> UsageRecord:
    fields: dict[str, object] = {
        "created_at": datetime.now(UTC),
        "request_id": uuid.uuid4().hex,
        "request_type": "chat",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "latency_ms": 1.0,
        **overrides,
    }
    return UsageRecord(**fields)  # type: ignore[arg-type]


def make_recorder(database: Database, folder: Path, dataset: str, **options: object) -> UsageRecorder:
    settings: dict[str, object] = {
        "fsync_ms": DEFAULT_USAGE_JOURNAL_FSYNC_MS,
        "max_queue": DEFAULT_USAGE_MAX_QUEUE,
        "required": True,
        **options,
    }
    return UsageRecorder(database, folder / "usage-journal", dataset=dataset, **settings)  # type: ignore[arg-type]


async def stored(database: Database, dataset: str) -> int:
    async with database.session() as session:
        count = await session.scalar(
            select(func.count()).select_from(UsageEvent).where(UsageEvent.dataset == dataset)
        )
    return int(count or 0)


async def test_a_refused_row_is_dropped_alone_and_the_recorder_carries_on(
    database_url: str, tmp_path: Path
) -> None:
    await upgrade(database_url)
    database = Database(database_url)
    database.open()
    dataset = f"t_{uuid.uuid4().hex}"
    recorder = make_recorder(database, tmp_path, dataset)
    try:
        recorder.record(usage_record())
        recorder.record(usage_record(input_tokens=2**70))  # no INTEGER column can hold it
        recorder.record(usage_record())
        await recorder.flush()
        recorder.record(usage_record())
        await recorder.flush()

        assert await stored(database, dataset) == 3
        assert recorder.queue_depth == 0
        assert (recorder.rows_written, recorder.rows_dropped) == (3, 1)
        assert recorder.journal_bytes == 0
        assert recorder.problem is None
    finally:
        await recorder.close()
        await database.close()


async def test_a_flush_writes_what_was_queued_when_it_began_and_drain_writes_everything(
    database_url: str, tmp_path: Path
) -> None:
    """Rows recorded while a flush writes wait for the next flush: a flush chasing a queue that never empties
    would write small batches back to back for as long as the load lasts. Draining (at shutdown) takes them all."""
    await upgrade(database_url)
    database = Database(database_url)
    database.open()
    dataset = f"t_{uuid.uuid4().hex}"
    recorder = make_recorder(database, tmp_path, dataset)
    original_insert = recorder._insert
    arriving = [5, 5]  # rows recorded during each of the first two writes

    async def insert_while_requests_keep_coming(rows: list[dict[str, object]]) -> bool:
        for _ in range(arriving.pop(0) if arriving else 0):
            recorder.record(usage_record())  # requests served while the batch is written
        return await original_insert(rows)

    recorder._insert = insert_while_requests_keep_coming  # type: ignore[method-assign]
    try:
        for _ in range(3):
            recorder.record(usage_record())
        await recorder.flush()
        assert recorder.queue_depth == 5  # the 3 queued at the start went in; the 5 that came meanwhile wait
        await recorder.drain()
        assert recorder.queue_depth == 0
        assert (
            await stored(database, dataset) == 3 + 5 + 5
        )  # drain wrote the 5 waiting and the 5 recorded meanwhile
    finally:
        await recorder.close()
        await database.close()


async def test_rows_spilled_by_an_older_gateway_are_replayed_beside_journaled_ones(
    database_url: str, tmp_path: Path
) -> None:
    """A spill file left by an older gateway has rows without `error`: they go in (with none), and so do the rows
    of this version, with theirs."""
    await upgrade(database_url)
    database = Database(database_url)
    database.open()
    dataset = f"t_{uuid.uuid4().hex}"
    old = recorder_row(usage_record(request_id="spilled-by-an-older-gateway"), dataset)
    del old["error"]
    (tmp_path / LEGACY_SPILL_FOLDER).mkdir()
    (tmp_path / LEGACY_SPILL_FOLDER / "1234.jsonl").write_bytes(encode(old))
    recorder = make_recorder(database, tmp_path, dataset)
    try:
        recorder.record(usage_record(request_id="journaled-now", status=502, error="upstream_incomplete"))
        assert await recorder.flush()
        assert await recorder.replay() == 1

        async with database.session() as session:
            rows = (await session.scalars(select(UsageEvent).where(UsageEvent.dataset == dataset))).all()
        assert {(row.request_id, row.status, row.error) for row in rows} == {
            ("spilled-by-an-older-gateway", 200, None),
            ("journaled-now", 502, "upstream_incomplete"),
        }
        assert recorder.journal_bytes == 0
    finally:
        await recorder.close()
        await database.close()


@pytest.fixture(params=["sqlite", "postgres"])
def unmigrated_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: PostgresServer
) -> str:
    """A database of its own, with no table at all."""
    return (
        sqlite_url(tmp_path / "fresh.db") if request.param == "sqlite" else postgres_server.create_database()
    )


async def test_rows_refused_for_a_missing_table_are_kept_until_the_database_is_migrated(
    unmigrated_database_url: str, tmp_path: Path
) -> None:
    await schema_missing_then_migrated(unmigrated_database_url, tmp_path)


async def test_rows_refused_for_a_missing_column_are_kept_until_the_database_is_migrated(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    database_url = await asyncio.to_thread(postgres_server.create_database)
    await upgrade(database_url)
    await downgrade(database_url, REVISION_BEFORE_ERRORS)
    await schema_missing_then_migrated(database_url, tmp_path)


async def schema_missing_then_migrated(database_url: str, tmp_path: Path) -> None:
    """Rows the database refuses for its schema are neither dropped nor held in memory: they wait in the journal,
    the recorder says why, and they all go in once `gateway migrate` has run."""
    database = Database(database_url)
    database.open()
    dataset = f"t_{uuid.uuid4().hex}"
    recorder = make_recorder(database, tmp_path, dataset)
    try:
        for _ in range(5):
            recorder.record(usage_record())
        assert not await recorder.flush()
        assert recorder.problem == "database_not_migrated"
        assert (recorder.queue_depth, recorder.rows_dropped, recorder.rows_written) == (0, 0, 0)
        assert recorder.journal_bytes > 0

        await upgrade(database_url)
        recorder.record(usage_record())
        assert await recorder.flush()
        assert await recorder.replay() == 5
        assert await stored(database, dataset) == 6
        assert recorder.problem is None
        assert (recorder.rows_dropped, recorder.journal_bytes) == (0, 0)
    finally:
        await recorder.close()
        await database.close()


async def test_rows_the_database_could_not_take_before_shutdown_are_written_by_the_next_start(
    postgres_url: str, tmp_path: Path
) -> None:
    """The database away when the writer stops: its drain gives up in bounded time, the rows stay in the journal,
    and a recorder started later (another instance, the same pid or not) writes them."""
    await upgrade(postgres_url)
    dataset = f"t_{uuid.uuid4().hex}"
    away = Database(make_url(postgres_url).set(port=free_port()).render_as_string(hide_password=False))
    away.open()
    stopped = make_recorder(away, tmp_path, dataset)
    writer = asyncio.create_task(stopped.run())
    for _ in range(7):
        stopped.record(usage_record())
    await asyncio.sleep(0.1)
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    await away.close()
    assert stopped.journal_bytes > 0

    database = Database(postgres_url)
    database.open()
    started = make_recorder(database, tmp_path, dataset)
    try:
        assert await started.replay() == 7
        assert await stored(database, dataset) == 7
        assert started.journal_bytes == 0
    finally:
        await started.close()
        await database.close()
    assert list((tmp_path / "usage-journal").iterdir()) == []


def recorder_row(record: UsageRecord, dataset: str) -> dict[str, object]:
    """The row the recorder journals for `record`."""
    row: dict[str, object] = {field.name: getattr(record, field.name) for field in fields(UsageRecord)}
    row.update(id=uuid.uuid4().hex, dataset=dataset, is_error=record.status >= 400)
    return row


async def test_a_failure_that_is_not_the_database_refusing_the_rows_drops_none(
    database_url: str, tmp_path: Path
) -> None:
    """Only the database's refusal of a row's values drops that row. A writer whose database was closed under it
    (as at the end of a shutdown the drain outlived, when the CI run lost 990 rows so) keeps every row in the
    journal, logs one line, and a later replay writes them all."""
    await upgrade(database_url)
    dataset = f"t_{uuid.uuid4().hex}"
    database = Database(database_url)
    database.open()
    recorder = make_recorder(database, tmp_path, dataset)
    try:
        for _ in range(5):
            recorder.record(usage_record())
        await database.close()  # its sessions now raise RuntimeError

        assert await recorder.flush() is False
        assert (recorder.rows_written, recorder.rows_dropped) == (0, 0)
        assert recorder.journal_bytes > 0

        database.open()
        assert await recorder.replay() == 5
        assert await stored(database, dataset) == 5
        assert recorder.journal_bytes == 0
    finally:
        await recorder.close()
        await database.close()
