"""The budgets' statements: limits set and read, admissions reserved and leased, settled, given back, and the sweep
that releases expired holds and rolls periods over. Every amount moves by UPDATE in the database, under the
CHECK of `budget_limits` (`gateway.db.budget_models`), never read, changed in Python and written back.

On Postgres each reservation is one statement (a data-modifying CTE: reserve, then record the holds), sent on an
autocommit connection: one round trip. SQLite has no such CTE; there the two statements share a transaction,
which costs no network.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Float,
    TextClause,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from gateway.budgets.limits import (
    DEFAULT_PERIOD,
    MINUTE,
    REQUESTS,
    ROLLING,
    USD,
    LimitChanges,
    Period,
    day_of,
)
from gateway.db.budget_models import BudgetDay, BudgetHold, BudgetLimit
from gateway.errors import ConflictError
from gateway.ids import new_id
from gateway.principals import AppliedLimit

LIMIT_ID_PREFIX = "lim"

# asyncpg needs each parameter's type; the statements' text does not say it.
TYPES = {
    "usd": BigInteger,
    "tokens": BigInteger,
    "k": BigInteger,
    "now": Float,
    "expires_at": Float,
    "day": BigInteger,
}


def typed(statement: str) -> TextClause:
    """`statement` with its parameters' types (those of `TYPES` it names; the rest are text)."""
    clause = text(statement)
    names = [name for name in TYPES if f":{name}" in statement]
    return clause.bindparams(*(bindparam(name, type_=TYPES[name]) for name in names))


