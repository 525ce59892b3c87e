"""The transparency log's leaves and complete-subtree hashes.

Revision ID: 0006_transparency_log
Revises: 0005_usage_hours
Create Date: 2026-11-23
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006_transparency_log"
down_revision: str | None = "0005_usage_hours"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "transparency_leaves",
        sa.Column("leaf_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
        sa.Column("agent_id", sa.String(40), nullable=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("leaf_index", name=op.f("pk_transparency_leaves")),
    )
    op.create_index("ix_transparency_leaves_leaf_hash", "transparency_leaves", ["leaf_hash"])
    op.create_index("ix_transparency_leaves_agent_id", "transparency_leaves", ["agent_id"])
    op.create_table(
        "transparency_nodes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("node_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("level", "node_index", name=op.f("pk_transparency_nodes")),
    )
    heads = op.create_table(
        "transparency_tree_heads",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(), nullable=False),
        sa.Column("compact_range", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transparency_tree_heads")),
    )
    # The empty tree: every append locks and updates this one row.
    op.bulk_insert(
        heads,
        [
            {
                "id": 1,
                "tree_size": 0,
                "root_hash": hashlib.sha256(b"").digest(),
                "compact_range": b"",
                "updated_at": datetime.now(UTC),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("transparency_tree_heads")
    op.drop_table("transparency_nodes")
    op.drop_index("ix_transparency_leaves_agent_id", table_name="transparency_leaves")
    op.drop_index("ix_transparency_leaves_leaf_hash", table_name="transparency_leaves")
    op.drop_table("transparency_leaves")
