"""The usage summaries, aggregated in SQL (never by looping over rows in Python), on SQLite and Postgres alike.

Latency p95 is the nearest-rank percentile, found with a window function: the smallest latency whose rank
reaches 95% of the group's count.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import UsageEvent as E

TOP_LIMIT = 10
COST = E.input_cost_usd + E.output_cost_usd + E.ocr_cost_usd


def _sum(column: Any, label: str) -> ColumnElement[Any]:
    return func.coalesce(func.sum(column), 0).label(label)


TOTALS = (
    func.count().label("requests"),
    _sum(case((E.is_error, 1), else_=0), "errors"),
    _sum(E.input_tokens, "input_tokens"),
    _sum(E.output_tokens, "output_tokens"),
    _sum(E.total_tokens, "total_tokens"),
    _sum(E.input_cost_usd, "input_estimated_cost_usd"),
    _sum(E.output_cost_usd, "output_estimated_cost_usd"),
    _sum(COST, "estimated_cost_usd"),
    _sum(E.ocr_pages, "ocr_pages"),
    _sum(E.ocr_cost_usd, "ocr_estimated_cost_usd"),
    func.coalesce(func.avg(E.latency_ms), 0).label("avg_latency_ms"),
)
TOP = (
    func.count().label("requests"),
    _sum(case((E.is_error, 1), else_=0), "errors"),
    _sum(E.total_tokens, "total_tokens"),
    _sum(COST, "estimated_cost_usd"),
)
DAILY = tuple(column for column in TOTALS if column.name not in ("errors", "avg_latency_ms"))


def _window(dataset: str, since: datetime, until: datetime, user_id: str | None) -> ColumnElement[bool]:
    conditions = [E.dataset == dataset, E.created_at >= since, E.created_at <= until]
    if user_id is not None:
        conditions.append(E.user_id == user_id)
    return and_(*conditions)


async def totals(session: AsyncSession, where: ColumnElement[bool]) -> dict[str, Any]:
    row = (await session.execute(select(*TOTALS).where(where))).one()
    p95 = await _p95(session, where, group=None)
    return _clean({**row._asdict(), "p95_latency_ms": p95.get(None, 0.0)})


async def grouped_totals(
    session: AsyncSession, where: ColumnElement[bool], column: Any, name: str
) -> list[dict[str, Any]]:
    """The totals per value of `column` (request type, provider), busiest first."""
    rows = (
        await session.execute(
            select(column.label(name), *TOTALS)
            .where(where)
            .group_by(column)
            .order_by(func.count().desc(), column)
        )
    ).all()
    p95 = await _p95(session, where, group=column)
    return [_clean({**row._asdict(), "p95_latency_ms": p95.get(row[0], 0.0)}) for row in rows]


async def top(
    session: AsyncSession, where: ColumnElement[bool], column: Any, name: str
) -> list[dict[str, Any]]:
    """The `TOP_LIMIT` busiest values of `column` (model, path)."""
    query = (
        select(column.label(name), *TOP)
        .where(where, column.is_not(None))
        .group_by(column)
        .order_by(func.count().desc(), column)
        .limit(TOP_LIMIT)
    )
    return [_clean(row._asdict()) for row in (await session.execute(query)).all()]


async def _p95(session: AsyncSession, where: ColumnElement[bool], *, group: Any) -> dict[Any, float]:
    key = group.label("key") if group is not None else literal(None).label("key")
    if _is_postgres(session):
        # percentile_disc is the nearest-rank percentile, as the window form below computes it.
        aggregate = func.percentile_disc(0.95).within_group(E.latency_ms)
        query: Select[Any] = select(key, aggregate).where(where)
        if group is not None:
            query = query.group_by(group)
        return {row[0]: float(row[1]) for row in (await session.execute(query)).all() if row[1] is not None}
    partition = [group] if group is not None else []
    ranked = (
        select(
            key,
            E.latency_ms,
            func.row_number().over(partition_by=partition, order_by=E.latency_ms).label("rank"),
            func.count().over(partition_by=partition).label("n"),
        )
        .where(where)
        .subquery()
    )
    query = (
        select(ranked.c.key, func.min(ranked.c.latency_ms))
        .where(ranked.c.rank * 100 >= ranked.c.n * 95)
        .group_by(ranked.c.key)
    )
    return {row[0]: float(row[1]) for row in (await session.execute(query)).all()}


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def summary(
    session: AsyncSession, *, dataset: str, hours: int, now: datetime, user_id: str | None
) -> dict[str, Any]:
    """`GET /v1/usage`: totals, top models and paths, and totals by request type and by provider."""
    where = _window(dataset, now - timedelta(hours=hours), now, user_id)
    return {
        "totals": await totals(session, where),
        "top_models": await top(session, where, E.model, "model"),
        "top_paths": await top(session, where, E.path, "path"),
        "by_type": await grouped_totals(session, where, E.request_type, "type"),
        "by_provider": await grouped_totals(session, where, E.provider, "provider"),
    }


async def daily(
    session: AsyncSession, *, dataset: str, days: int, now: datetime, user_id: str | None
) -> list[dict[str, Any]]:
    """`GET /v1/usage/daily`: one bucket per UTC day ending today, oldest first, missing days zero-filled."""
    first_day = now.date() - timedelta(days=days - 1)
    since = datetime.combine(first_day, datetime.min.time(), tzinfo=now.tzinfo)
    day = _utc_day(session)
    rows = (
        await session.execute(
            select(day.label("date"), *DAILY).where(_window(dataset, since, now, user_id)).group_by(day)
        )
    ).all()
    by_day = {str(row[0]): _clean(row._asdict()) for row in rows}
    empty = _clean({column.name: 0 for column in DAILY})
    buckets = []
    for offset in range(days):
        label = (first_day + timedelta(days=offset)).isoformat()
        buckets.append({**empty, **by_day.get(label, {}), "date": label})
    return buckets


def _utc_day(session: AsyncSession) -> ColumnElement[Any]:
    if _is_postgres(session):
        return func.to_char(func.timezone("UTC", E.created_at), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", E.created_at)  # SQLite keeps UTC timestamps as ISO text


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly numbers: whole counts as int, money and latency as float."""
    cleaned: dict[str, Any] = {}
    for name, value in row.items():
        if name.endswith(("_usd", "_ms")):
            cleaned[name] = round(float(value or 0), 9 if name.endswith("_usd") else 3)
        elif name in ("requests", "errors", "input_tokens", "output_tokens", "total_tokens", "ocr_pages"):
            cleaned[name] = int(value or 0)
        elif isinstance(value, date):
            cleaned[name] = value.isoformat()
        else:
            cleaned[name] = value
    return cleaned


def rollup_windows() -> Sequence[tuple[str, timedelta]]:
    return (
        ("10m", timedelta(minutes=10)),
        ("1h", timedelta(hours=1)),
        ("6h", timedelta(hours=6)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
    )


async def rollups(
    session: AsyncSession, *, dataset: str, now: datetime, user_id: str | None
) -> list[dict[str, Any]]:
    """`GET /v1/usage/rollups`: the totals of each preset window."""
    return [
        {"window": label, "totals": await totals(session, _window(dataset, now - span, now, user_id))}
        for label, span in rollup_windows()
    ]
