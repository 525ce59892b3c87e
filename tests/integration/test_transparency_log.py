"""The transparency log on a real database (SQLite and Postgres): appends, proofs from the stored nodes checked
against pymerkle, checkpoints, consistency, erased content, and what a proof costs in queries and rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymerkle import InmemoryTree
from sqlalchemy import event, select

from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.db.log_models import LogLeaf, LogNode
from gateway.db.migrate import upgrade
from gateway.errors import InvalidRequestError
from gateway.transparency import store
from gateway.transparency.checkpoint import parse_checkpoint
from gateway.transparency.compact import root_of
from gateway.transparency.hashing import leaf_hash
from gateway.transparency.log import TransparencyLog, canonical_json, hash_text, parse_hash_text
from gateway.transparency.proof import NodeId, inclusion_ranges, nodes_needed, perfect_subtrees, range_hash
from gateway.transparency.signer import NoteSigner, NoteVerifier
from gateway.transparency.verify import verify_consistency, verify_inclusion
from tests.conftest import PostgresServer

ORIGIN = "test.example/log"
SEED = bytes(range(32))


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_database_url(
    request: pytest.FixtureRequest, tmp_path: Any, postgres_server: PostgresServer
) -> Iterator[str]:
    """A database of its own for each test (an empty log), migrated."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"
    else:
        url = postgres_server.create_database()
    asyncio.run(upgrade(url))
    yield url


@pytest.fixture
async def log(fresh_database_url: str) -> AsyncIterator[TransparencyLog]:
    database = Database(fresh_database_url)
    database.open()
    try:
        yield TransparencyLog(database, NoteSigner(SEED, name=ORIGIN))
    finally:
        await database.close()


def event_number(i: int) -> dict[str, Any]:
    return {"type": "test", "n": i, "text": f"événement {i}"}


async def stored_nodes(log: TransparencyLog) -> dict[NodeId, bytes]:
    """Every hash the log stored (for a test's check of every size; the log itself never reads them all)."""
    async with log.database.engine.connect() as connection:
        leaves = (await connection.execute(select(LogLeaf.leaf_index, LogLeaf.leaf_hash))).all()
        nodes = (await connection.execute(select(LogNode.level, LogNode.node_index, LogNode.hash))).all()
    return {NodeId(0, i): h for i, h in leaves} | {NodeId(level, i): h for level, i, h in nodes}


async def test_every_stored_proof_of_300_appends_matches_pymerkle(log: TransparencyLog) -> None:
    reference = InmemoryTree(algorithm="sha256")
    for i in range(300):
        appended = await log.append(agent_id="ocs_a", kind="test", event=event_number(i))
        reference.append_entry(canonical_json(event_number(i)))
        assert (appended.index, appended.tree_size) == (i, i + 1)
        assert appended.leaf_hash == leaf_hash(canonical_json(event_number(i)))

    nodes = await stored_nodes(log)
    assert len(nodes) == 300 + (300 - (300).bit_count())  # the leaves, and every perfect subtree above them
    for size in range(1, 301):
        root = range_hash(0, size, nodes)
        assert root == reference.get_root(size)
        for index in range(size):
            path = [range_hash(begin, end, nodes) for begin, end in inclusion_ranges(index, size)]
            assert reference.prove_inclusion(index + 1, size).path[1:] == path
            verify_inclusion(index, size, nodes[NodeId(0, index)], path, root)

    for index in (0, 1, 150, 255, 256, 298, 299):
        proof = await log.proof_for(leaf_hash(canonical_json(event_number(index))))
        assert proof is not None and proof.is_verified()
        assert (proof.leaf_index, proof.tree_size, proof.agent_id, proof.kind) == (
            index,
            300,
            "ocs_a",
            "test",
        )
        assert list(proof.audit_path) == reference.prove_inclusion(index + 1, 300).path[1:]
        assert proof.root_hash == reference.get_root(300)


