"""Revocation events: how workers sharing one SQLite file tell each other of a revocation.

Revision ID: 0003_revocation_events
Revises: 0002_identity
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_revocation_events"
down_revision: str | None = "0002_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revocation_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocation_events")),
    )
    op.create_index(op.f("ix_revocation_events_created_at"), "revocation_events", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_revocation_events_created_at"), table_name="revocation_events")
    op.drop_table("revocation_events")
