"""The recorder on its own, against a real database: a row the database refuses costs only that row."""

from __future__ import annotations

import uuid
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
