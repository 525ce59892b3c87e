"""The usage summaries, aggregated in SQL (never by looping over rows in Python), on SQLite and Postgres alike.

Every figure is summed from a window's *source*: for windows of up to a day, or one user's usage, the raw events;
for longer windows of a whole dataset, the hourly aggregates of its full hours plus the raw events of its partial
first and last hours. Latency p95 is the nearest-rank percentile of the raw events (exact) on the first kind, and
is read from the hourly latency histograms (to within a 5% bucket) on the second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, and_, case, func, literal, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import UsageEvent as E
from gateway.db.models import UsageHour as H
from gateway.db.models import UsageHourLatency as L
from gateway.usage.hours import bucket_ceiling

TOP_LIMIT = 10
RAW_WINDOW = timedelta(hours=24)
HOUR = timedelta(hours=1)
COUNTS = ("input_tokens", "output_tokens", "total_tokens", "ocr_pages")
COSTS = ("input_cost_usd", "output_cost_usd", "ocr_cost_usd")


@dataclass(frozen=True, slots=True)
class Window:
    """A span of one dataset's usage (of one user's, when `user_id` is set)."""

    dataset: str
    since: datetime
    until: datetime
    user_id: str | None = None

    @property
    def full_hours(self) -> tuple[datetime, datetime] | None:
        """[first, end) of the whole hours read from the aggregates, or None when the raw events are read."""
        if self.user_id is not None or self.until - self.since <= RAW_WINDOW:
            return None
        first = self.since.replace(minute=0, second=0, microsecond=0)
        if first < self.since:
            first += HOUR
        return first, self.until.replace(minute=0, second=0, microsecond=0)

    def raw(self) -> ColumnElement[bool]:
        """The events read raw: the whole window, or only its partial first and last hours (as two index
        ranges, so that the hours between are not scanned)."""
        hours = self.full_hours
        if hours is None:
            span = and_(E.created_at >= self.since, E.created_at <= self.until)
        else:
            span = or_(
                and_(E.created_at >= self.since, E.created_at < hours[0]),
                and_(E.created_at >= hours[1], E.created_at <= self.until),
            )
        conditions = [E.dataset == self.dataset, span]
        if self.user_id is not None:
            conditions.append(E.user_id == self.user_id)
        return and_(*conditions)


def source(window: Window, *, day_in: str | None = None) -> Subquery:
    """One row per event (or per aggregated hour) of the window, with the columns every figure sums; with a
    `day` column too when `day_in` names the database dialect."""
    raw: Select[Any] = select(
        E.request_type,
        E.provider,
        E.model,
        E.path,
        literal(1).label("requests"),
        case((E.is_error, 1), else_=0).label("errors"),
        *(getattr(E, name) for name in (*COUNTS, *COSTS)),
        E.latency_ms.label("latency_sum_ms"),
        *([_day(E.created_at, day_in).label("day")] if day_in else []),
    ).where(window.raw())
    hours = window.full_hours
    if hours is None:
        return raw.subquery()
    aggregated: Select[Any] = select(
        H.request_type,
        func.nullif(H.provider, "").label("provider"),
        func.nullif(H.model, "").label("model"),
        H.path,
        H.requests,
        H.errors,
        *(getattr(H, name) for name in (*COUNTS, *COSTS)),
        H.latency_sum_ms,
        *([_day(H.hour, day_in).label("day")] if day_in else []),
    ).where(H.dataset == window.dataset, H.hour >= hours[0], H.hour < hours[1])
    return union_all(raw, aggregated).subquery()


def _figures(s: Subquery, *, latency: bool = True) -> list[ColumnElement[Any]]:
    def total(column: Any, label: str) -> ColumnElement[Any]:
        return func.coalesce(func.sum(column), 0).label(label)

    figures = [
        total(s.c.requests, "requests"),
        total(s.c.errors, "errors"),
        *(total(s.c[name], name) for name in COUNTS),
        total(s.c.input_cost_usd, "input_estimated_cost_usd"),
        total(s.c.output_cost_usd, "output_estimated_cost_usd"),
        total(s.c.input_cost_usd + s.c.output_cost_usd + s.c.ocr_cost_usd, "estimated_cost_usd"),
        total(s.c.ocr_cost_usd, "ocr_estimated_cost_usd"),
    ]
    if latency:
        average = func.sum(s.c.latency_sum_ms) / func.nullif(func.sum(s.c.requests), 0)
        figures.append(func.coalesce(average, 0).label("avg_latency_ms"))
    return figures


async def totals(session: AsyncSession, window: Window) -> dict[str, Any]:
    s = source(window)
    row = (await session.execute(select(*_figures(s)))).one()
    p95 = await _p95(session, window, group=None)
    return _clean({**row._asdict(), "p95_latency_ms": p95.get(None, 0.0)})


async def grouped_totals(
    session: AsyncSession, window: Window, name: str, label: str
) -> list[dict[str, Any]]:
    """The totals per value of the source column `name` (request type, provider), busiest first."""
    s = source(window)
    column = s.c[name]
    query = (
        select(column.label(label), *_figures(s))
        .group_by(column)
        .order_by(func.sum(s.c.requests).desc(), column)
    )
    p95 = await _p95(session, window, group=name)
    rows = (await session.execute(query)).all()
    return [_clean({**row._asdict(), "p95_latency_ms": p95.get(row[0], 0.0)}) for row in rows]


async def top(session: AsyncSession, window: Window, name: str) -> list[dict[str, Any]]:
    """The `TOP_LIMIT` busiest values of the source column `name` (model, path)."""
    s = source(window)
    column = s.c[name]
    figures = [
        f
        for f in _figures(s, latency=False)
        if f.name in ("requests", "errors", "total_tokens", "estimated_cost_usd")
    ]
    query = (
        select(column.label(name), *figures)
        .where(column.is_not(None))
        .group_by(column)
        .order_by(func.sum(s.c.requests).desc(), column)
        .limit(TOP_LIMIT)
    )
    return [_clean(row._asdict()) for row in (await session.execute(query)).all()]


async def _p95(session: AsyncSession, window: Window, *, group: str | None) -> dict[Any, float]:
    hours = window.full_hours
    if hours is not None:
        return await _p95_from_histograms(session, window.dataset, hours, group=group)
    column = getattr(E, group) if group is not None else None
    key = column.label("key") if column is not None else literal(None).label("key")
    where = window.raw()
    if _is_postgres(session):
        # percentile_disc is the nearest-rank percentile, as the window form below computes it.
        query: Select[Any] = select(key, func.percentile_disc(0.95).within_group(E.latency_ms)).where(where)
        if column is not None:
            query = query.group_by(column)
        return {row[0]: float(row[1]) for row in (await session.execute(query)).all() if row[1] is not None}
    partition = [column] if column is not None else []
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


async def _p95_from_histograms(
    session: AsyncSession, dataset: str, hours: tuple[datetime, datetime], *, group: str | None
) -> dict[Any, float]:
    column = getattr(L, group) if group is not None else None
    key = (
        (func.nullif(column, "") if group == "provider" else column) if column is not None else literal(None)
    )
    counted = (
        select(key.label("key"), L.bucket, func.sum(L.requests).label("n"))
        .where(L.dataset == dataset, L.hour >= hours[0], L.hour < hours[1])
        .group_by(key, L.bucket)
        .subquery()
    )
    partition = [counted.c.key] if column is not None else []
    cumulative = select(
        counted.c.key,
        counted.c.bucket,
        func.sum(counted.c.n).over(partition_by=partition, order_by=counted.c.bucket).label("below"),
        func.sum(counted.c.n).over(partition_by=partition).label("all"),
    ).subquery()
    query = (
        select(cumulative.c.key, func.min(cumulative.c.bucket))
        .where(cumulative.c.below * 100 >= cumulative.c.all * 95)
        .group_by(cumulative.c.key)
    )
    return {row[0]: bucket_ceiling(int(row[1])) for row in (await session.execute(query)).all()}


async def summary(
    session: AsyncSession, *, dataset: str, hours: int, now: datetime, user_id: str | None
) -> dict[str, Any]:
    """`GET /v1/usage`: totals, top models and paths, and totals by request type and by provider."""
    window = Window(dataset, now - timedelta(hours=hours), now, user_id)
    return {
        "totals": await totals(session, window),
        "top_models": await top(session, window, "model"),
        "top_paths": await top(session, window, "path"),
        "by_type": await grouped_totals(session, window, "request_type", "type"),
        "by_provider": await grouped_totals(session, window, "provider", "provider"),
    }


async def daily(
    session: AsyncSession, *, dataset: str, days: int, now: datetime, user_id: str | None
) -> list[dict[str, Any]]:
    """`GET /v1/usage/daily`: one bucket per UTC day ending today, oldest first, missing days zero-filled."""
    first_day = now.date() - timedelta(days=days - 1)
    since = datetime.combine(first_day, datetime.min.time(), tzinfo=now.tzinfo)
    s = source(Window(dataset, since, now, user_id), day_in=session.get_bind().dialect.name)
    figures = _figures(s, latency=False)
    rows = (await session.execute(select(s.c.day.label("date"), *figures).group_by(s.c.day))).all()
    by_day = {str(row[0]): _clean(row._asdict()) for row in rows}
    empty = _clean({figure.name: 0 for figure in figures if figure.name != "errors"})
    buckets = []
    for offset in range(days):
        label = (first_day + timedelta(days=offset)).isoformat()
        found = {name: value for name, value in by_day.get(label, {}).items() if name in empty}
        buckets.append({**empty, **found, "date": label})
    return buckets


def _day(column: Any, dialect: str) -> ColumnElement[Any]:
    """The UTC calendar day of a timestamp column, as YYYY-MM-DD."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", column)  # SQLite keeps UTC timestamps as ISO text


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


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
        {"window": label, "totals": await totals(session, Window(dataset, now - span, now, user_id))}
        for label, span in rollup_windows()
    ]
