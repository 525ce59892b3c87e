"""Periods ending and holds expiring (issue 22), on SQLite and Postgres: the sweep every instance runs, driven by
the clock it is given, so that days and months pass without waiting for them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from gateway.budgets import store
from gateway.budgets.limits import DAY_SECONDS, parse_limits
from gateway.db.budget_models import BudgetLimit
from gateway.db.engine import Database
from gateway.db.migrate import upgrade

DAY_ONE = datetime(2026, 12, 7, 12, tzinfo=UTC).timestamp()


async def counters(database: Database, owner: str) -> dict[str, tuple[int, int]]:
    """kind -> (spent, reserved)."""
    async with database.session() as session:
        rows = await session.execute(
            select(BudgetLimit.kind, BudgetLimit.spent, BudgetLimit.reserved).where(
                BudgetLimit.owner == owner
            )
        )
        return {kind: (spent, reserved) for kind, spent, reserved in rows}


async def test_periods_reset_rolling_windows_slide_and_expired_holds_release(database_url: str) -> None:
    await upgrade(database_url)
    database = Database(database_url)
    database.open()
    postgres = database.is_postgres
    try:
        async with database.session() as session, session.begin():
            await store.set_limits(
                session, "user:daily", parse_limits({"tokens_per_period": 1000, "period": "day"}), now=DAY_ONE
            )
            await store.set_limits(
                session,
                "user:rolling",
                parse_limits({"tokens_per_period": 1000, "rolling_days": 2}),
                now=DAY_ONE,
            )
            await store.set_limits(session, "user:monthly", parse_limits({"usd_per_period": 1}), now=DAY_ONE)
            limits = await store.applied_limits(session, ["user:daily", "user:rolling", "user:monthly"])
        daily, rolling = (
            next(limit for limit in limits if limit.owner == owner)
            for owner in ("user:daily", "user:rolling")
        )
        monthly = next(limit for limit in limits if limit.owner == "user:monthly")

        async def spend(at: float, amount: int, *, hold: str) -> None:
            async with database.session() as session, session.begin():
                await store.reserve(
                    session,
                    postgres=postgres,
                    hold=hold,
                    limits=[daily, rolling],
                    usd=0,
                    tokens=amount,
                    expires_at=at + 60,
                )
                await store.settle(
                    session,
                    postgres=postgres,
                    settlements=[(hold, [(daily, amount), (rolling, amount)])],
                    now=at,
                )

        async def sweep(at: float) -> None:
            async with database.session() as session, session.begin():
                await store.sweep(session, now=at)

        await spend(DAY_ONE, 300, hold="h1")
        assert await counters(database, "user:daily") == {"tokens_per_period": (300, 0)}
        await sweep(DAY_ONE + DAY_SECONDS)  # the next day, noon
        assert await counters(database, "user:daily") == {"tokens_per_period": (0, 0)}
        assert await counters(database, "user:rolling") == {
            "tokens_per_period": (300, 0)
        }  # day one is in the window
        await spend(DAY_ONE + DAY_SECONDS, 200, hold="h2")
        await sweep(DAY_ONE + 2 * DAY_SECONDS)  # day one leaves the two-day window; day two stays
        assert await counters(database, "user:rolling") == {"tokens_per_period": (200, 0)}
        await sweep(DAY_ONE + 2 * DAY_SECONDS)  # a second sweep (another instance) takes nothing off again
        assert await counters(database, "user:rolling") == {"tokens_per_period": (200, 0)}

        # A hold nobody settles (its gateway was killed) counts until it expires, then no more.
        async with database.session() as session, session.begin():
            await store.reserve(
                session,
                postgres=postgres,
                hold="h3",
                limits=[monthly],
                usd=5000,
                tokens=0,
                expires_at=DAY_ONE + 100,
            )
        await sweep(DAY_ONE + 99)
        assert await counters(database, "user:monthly") == {"usd_per_period": (0, 5000)}
        await sweep(DAY_ONE + 100)
        assert await counters(database, "user:monthly") == {"usd_per_period": (0, 0)}
        # Settled after it expired: the spend counts, nothing is released twice.
        async with database.session() as session, session.begin():
            await store.settle(
                session, postgres=postgres, settlements=[("h3", [(monthly, 4000)])], now=DAY_ONE + 101
            )
        assert await counters(database, "user:monthly") == {"usd_per_period": (4000, 0)}
    finally:
        await database.close()
