"""Budgets and rate limits: each limit with its counters (a CHECK keeps spent + reserved within its ceiling, so
one UPDATE reserves against several limits all or nothing), the holds that reserve, and rolling windows' days.

Revision ID: 0011_budgets
Revises: 0010_login_attempts
Create Date: 2026-12-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_budgets"
down_revision: str | None = "0010_login_attempts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budget_limits",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("owner", sa.String(60), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("rolling_days", sa.Integer(), nullable=True),
        sa.Column("cap", sa.BigInteger(), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("ceiling", sa.BigInteger(), nullable=False),
        sa.Column("last_grant", sa.BigInteger(), nullable=False),
        sa.Column("resets_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.CheckConstraint("spent + reserved <= ceiling", name=op.f("ck_budget_limits_within_ceiling")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_limits")),
        sa.UniqueConstraint("owner", "kind", name=op.f("uq_budget_limits_owner")),
    )
    op.create_index("ix_budget_limits_resets_at", "budget_limits", ["resets_at"])
    op.create_table(
        "budget_holds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("hold", sa.String(40), nullable=False),
        sa.Column("limit_id", sa.String(40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["limit_id"],
            ["budget_limits.id"],
            name=op.f("fk_budget_holds_limit_id_budget_limits"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_holds")),
    )
    op.create_index(op.f("ix_budget_holds_hold"), "budget_holds", ["hold"])
    op.create_index(op.f("ix_budget_holds_limit_id"), "budget_holds", ["limit_id"])
    op.create_index(op.f("ix_budget_holds_expires_at"), "budget_holds", ["expires_at"])
    op.create_table(
        "budget_days",
        sa.Column("limit_id", sa.String(40), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["limit_id"],
            ["budget_limits.id"],
            name=op.f("fk_budget_days_limit_id_budget_limits"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("limit_id", "day", name=op.f("pk_budget_days")),
    )


def downgrade() -> None:
    op.drop_table("budget_days")
    op.drop_index(op.f("ix_budget_holds_expires_at"), table_name="budget_holds")
    op.drop_index(op.f("ix_budget_holds_limit_id"), table_name="budget_holds")
    op.drop_index(op.f("ix_budget_holds_hold"), table_name="budget_holds")
    op.drop_table("budget_holds")
    op.drop_index("ix_budget_limits_resets_at", table_name="budget_limits")
    op.drop_table("budget_limits")
