"""The recorder on its own, against a real database: a row the database refuses costs only that row."""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from gateway.db.engine import Database
from gateway.db.migrate import upgrade
from gateway.db.models import UsageEvent
from gateway.usage.recorder import UsageRecord, UsageRecorder
from gateway.usage.spill import SpillFile


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


async def test_a_refused_row_is_dropped_alone_and_the_recorder_carries_on(
    database_url: str, tmp_path: Path
) -> None:
    await upgrade(database_url)
    database = Database(database_url)
    database.open()
    dataset = f"t_{uuid.uuid4().hex}"
    recorder = UsageRecorder(database, SpillFile(tmp_path / "spill"), dataset=dataset)
    try:
        recorder.record(usage_record())
        recorder.record(usage_record(input_tokens=2**70))  # no INTEGER column can hold it
        recorder.record(usage_record())
        await recorder.flush()
        recorder.record(usage_record())
        await recorder.flush()

        async with database.session() as session:
            stored = await session.scalar(
                select(func.count()).select_from(UsageEvent).where(UsageEvent.dataset == dataset)
            )
        assert stored == 3
        assert recorder.queue_depth == 0
        assert not SpillFile(tmp_path / "spill").has_rows()
    finally:
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
    recorder = UsageRecorder(database, SpillFile(tmp_path / "spill"), dataset=dataset)
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
        async with database.session() as session:
            stored = await session.scalar(
                select(func.count()).select_from(UsageEvent).where(UsageEvent.dataset == dataset)
            )
        assert stored == 3 + 5 + 5  # drain wrote the 5 waiting and the 5 recorded during its own write
    finally:
        await database.close()


async def test_rows_spilled_before_the_error_column_existed_are_replayed_beside_new_ones(
    database_url: str, tmp_path: Path
) -> None:
    """A spill file left by an older gateway has rows without `error`: they go in (with none), and so do the rows
    of this version, with theirs."""
    await upgrade(database_url)
    database = Database(database_url)
    database.open()
    dataset = f"t_{uuid.uuid4().hex}"
    spill = SpillFile(tmp_path / "spill")
    recorder = UsageRecorder(database, spill, dataset=dataset)
    old = recorder_row(usage_record(request_id="spilled-by-an-older-gateway"), dataset)
    del old["error"]
    new = recorder_row(
        usage_record(request_id="spilled-now", status=502, error="upstream_incomplete"), dataset
    )
    spill.append([old])
    spill.append([new])  # the same file, as after an upgrade in place: one batch of both kinds
    try:
        assert await recorder.replay_spill() == 2

        async with database.session() as session:
            rows = (await session.scalars(select(UsageEvent).where(UsageEvent.dataset == dataset))).all()
        assert {(row.request_id, row.status, row.error) for row in rows} == {
            ("spilled-by-an-older-gateway", 200, None),
            ("spilled-now", 502, "upstream_incomplete"),
        }
    finally:
        await database.close()


def recorder_row(record: UsageRecord, dataset: str) -> dict[str, object]:
    """The row the recorder queues (and spills) for `record`."""
    row: dict[str, object] = {field.name: getattr(record, field.name) for field in fields(UsageRecord)}
    row.update(id=uuid.uuid4().hex, dataset=dataset, is_error=record.status >= 400)
    return row