async def test_consistency_proofs_up_to_64_leaves(log: TransparencyLog) -> None:
    hashes = [
        (await log.append(agent_id=None, kind="test", event=event_number(i))).leaf_hash for i in range(64)
    ]
    for second in range(1, 65):  # every pair is checked on the pure functions (unit tests); here, a spread
        for first in sorted({1, 2, 3, second // 2, second - 1, second} & set(range(1, second + 1))):
            proof = await log.consistency(first, second)
            assert proof.first_root_hash == root_of(hashes[:first])
            assert proof.second_root_hash == root_of(hashes[:second])
            verify_consistency(first, second, proof.first_root_hash, proof.second_root_hash, proof.path)
    for first, second in ((0, 5), (6, 5), (1, 65), (-1, 3)):
        with pytest.raises(InvalidRequestError):
            await log.consistency(first, second)


async def test_the_checkpoint_signs_the_latest_tree(log: TransparencyLog) -> None:
    empty = await log.checkpoint()
    assert empty.tree_size == 0 and empty.root_hash == root_of([])
    hashes = [
        (await log.append(agent_id=None, kind="test", event=event_number(i))).leaf_hash for i in range(5)
    ]

    signed = await log.checkpoint()
    text, name = NoteVerifier.from_text(log.public_key()["verifier_key"]).open(signed.text)
    checkpoint = parse_checkpoint(text)
    assert (name, checkpoint.origin, checkpoint.tree_size) == (ORIGIN, ORIGIN, 5)
    assert checkpoint.root_hash == signed.root_hash == root_of(hashes)
    proof = await log.proof_for(hashes[2])
    assert proof is not None and proof.checkpoint.text == signed.text


async def test_erased_content_leaves_the_leaf_provable(log: TransparencyLog) -> None:
    mine = await log.append(agent_id="ocs_gone", kind="user_message", event={"content_sha256": "ab" * 32})
    await log.append(agent_id="ocs_other", kind="user_message", event={"n": 1})

    assert await log.erase_content(agent_id="ocs_gone") == 1
    async with log.database.engine.connect() as connection:
        rows = (await connection.execute(select(LogLeaf.agent_id, LogLeaf.content))).all()
    assert dict(rows) == {"ocs_gone": None, "ocs_other": b'{"n":1}'}
    proof = await log.proof_for(mine.leaf_hash)
    assert proof is not None and proof.is_verified() and proof.agent_id == "ocs_gone"


async def test_unknown_and_repeated_hashes(log: TransparencyLog) -> None:
    assert await log.proof_for(bytes(32)) is None
    first = await log.append(agent_id=None, kind="test", event={"same": True})
    again = await log.append(agent_id=None, kind="test", event={"same": True})
    assert first.leaf_hash == again.leaf_hash and (first.index, again.index) == (0, 1)
    proof = await log.proof_for(first.leaf_hash)
    assert proof is not None and proof.leaf_index == 0 and proof.tree_size == 2


async def test_concurrent_appends_in_one_process_get_every_index_once(log: TransparencyLog) -> None:
    appended = await asyncio.gather(
        *(log.append(agent_id=None, kind="test", event=event_number(i)) for i in range(200))
    )
    assert sorted(leaf.index for leaf in appended) == list(range(200))
    assert all(leaf.tree_size == leaf.index + 1 for leaf in appended)
    by_index = sorted(appended, key=lambda leaf: leaf.index)
    assert (await log.checkpoint()).root_hash == root_of([leaf.leaf_hash for leaf in by_index])


async def test_a_proof_is_two_queries_and_reads_log_n_nodes(log: TransparencyLog) -> None:
    """Seeds trees of growing size in bulk, then counts what one proof costs: always two statements (the leaf with
    the tree head, then the nodes by primary key, each checked present), the nodes numbering log2(n): the perfect
    subtrees beside the leaf's path; those on the tree's right edge come with the head."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(log.database.engine.sync_engine, "before_cursor_execute", count)
    size, per_size = 0, {}
    for target in (16, 256, 4096, 65536):
        while size < target:  # 4,096 leaves a statement at most: far inside the 5 s statement timeout
            end = min(target, size + 4096)
            async with log.database.engine.begin() as connection:
                tree = await store.lock_tree(connection)
                leaves, nodes = [], []
                for i in range(size, end):
                    hashed = leaf_hash(b"%d" % i)
                    leaves.append(store.NewLeaf(i, hashed, None, "bulk", None, utcnow()))
                    nodes.extend(tree.append(hashed))
                await store.write_append(connection, leaves, nodes, tree=tree, at=utcnow())
            size = end
        statements.clear()
        proof = await log.proof_for(leaf_hash(b"%d" % (target // 3)))
        assert proof is not None and proof.is_verified()
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        rows = len(
            nodes_needed(inclusion_ranges(proof.leaf_index, target)) - set(perfect_subtrees(0, target))
        )
        per_size[target] = (len(selects), rows)
    event.remove(log.database.engine.sync_engine, "before_cursor_execute", count)

    assert {queries for queries, _ in per_size.values()} == {2}
    assert [rows for _, rows in per_size.values()] == [4, 8, 12, 16]  # log2(n): 16 leaves, 4 rows


def test_hashes_are_written_and_read_as_sha256_hex() -> None:
    h = bytes(range(32))
    assert hash_text(h) == "sha256:" + h.hex()
    assert parse_hash_text(hash_text(h).upper().replace("SHA256", "sha256")) == h
    for bad in ("", "sha256:", "sha256:" + "g" * 64, "md5:" + "0" * 64, h.hex(), "sha256:" + "0" * 63):
        with pytest.raises(InvalidRequestError):
            parse_hash_text(bad)