# Reserve `:usd` on USD limits and `:tokens` on token limits, all or nothing (the CHECK), and record the holds.
# The rows are locked in id order first, so that two admissions over the same limits cannot deadlock.
RESERVE_POSTGRES = typed(
    """
    WITH locked AS (
        SELECT id FROM budget_limits WHERE id = ANY(CAST(:ids AS varchar[])) ORDER BY id FOR UPDATE
    ), held AS (
        UPDATE budget_limits AS b
        SET reserved = b.reserved + CASE b.kind WHEN 'usd_per_period' THEN :usd ELSE :tokens END,
            ceiling = b.cap, updated_at = :now
        FROM locked WHERE b.id = locked.id
        RETURNING b.id, b.kind
    )
    INSERT INTO budget_holds (hold, limit_id, amount, expires_at)
    SELECT :hold, id, CASE kind WHEN 'usd_per_period' THEN :usd ELSE :tokens END, :expires_at FROM held
    """
)
# Grant up to `:k` admissions of a rate limit (fewer when fewer are left, none when none), and record the hold.
GRANT = "CASE WHEN cap - reserved < :k THEN cap - reserved ELSE :k END"
LEASE_UPDATE = f"""
    UPDATE budget_limits SET last_grant = {GRANT}, reserved = reserved + {GRANT}, ceiling = cap, updated_at = :now
    WHERE id = :id AND reserved < cap
    RETURNING id, last_grant, reserved, cap
"""
LEASE_POSTGRES = typed(
    f"""
    WITH granted AS ({LEASE_UPDATE}), held AS (
        INSERT INTO budget_holds (hold, limit_id, amount, expires_at)
        SELECT :hold, id, last_grant, :expires_at FROM granted
    )
    SELECT last_grant, reserved, cap FROM granted
    """
)
LEASE_SQLITE = typed(LEASE_UPDATE)
# Settle a batch in one statement: release its holds, count each limit's actual spend (`:ids` and `:actuals`,
# side by side), raise a ceiling a request overran, and add rolling windows' spend to today's row.
SETTLE_POSTGRES = typed(
    """
    WITH released AS (
        DELETE FROM budget_holds WHERE hold = ANY(CAST(:holds AS varchar[])) RETURNING limit_id, amount
    ), held AS (
        SELECT limit_id, sum(amount) AS amount FROM released GROUP BY limit_id
    ), spend AS (
        SELECT s.limit_id, s.actual, coalesce(h.amount, 0) AS held
        FROM unnest(CAST(:ids AS varchar[]), CAST(:actuals AS bigint[])) AS s(limit_id, actual)
        LEFT JOIN held AS h ON h.limit_id = s.limit_id
    ), locked AS (
        SELECT b.id FROM budget_limits AS b JOIN spend ON spend.limit_id = b.id ORDER BY b.id FOR UPDATE OF b
    ), settled AS (
        UPDATE budget_limits AS b
        SET spent = b.spent + spend.actual, reserved = b.reserved - spend.held,
            ceiling = GREATEST(b.ceiling, b.spent + b.reserved + spend.actual - spend.held), updated_at = :now
        FROM spend JOIN locked ON locked.id = spend.limit_id
        WHERE b.id = spend.limit_id
        RETURNING b.id, b.period, spend.actual
    )
    INSERT INTO budget_days (limit_id, day, amount)
    SELECT id, :day, actual FROM settled WHERE period = 'rolling' AND actual > 0
    ON CONFLICT (limit_id, day) DO UPDATE SET amount = budget_days.amount + excluded.amount
    """
)


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease's admissions, and how many the limit had left after it."""

    granted: int
    left: int


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit as stored, counters included."""

    id: str
    owner: str
    kind: str
    period: str
    rolling_days: int | None
    cap: int
    spent: int
    reserved: int
    resets_at: float | None


def _states(rows: Iterable[BudgetLimit]) -> list[LimitState]:
    return [
        LimitState(
            row.id,
            row.owner,
            row.kind,
            row.period,
            row.rolling_days,
            row.cap,
            row.spent,
            row.reserved,
            row.resets_at,
        )
        for row in rows
    ]


async def applied_limits(session: AsyncSession, owners: Sequence[str]) -> tuple[AppliedLimit, ...]:
    """The limits of `owners`, for a principal (one query, when it is proven)."""
    rows = await session.execute(
        select(BudgetLimit.id, BudgetLimit.owner, BudgetLimit.kind, BudgetLimit.period, BudgetLimit.cap)
        .where(BudgetLimit.owner.in_(owners))
        .order_by(BudgetLimit.id)
    )
    return tuple(AppliedLimit(*row) for row in rows)


async def limit_states(session: AsyncSession, owners: Sequence[str]) -> list[LimitState]:
    rows = await session.scalars(select(BudgetLimit).where(BudgetLimit.owner.in_(owners)))
    return _states(rows)


async def states_by_id(session: AsyncSession, ids: Sequence[str]) -> list[LimitState]:
    rows = await session.scalars(select(BudgetLimit).where(BudgetLimit.id.in_(ids)))
    return _states(rows)


async def oldest_holds(session: AsyncSession, ids: Sequence[str]) -> dict[str, float]:
    """The earliest expiry among each limit's holds: when a rate limit's oldest admissions leave its window."""
    rows = await session.execute(
        select(BudgetHold.limit_id, func.min(BudgetHold.expires_at))
        .where(BudgetHold.limit_id.in_(ids))
        .group_by(BudgetHold.limit_id)
    )
    return {limit_id: expires_at for limit_id, expires_at in rows}


async def newest_open_lease(session: AsyncSession, limit_id: str) -> float | None:
    """The latest expiry among a rate limit's holds of more than one admission: the youngest lease that may still
    have admissions to give back (a lease of one is used by the request that took it)."""
    return await session.scalar(
        select(func.max(BudgetHold.expires_at)).where(BudgetHold.limit_id == limit_id, BudgetHold.amount > 1)
    )


async def set_limits(session: AsyncSession, owner: str, changes: LimitChanges, *, now: float) -> None:
    """Apply `changes` to `owner`'s limits (within the caller's transaction): a cap set, a kind removed, the spend
    limits' period changed. Counters stay as they are; a new or re-periodised limit resets at its period's end."""
    existing = {
        row.kind: row
        for row in await session.scalars(
            select(BudgetLimit).where(BudgetLimit.owner == owner).with_for_update()
        )
    }
    period = changes.period
    if period is None:
        current = next((row for row in existing.values() if row.kind != REQUESTS), None)
        period = Period(current.period, current.rolling_days) if current else Period(DEFAULT_PERIOD)
    for kind, cap in changes.caps.items():
        row = existing.get(kind)
        if cap is None:
            if row is not None:
                await session.delete(row)
                del existing[kind]
            continue
        if row is None:
            row = BudgetLimit(
                id=new_id(LIMIT_ID_PREFIX), owner=owner, kind=kind, spent=0, reserved=0, last_grant=0
            )
            row.period, row.rolling_days, row.resets_at = _period_columns(kind, period, now)
            row.ceiling = cap
            session.add(row)
            existing[kind] = row
        row.cap = cap
        row.updated_at = now
    if changes.period is not None:
        for row in existing.values():
            if row.kind != REQUESTS and (row.period, row.rolling_days) != (period.name, period.rolling_days):
                row.period, row.rolling_days, row.resets_at = _period_columns(row.kind, period, now)
                row.updated_at = now
    try:
        await session.flush()
    except IntegrityError:  # the same owner's limit made by another request at the same moment
        raise ConflictError("The limits were being changed at the same moment; try again.") from None


def _period_columns(kind: str, period: Period, now: float) -> tuple[str, int | None, float | None]:
    if kind == REQUESTS:
        return MINUTE, None, None
    return period.name, period.rolling_days, period.next_reset(now)


async def reserve(
    connection: AsyncConnection | AsyncSession,
    *,
    postgres: bool,
    hold: str,
    limits: Sequence[AppliedLimit],
    usd: int,
    tokens: int,
    expires_at: float,
) -> None:
    """Reserve on every limit of `limits` at once; raises IntegrityError (nothing reserved) when one does not fit."""
    ids = [limit.id for limit in limits]
    now = time.time()
    if postgres:
        await connection.execute(
            RESERVE_POSTGRES,
            {"ids": ids, "usd": usd, "tokens": tokens, "now": now, "hold": hold, "expires_at": expires_at},
        )
        return
    amount = case((BudgetLimit.kind == USD, usd), else_=tokens)
    held = await connection.execute(
        update(BudgetLimit)
        .where(BudgetLimit.id.in_(ids))
        .values(reserved=BudgetLimit.reserved + amount, ceiling=BudgetLimit.cap, updated_at=now)
        .returning(BudgetLimit.id, BudgetLimit.kind)
    )
    rows = [
        {
            "hold": hold,
            "limit_id": limit_id,
            "amount": usd if kind == USD else tokens,
            "expires_at": expires_at,
        }
        for limit_id, kind in held
    ]
    if rows:
        await connection.execute(insert(BudgetHold), rows)


async def lease(
    connection: AsyncConnection | AsyncSession,
    *,
    postgres: bool,
    hold: str,
    limit_id: str,
    wanted: int,
    expires_at: float,
) -> Grant:
    """Up to `wanted` admissions of a rate limit, counted from now until `expires_at`."""
    values = {"id": limit_id, "k": wanted, "now": time.time(), "hold": hold, "expires_at": expires_at}
    if postgres:
        row = (await connection.execute(LEASE_POSTGRES, values)).first()
        return Grant(0, 0) if row is None else Grant(row[0], row[2] - row[1])
    found = (await connection.execute(LEASE_SQLITE, values)).first()
    if found is None:
        return Grant(0, 0)
    _, granted, reserved, cap = found
    await connection.execute(
        insert(BudgetHold).values(hold=hold, limit_id=limit_id, amount=granted, expires_at=expires_at)
    )
    return Grant(granted, cap - reserved)


async def give_back(session: AsyncSession, *, hold: str, limit_id: str, unused: int) -> None:
    """Return a lease's unused admissions (within the caller's transaction), unless its hold expired already."""
    returned = await session.execute(
        update(BudgetHold)
        .where(BudgetHold.hold == hold, BudgetHold.limit_id == limit_id, BudgetHold.amount >= unused)
        .values(amount=BudgetHold.amount - unused)
        .returning(BudgetHold.id)
    )
    if returned.first() is not None:
        await session.execute(
            update(BudgetLimit)
            .where(BudgetLimit.id == limit_id)
            .values(reserved=BudgetLimit.reserved - unused)
        )


async def settle(
    connection: AsyncConnection | AsyncSession,
    *,
    postgres: bool,
    settlements: Sequence[tuple[str, Sequence[tuple[AppliedLimit, int]]]],
    now: float,
) -> None:
    """Release each hold of `settlements` and count what its request actually used on each of its limits, all
    at once: one statement on Postgres; on SQLite, within the caller's transaction, one UPDATE per limit. A hold
    the sweep already released (expired) releases nothing again; the spend counts all the same."""
    holds = [hold for hold, _ in settlements]
    actuals: dict[str, tuple[AppliedLimit, int]] = {}
    for _, spends in settlements:
        for limit, actual in spends:
            actuals[limit.id] = (limit, actuals.get(limit.id, (limit, 0))[1] + actual)
    if postgres:
        ids = sorted(actuals)
        await connection.execute(
            SETTLE_POSTGRES,
            {
                "holds": holds,
                "ids": ids,
                "actuals": [actuals[limit_id][1] for limit_id in ids],
                "now": now,
                "day": day_of(now),
            },
        )
        return
    released = await connection.execute(
        delete(BudgetHold).where(BudgetHold.hold.in_(holds)).returning(BudgetHold.limit_id, BudgetHold.amount)
    )
    held: dict[str, int] = defaultdict(int)
    for limit_id, amount in released:
        held[limit_id] += amount
    for limit_id in sorted(actuals):
        limit, actual = actuals[limit_id]
        after = BudgetLimit.spent + BudgetLimit.reserved + actual - held[limit_id]
        await connection.execute(
            update(BudgetLimit)
            .where(BudgetLimit.id == limit_id)
            .values(
                spent=BudgetLimit.spent + actual,
                reserved=BudgetLimit.reserved - held[limit_id],
                # A request that cost more than it reserved (an upstream past max_tokens) is counted in full.
                ceiling=case((after > BudgetLimit.ceiling, after), else_=BudgetLimit.ceiling),
                updated_at=now,
            )
        )
        if limit.period == ROLLING and actual:
            statement = sqlite.insert(BudgetDay).values(limit_id=limit_id, day=day_of(now), amount=actual)
            await connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[BudgetDay.limit_id, BudgetDay.day],
                    set_={"amount": BudgetDay.amount + statement.excluded.amount},
                )
            )


async def sweep(session: AsyncSession, *, now: float) -> int:
    """Within the caller's transaction: release the holds past their expiry, reset the counters whose period
    ended, and take the days that left a rolling window off its spend. Returns how many things it changed. Safe
    on several instances at once: each hold and each day is deleted, and each reset claimed, by one of them."""
    expired = await session.execute(
        delete(BudgetHold)
        .where(BudgetHold.expires_at <= now)
        .returning(BudgetHold.limit_id, BudgetHold.amount)
    )
    totals: dict[str, int] = defaultdict(int)
    for limit_id, amount in expired:
        totals[limit_id] += amount
    for limit_id in sorted(totals):
        await session.execute(
            update(BudgetLimit)
            .where(BudgetLimit.id == limit_id)
            .values(reserved=BudgetLimit.reserved - totals[limit_id])
        )
    due = (
        await session.execute(
            select(BudgetLimit.id, BudgetLimit.period, BudgetLimit.rolling_days, BudgetLimit.resets_at)
            .where(BudgetLimit.resets_at <= now)
            .order_by(BudgetLimit.id)
        )
    ).all()
    for limit_id, period, rolling_days, resets_at in due:
        claim = (
            update(BudgetLimit)
            .where(BudgetLimit.id == limit_id, BudgetLimit.resets_at == resets_at)
            .values(resets_at=Period(period, rolling_days).next_reset(now))
        )
        if period != ROLLING:
            await session.execute(claim.values(spent=0))
            continue
        if (await session.execute(claim.returning(BudgetLimit.id))).first() is None:
            continue  # another instance rolled it
        left = await session.execute(
            delete(BudgetDay)
            .where(BudgetDay.limit_id == limit_id, BudgetDay.day <= day_of(now) - (rolling_days or 1))
            .returning(BudgetDay.amount)
        )
        gone = sum(amount for (amount,) in left)
        if gone:
            await session.execute(
                update(BudgetLimit)
                .where(BudgetLimit.id == limit_id)
                .values(spent=case((BudgetLimit.spent > gone, BudgetLimit.spent - gone), else_=0))
            )
    return len(totals) + len(due)
