"""Appending leaves with group commit: appends that arrive while one is being written wait for the tree head's
lock, then go in together, under one lock and one commit, in the order they arrived."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.transparency import store
from gateway.transparency.proof import NodeId

MAX_BATCH = 256


@dataclass(frozen=True)
class AppendedLeaf:
    """Where an appended event landed."""

    index: int
    leaf_hash: bytes  # 32 bytes
    tree_size: int  # the size of the tree right after this append: index + 1


@dataclass(eq=False)
class _Waiting:
    leaf_hash: bytes
    agent_id: str | None
    kind: str
    content: bytes
    done: asyncio.Future[AppendedLeaf] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Appender:
    """This process's appends to the log. Processes serialise on the tree head's row lock; within a process, the
    caller that holds the lock writes every append waiting at that moment (up to `max_batch`)."""

    def __init__(self, database: Database, *, max_batch: int = MAX_BATCH) -> None:
        self.database = database
        self.max_batch = max_batch
        self._lock = asyncio.Lock()
        self._waiting: list[_Waiting] = []

    async def append(
        self, leaf_hash: bytes, *, agent_id: str | None, kind: str, content: bytes
    ) -> AppendedLeaf:
        """Appends one leaf; returns once it is committed. Raises what the database raised if its batch failed."""
        mine = _Waiting(leaf_hash, agent_id, kind, content)
        self._waiting.append(mine)
        try:
            while not mine.done.done():
                async with self._lock:
                    if not mine.done.done():
                        await self._write_waiting(mine)
        except BaseException:
            if mine in self._waiting:  # not written, and not to be written by anyone else after we gave up
                self._waiting.remove(mine)
            raise
        return mine.done.result()

    async def _write_waiting(self, mine: _Waiting) -> None:
        batch = self._waiting[: self.max_batch]
        del self._waiting[: len(batch)]
        try:
            appended = await self._write(batch)
        except BaseException:
            # Nothing was committed: the others go back to the front, written by whichever of them is next.
            self._waiting[:0] = [waiting for waiting in batch if waiting is not mine]
            raise
        for waiting, leaf in zip(batch, appended, strict=True):
            waiting.done.set_result(leaf)

    async def _write(self, batch: list[_Waiting]) -> list[AppendedLeaf]:
        async with self.database.engine.begin() as connection:
            tree = await store.lock_tree(connection)
            now = utcnow()
            leaves: list[store.NewLeaf] = []
            nodes: list[tuple[NodeId, bytes]] = []
            appended: list[AppendedLeaf] = []
            for waiting in batch:
                index = tree.size
                nodes.extend(tree.append(waiting.leaf_hash))
                leaves.append(
                    store.NewLeaf(
                        index, waiting.leaf_hash, waiting.agent_id, waiting.kind, waiting.content, now
                    )
                )
                appended.append(AppendedLeaf(index, waiting.leaf_hash, tree.size))
            await store.write_append(connection, leaves, nodes, tree=tree, at=now)
        return appended
