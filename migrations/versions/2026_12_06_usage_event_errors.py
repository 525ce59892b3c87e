"""Usage events: the gateway's error code when it failed the request (`upstream_incomplete` for an answer that
broke off after it started), beside the status.

Revision ID: 0009_usage_event_errors
Revises: 0008_agent_assets
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_usage_event_errors"
down_revision: str | None = "0008_agent_assets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, without a default: both databases add it in place, without rewriting the table's rows.
    with op.batch_alter_table("usage_events") as batch:
        batch.add_column(sa.Column("error", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("error")
