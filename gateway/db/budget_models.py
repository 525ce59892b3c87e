"""The budgets' tables: each limit with its counters, the holds that reserve against them, and the daily spend
of rolling windows (`gateway.budgets`)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base


class BudgetLimit(Base):
    """One limit of one owner (`token:<id>`, `user:<id>` or `agent:<id>`), with its counters.

    Amounts are whole units: nano-USD for `usd_per_period`, tokens, admissions. `spent + reserved` may never pass
    `ceiling`, which every admission sets to `cap` as it reserves: a reservation that does not fit breaks the
    CHECK and aborts the whole statement, every other limit's reservation with it. Settlement may raise `ceiling`
    past `cap` (a request that cost more than it reserved), never `reserved`, so it cannot be refused."""

    __tablename__ = "budget_limits"
    __table_args__ = (
        UniqueConstraint("owner", "kind"),
        CheckConstraint("spent + reserved <= ceiling", name="within_ceiling"),
        Index("ix_budget_limits_resets_at", "resets_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(60))
    kind: Mapped[str] = mapped_column(String(24))  # usd_per_period, tokens_per_period, requests_per_minute
    period: Mapped[str] = mapped_column(String(8))  # day, month, rolling, minute
    rolling_days: Mapped[int | None] = mapped_column(Integer)
    cap: Mapped[int] = mapped_column(BigInteger)
    spent: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    ceiling: Mapped[int] = mapped_column(BigInteger)
    # What the last lease of admissions was granted (requests_per_minute); set by the same UPDATE that grants it.
    last_grant: Mapped[int] = mapped_column(BigInteger, default=0)
    resets_at: Mapped[float | None] = mapped_column(Float)  # epoch seconds: the period's end, or the next day
    updated_at: Mapped[float] = mapped_column(Float)


class BudgetHold(Base):
    """What one admission (or one lease of admissions) holds against one limit, until settled or expired."""

    __tablename__ = "budget_holds"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    hold: Mapped[str] = mapped_column(String(40), index=True)
    limit_id: Mapped[str] = mapped_column(ForeignKey("budget_limits.id", ondelete="CASCADE"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class BudgetDay(Base):
    """A rolling window's spend on one day (days since the epoch, UTC), subtracted when the day leaves it."""

    __tablename__ = "budget_days"

    limit_id: Mapped[str] = mapped_column(
        ForeignKey("budget_limits.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[int] = mapped_column(Integer, primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
