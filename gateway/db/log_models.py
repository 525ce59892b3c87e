"""The transparency log's tables: its leaves, the hashes of its complete subtrees, and its one tree head."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, LargeBinary, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, UtcDateTime, utcnow

__all__ = ["LogLeaf", "LogNode", "LogTreeHead"]

TREE_HEAD_ID = 1


class LogLeaf(Base):
    """One appended event. `content` (the leaf bytes) may be erased later; `leaf_hash` keeps it provable."""

    __tablename__ = "transparency_leaves"

    leaf_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary, index=True)
    agent_id: Mapped[str | None] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class LogNode(Base):
    """The hash of a complete subtree of level 1 or more: 2**level leaves from `node_index * 2**level`.

    Written once, when its last leaf is appended; level 0 is the leaf hash itself, kept with the leaf.
    """

    __tablename__ = "transparency_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    node_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class LogTreeHead(Base):
    """The latest tree head (a single row, locked by every append): its size, its root, and the hashes of the
    perfect subtrees that make up the tree (its compact range), so that an append reads nothing else."""

    __tablename__ = "transparency_tree_heads"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary)
    compact_range: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
