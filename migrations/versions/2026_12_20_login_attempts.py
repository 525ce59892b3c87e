"""Login throttling in the database: the attempts of each (account, address) pair and each address, shared by
every instance, reserved by one conditional UPSERT.

Revision ID: 0010_login_attempts
Revises: 0009_usage_event_errors
Create Date: 2026-12-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_login_attempts"
down_revision: str | None = "0009_usage_event_errors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_attempts",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("lock_seconds", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.Float(), nullable=False),
        sa.Column("last_attempt", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_attempts")),
    )
    op.create_index(op.f("ix_login_attempts_last_attempt"), "login_attempts", ["last_attempt"])


def downgrade() -> None:
    op.drop_index(op.f("ix_login_attempts_last_attempt"), table_name="login_attempts")
    op.drop_table("login_attempts")
