"""Agents' vault keys (sealed BYOK keys), API keys (keyed hashes) and files (metadata; bytes in storage).

Revision ID: 0008_agent_assets
Revises: 0007_agents
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_agent_assets"
down_revision: str | None = "0007_agents"
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
        "agent_vault_keys",
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        utc("created_at", nullable=False),
        agent_fk("agent_vault_keys"),
        sa.PrimaryKeyConstraint("agent_id", "provider", name=op.f("pk_agent_vault_keys")),
    )
    op.create_table(
        "agent_api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        utc("created_at", nullable=False),
        utc("last_used_at"),
        utc("revoked_at"),
        agent_fk("agent_api_keys"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_agent_api_keys_key_hash")),
    )
    op.create_index("ix_agent_api_keys_agent_id_created_at", "agent_api_keys", ["agent_id", "created_at"])
    op.create_table(
        "agent_files",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("agent_id", sa.String(40), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(255), nullable=False),
        utc("created_at", nullable=False),
        agent_fk("agent_files"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_files")),
    )
    op.create_index("ix_agent_files_agent_id_created_at", "agent_files", ["agent_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_agent_files_agent_id_created_at", table_name="agent_files")
    op.drop_table("agent_files")
    op.drop_index("ix_agent_api_keys_agent_id_created_at", table_name="agent_api_keys")
    op.drop_table("agent_api_keys")
    op.drop_table("agent_vault_keys")
