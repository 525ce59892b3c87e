"""Hourly usage aggregates: what a batch of new events adds to each hour, written in the batch's transaction.

Long windows are summed from these rows (a month is at most 720 hours per request type, provider, model and
path) instead of from every event. Latencies go into buckets 5% wide, from which the p95 of a long window is
read: exact to within a bucket.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import UsageHour, UsageHourLatency

BUCKET_GROWTH = 1.05
SUMMED = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "ocr_pages",
    "input_cost_usd",
    "output_cost_usd",
    "ocr_cost_usd",
)


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def latency_bucket(latency_ms: float) -> int:
    """The bucket holding `latency_ms`: bucket b covers (1.05**(b-1), 1.05**b] ms; bucket 0 everything to 1 ms."""
    return 0 if latency_ms <= 1 else math.ceil(math.log(latency_ms) / math.log(BUCKET_GROWTH) - 1e-9)


def bucket_ceiling(bucket: int) -> float:
    """The largest latency a bucket holds: what the p95 of a long window reports."""
    return round(BUCKET_GROWTH**bucket, 3)


async def add_to_hours(session: AsyncSession, rows: Iterable[dict[str, Any]]) -> None:
    """Adds newly written event rows to their hours' aggregates and latency histograms (upserts, in key order so
    that concurrent writers lock rows in the same order)."""
    hours: dict[tuple[Any, ...], dict[str, Any]] = {}
    latencies: dict[tuple[Any, ...], int] = defaultdict(int)
    for row in rows:
        base = (row["dataset"], hour_of(row["created_at"]), row["request_type"], row["provider"] or "")
        totals = hours.setdefault(
            (*base, row["model"] or "", row["path"]),
            {"requests": 0, "errors": 0, "latency_sum_ms": 0.0, **dict.fromkeys(SUMMED, 0)},
        )
        totals["requests"] += 1
        totals["errors"] += 1 if row["is_error"] else 0
        totals["latency_sum_ms"] += row["latency_ms"]
        for name in SUMMED:
            totals[name] += row[name]
        latencies[(*base, latency_bucket(row["latency_ms"]))] += 1
    if not hours:
        return
    insert = postgres_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    hour_keys = ("dataset", "hour", "request_type", "provider", "model", "path")
    hour_rows = [dict(zip(hour_keys, key, strict=True)) | hours[key] for key in sorted(hours)]
    statement = insert(UsageHour)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=list(hour_keys),
            set_={
                name: getattr(UsageHour, name) + getattr(statement.excluded, name)
                for name in hours[next(iter(hours))]
            },
        ),
        hour_rows,
    )
    latency_keys = ("dataset", "hour", "request_type", "provider", "bucket")
    latency_rows = [
        dict(zip(latency_keys, key, strict=True)) | {"requests": count}
        for key, count in sorted(latencies.items())
    ]
    statement = insert(UsageHourLatency)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=list(latency_keys),
            set_={"requests": UsageHourLatency.requests + statement.excluded.requests},
        ),
        latency_rows,
    )


def postgres_hours_from(source: str) -> str:
    """Postgres: the same aggregation as `add_to_hours`, in SQL, over the event rows of the relation `source` (a
    CTE of the batch's newly inserted events): a data-modifying CTE that upserts the hours, then the statement
    that upserts the latency histograms. Postgres groups the batch itself, so the writer's event loop does not.

    The bucket is `latency_bucket` with the same float8 operations in the same order (both use the C library's
    log), and the hour is truncated in UTC whatever the session's time zone."""
    hour = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    bucket = (
        "CASE WHEN latency_ms <= 1 THEN 0"
        f" ELSE ceil(ln(latency_ms) / ln({BUCKET_GROWTH}::float8) - 1e-9::float8)::integer END"
    )
    hour_key = "dataset, hour, request_type, provider, model, path"
    sums = ", ".join(f"sum({name})" for name in SUMMED)
    added = ", ".join(
        f"{name} = usage_hours.{name} + excluded.{name}"
        for name in ("requests", "errors", "latency_sum_ms", *SUMMED)
    )
    latency_key = "dataset, hour, request_type, provider, bucket"
    return (
        f"hours AS (INSERT INTO usage_hours ({hour_key}, requests, errors, latency_sum_ms, {', '.join(SUMMED)})"
        f" SELECT dataset, {hour}, request_type, coalesce(provider, ''), coalesce(model, ''), path,"
        f" count(*), count(*) FILTER (WHERE is_error), sum(latency_ms), {sums}"
        f" FROM {source} GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6"
        f" ON CONFLICT ({hour_key}) DO UPDATE SET {added})"
        f" INSERT INTO usage_hour_latencies ({latency_key}, requests)"
        f" SELECT dataset, {hour}, request_type, coalesce(provider, ''), {bucket}, count(*)"
        f" FROM {source} GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
        f" ON CONFLICT ({latency_key}) DO UPDATE SET requests = usage_hour_latencies.requests + excluded.requests"
    )
