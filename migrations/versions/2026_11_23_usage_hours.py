"""Hourly usage aggregates and latency histograms, so that long windows are summed without the raw events.

Revision ID: 0005_usage_hours
Revises: 0004_usage_events
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_usage_hours"
down_revision: str | None = "0004_usage_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = ("dataset", "hour", "request_type", "provider")


def key_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("dataset", sa.String(100), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_type", sa.String(20), nullable=False),
        sa.Column("provider", sa.String(40), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "usage_hours",
        *key_columns(),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in ("requests", "errors", "input_tokens", "output_tokens", "total_tokens", "ocr_pages")
        ),
        *(
            sa.Column(name, sa.Float(), nullable=False)
            for name in ("input_cost_usd", "output_cost_usd", "ocr_cost_usd", "latency_sum_ms")
        ),
        sa.PrimaryKeyConstraint(*KEY, "model", "path", name=op.f("pk_usage_hours")),
    )
    op.create_table(
        "usage_hour_latencies",
        *key_columns(),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*KEY, "bucket", name=op.f("pk_usage_hour_latencies")),
    )


def downgrade() -> None:
    op.drop_table("usage_hour_latencies")
    op.drop_table("usage_hours")
