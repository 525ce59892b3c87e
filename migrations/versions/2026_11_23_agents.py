"""Agents, their sessions' messages and checkpoints.

Revision ID: 0007_agents
Revises: 0006_transparency_log
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_agents"
down_revision: str | None = "0006_transparency_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def utc(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def agent_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["agent_id"], ["agents.id"], name=op.f(f"fk_{table}_agent_id_agents"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("agent_name", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_provider", sa.String(40), nullable=False),
        sa.Column("governance_mode", sa.String(20), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("tier", sa.String(40), nullable=False),
        sa.Column("session_id", sa.String(40), nullable=False),
        utc("created_at", nullable=False),
        utc("updated_at", nullable=False),
        utc("last_started_at"),
        utc("last_stopped_at"),
        utc("turn_until"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_agents_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
    )
    op.create_index("ix_agents_user_id_created_at", "agents", ["user_id", "created_at"])
    op.create_table(
        "agent_messages",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        utc("created_at", nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("governance_decision", sa.String(10), nullable=True),
        sa.Column("leaf_hash", sa.String(80), nullable=True),
        agent_fk("agent_messages"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_messages")),
    )
    op.create_index(
        "ix_agent_messages_agent_id_session_id_created_at",
        "agent_messages",
        ["agent_id", "session_id", "created_at"],
    )
    op.create_index("ix_agent_messages_agent_id_created_at", "agent_messages", ["agent_id", "created_at"])
    op.create_index(op.f("ix_agent_messages_leaf_hash"), "agent_messages", ["leaf_hash"])
    op.create_table(
        "agent_checkpoints",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("session_id", sa.String(40), nullable=False),
        utc("created_at", nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("last_leaf_hash", sa.String(80), nullable=True),
        sa.Column("tree_size", sa.Integer(), nullable=False),
        agent_fk("agent_checkpoints"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_checkpoints")),
    )
    op.create_index(
        "ix_agent_checkpoints_agent_id_created_at", "agent_checkpoints", ["agent_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_agent_checkpoints_agent_id_created_at", table_name="agent_checkpoints")
    op.drop_table("agent_checkpoints")
    op.drop_index(op.f("ix_agent_messages_leaf_hash"), table_name="agent_messages")
    op.drop_index("ix_agent_messages_agent_id_created_at", table_name="agent_messages")
    op.drop_index("ix_agent_messages_agent_id_session_id_created_at", table_name="agent_messages")
    op.drop_table("agent_messages")
    op.drop_index("ix_agents_user_id_created_at", table_name="agents")
    op.drop_table("agents")
