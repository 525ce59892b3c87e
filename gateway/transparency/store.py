"""The log's rows: locking the tree head for an append, writing the append, reading leaves and node hashes.

Functions take an `AsyncConnection` first; the caller owns the transaction. Appends are serialised by the tree
head's row lock (`SELECT ... FOR UPDATE` on Postgres; on SQLite, a first write that takes the database's one write
lock), so several processes append to one tree without gaps or duplicate indexes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import SmallInteger, Table, literal, select, text, tuple_, union_all, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable, Select

from gateway.db.log_models import TREE_HEAD_ID, LogLeaf, LogNode, LogTreeHead
from gateway.transparency.compact import CompactRange
from gateway.transparency.proof import NodeId, perfect_subtrees

LEAVES: Table = LogLeaf.__table__  # type: ignore[assignment]
NODES: Table = LogNode.__table__  # type: ignore[assignment]
HEADS: Table = LogTreeHead.__table__  # type: ignore[assignment]


class LogStoreError(RuntimeError):
    """The log's tables are missing their tree head or a node a proof needs: not migrated, or damaged."""


@dataclass(frozen=True, slots=True)
class TreeHead:
    """The latest tree: its size, its root, and the hashes of the perfect subtrees it is made of (its peaks).

    Every subtree on a proof's right edge is a run of peaks, so a proof against this tree reads only the
    perfect subtrees left of its path from the nodes table: at most log2(n) rows.
    """

    tree_size: int
    root_hash: bytes
    peaks: Mapping[NodeId, bytes]

    @classmethod
    def from_row(cls, tree_size: int, root_hash: bytes, compact_range: bytes) -> TreeHead:
        tree = CompactRange.from_bytes(tree_size, compact_range)
        ids = perfect_subtrees(0, tree_size) if tree_size else []
        return cls(tree_size, root_hash, dict(zip(ids, tree.peaks, strict=True)))


@dataclass(frozen=True, slots=True)
class StoredLeaf:
    leaf_index: int
    leaf_hash: bytes
    agent_id: str | None
    kind: str


@dataclass(frozen=True, slots=True)
class NewLeaf:
    leaf_index: int
    leaf_hash: bytes
    agent_id: str | None
    kind: str
    content: bytes | None
    created_at: datetime


async def lock_tree(connection: AsyncConnection) -> CompactRange:
    """The tree as of the latest append, locked until the transaction ends (other appends wait)."""
    head = HEADS.c
    if connection.dialect.name == "postgresql":
        query = select(head.tree_size, head.compact_range).where(head.id == TREE_HEAD_ID).with_for_update()
        row = (await connection.execute(query)).one_or_none()
    else:
        # A no-op write first: SQLite takes its write lock now, not at the first real write, where two
        # deferred transactions that both read first would deadlock.
        claim = (
            update(HEADS)
            .where(head.id == TREE_HEAD_ID)
            .values(tree_size=head.tree_size)
            .returning(head.tree_size, head.compact_range)
        )
        row = (await connection.execute(claim)).one_or_none()
    if row is None:
        raise LogStoreError("the transparency log has no tree head: run `gateway migrate`")
    return CompactRange.from_bytes(row.tree_size, row.compact_range)


# On Postgres an append's rows go in one statement of constant text, whatever the number of leaves and nodes:
# the tree head stays locked for three round trips (lock, write, commit) and the statement is prepared once.
POSTGRES_APPEND = text(
    """
    WITH appended AS (
        INSERT INTO transparency_leaves (leaf_index, leaf_hash, agent_id, kind, content, created_at)
        SELECT * FROM unnest(
            CAST(:leaf_indexes AS bigint[]), CAST(:leaf_hashes AS bytea[]), CAST(:agent_ids AS varchar[]),
            CAST(:kinds AS varchar[]), CAST(:contents AS bytea[]), CAST(:created_ats AS timestamptz[])
        )
    ), completed AS (
        INSERT INTO transparency_nodes (level, node_index, hash)
        SELECT * FROM unnest(
            CAST(:levels AS smallint[]), CAST(:node_indexes AS bigint[]), CAST(:hashes AS bytea[])
        )
    )
    UPDATE transparency_tree_heads
    SET tree_size = :tree_size, root_hash = :root_hash, compact_range = :compact_range, updated_at = :at
    WHERE id = :head_id
    """
)


