"""Agents, their sessions' messages and checkpoints.

Revision ID: 0007_agents
Revises: 0006_transparency_log
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0007_agents"
down_revision: str | None = "0006_transparency_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
