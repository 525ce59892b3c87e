"""The transparency log's leaves and complete-subtree hashes.

Revision ID: 0006_transparency_log
Revises: 0005_usage_hours
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0006_transparency_log"
down_revision: str | None = "0005_usage_hours"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