async def write_append(
    connection: AsyncConnection,
    leaves: Sequence[NewLeaf],
    nodes: Sequence[tuple[NodeId, bytes]],
    *,
    tree: CompactRange,
    at: datetime,
) -> None:
    """Writes appended leaves, the perfect nodes they completed, and the new tree head (under `lock_tree`)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(
            POSTGRES_APPEND,
            {
                "leaf_indexes": [leaf.leaf_index for leaf in leaves],
                "leaf_hashes": [leaf.leaf_hash for leaf in leaves],
                "agent_ids": [leaf.agent_id for leaf in leaves],
                "kinds": [leaf.kind for leaf in leaves],
                "contents": [leaf.content for leaf in leaves],
                "created_ats": [leaf.created_at for leaf in leaves],
                "levels": [node.level for node, _ in nodes],
                "node_indexes": [node.index for node, _ in nodes],
                "hashes": [h for _, h in nodes],
                "head_id": TREE_HEAD_ID,
                "tree_size": tree.size,
                "root_hash": tree.root(),
                "compact_range": tree.to_bytes(),
                "at": at,
            },
        )
        return
    await connection.execute(
        LEAVES.insert(),
        [
            {
                "leaf_index": leaf.leaf_index,
                "leaf_hash": leaf.leaf_hash,
                "agent_id": leaf.agent_id,
                "kind": leaf.kind,
                "content": leaf.content,
                "created_at": leaf.created_at,
            }
            for leaf in leaves
        ],
    )
    if nodes:
        await connection.execute(
            NODES.insert(), [{"level": n.level, "node_index": n.index, "hash": h} for n, h in nodes]
        )
    await connection.execute(
        update(HEADS)
        .where(HEADS.c.id == TREE_HEAD_ID)
        .values(tree_size=tree.size, root_hash=tree.root(), compact_range=tree.to_bytes(), updated_at=at)
    )


async def read_tree_head(connection: AsyncConnection) -> TreeHead:
    """The latest tree head."""
    head = HEADS.c
    query = select(head.tree_size, head.root_hash, head.compact_range).where(head.id == TREE_HEAD_ID)
    row = (await connection.execute(query)).one_or_none()
    if row is None:
        raise LogStoreError("the transparency log has no tree head: run `gateway migrate`")
    return TreeHead.from_row(row.tree_size, row.root_hash, row.compact_range)


async def find_leaf(connection: AsyncConnection, leaf_hash: bytes) -> tuple[StoredLeaf, TreeHead] | None:
    """The first leaf with this hash (an event appended twice has one hash and two indexes) and the latest tree
    head, read in one statement (so from one snapshot, in which the head includes the leaf); None if unknown."""
    leaf, head = LEAVES.c, HEADS.c
    query = (
        select(
            leaf.leaf_index,
            leaf.leaf_hash,
            leaf.agent_id,
            leaf.kind,
            head.tree_size,
            head.root_hash,
            head.compact_range,
        )
        .select_from(LEAVES.join(HEADS, head.id == TREE_HEAD_ID))
        .where(leaf.leaf_hash == leaf_hash)
        .order_by(leaf.leaf_index)
        .limit(1)
    )
    row = (await connection.execute(query)).one_or_none()
    if row is None:
        return None
    stored = StoredLeaf(row.leaf_index, row.leaf_hash, row.agent_id, row.kind)
    return stored, TreeHead.from_row(row.tree_size, row.root_hash, row.compact_range)


async def read_hashes(connection: AsyncConnection, nodes: Collection[NodeId]) -> dict[NodeId, bytes]:
    """The hashes of `nodes` in one query by primary key: level 0 from the leaves, the others from the nodes.

    Raises LogStoreError when one is missing.
    """
    leaf_indexes = [n.index for n in nodes if n.level == 0]
    inner = [(n.level, n.index) for n in nodes if n.level > 0]
    queries: list[Select[tuple[int, int, bytes]]] = []
    if inner:
        node = NODES.c
        queries.append(
            select(node.level, node.node_index, node.hash).where(
                tuple_(node.level, node.node_index).in_(inner)
            )
        )
    if leaf_indexes:
        leaf = LEAVES.c
        queries.append(
            select(literal(0, SmallInteger), leaf.leaf_index, leaf.leaf_hash).where(
                leaf.leaf_index.in_(leaf_indexes)
            )
        )
    if not queries:
        return {}
    statement: Executable = queries[0] if len(queries) == 1 else union_all(*queries)
    rows = (await connection.execute(statement)).all()
    found = {NodeId(level, index): h for level, index, h in rows}
    if len(found) != len(nodes):
        raise LogStoreError(f"the transparency log lacks {len(nodes) - len(found)} node(s) it should hold")
    return found


async def erase_content(connection: AsyncConnection, *, agent_id: str) -> int:
    """Clears the stored content of an agent's leaves (their hashes stay, and stay provable); how many."""
    statement = (
        update(LEAVES)
        .where(LEAVES.c.agent_id == agent_id, LEAVES.c.content.is_not(None))
        .values(content=None)
    )
    result = await connection.execute(statement)
    return int(result.rowcount)
