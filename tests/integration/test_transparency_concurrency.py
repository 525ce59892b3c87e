"""Two processes append to one log on one Postgres at once: one tree, every index once, no gaps, and the root is the
root of the leaves in index order."""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import time
from multiprocessing.synchronize import Barrier

from sqlalchemy import func, select

from gateway.db.engine import Database
from gateway.db.log_models import LogLeaf
from gateway.db.migrate import upgrade
from gateway.transparency.compact import root_of
from gateway.transparency.hashing import leaf_hash
from gateway.transparency.log import TransparencyLog
from gateway.transparency.signer import NoteSigner
from tests.conftest import PostgresServer

PROCESSES = 2
PER_PROCESS = 5000
# One process appends one leaf at a time (a transaction each); the other for eight chats at once (its appends
# that meet at the lock share transactions).
TASKS = (1, 8)
# A guard against a hang, not a speed bound: about 19 s on an idle 2-core machine (BENCHMARKS.md), several
# times that beside the suite's busiest files.
APPEND_SECONDS = 600


def append_from_a_process(database_url: str, worker: int, start: Barrier) -> None:
    """A second gateway process's appends: its own engine, its own log object, the same database."""

    async def run() -> None:
        database = Database(database_url)
        database.open()
        log = TransparencyLog(database, NoteSigner(bytes(32), name="test/log"))

        async def task(number: int) -> None:
            for seq in range(PER_PROCESS // TASKS[worker]):
                await log.append(
                    agent_id=f"ocs_{worker}",
                    kind="test",
                    event={"worker": worker, "task": number, "seq": seq},
                )

        try:
            await log.checkpoint()  # connected before the start line
            start.wait()
            await asyncio.gather(*(task(number) for number in range(TASKS[worker])))
        finally:
            await database.close()

    asyncio.run(run())


def test_two_processes_append_10000_leaves_into_one_tree(postgres_server: PostgresServer) -> None:
    database_url = postgres_server.create_database()
    asyncio.run(upgrade(database_url))
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES + 1)
    processes = [
        context.Process(target=append_from_a_process, args=(database_url, worker, start))
        for worker in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    start.wait(timeout=60)
    began = time.monotonic()
    try:
        for process in processes:
            process.join(timeout=max(0.0, began + APPEND_SECONDS - time.monotonic()))
    finally:
        for process in processes:  # never left appending into the other tests' Postgres
            if process.is_alive():
                process.kill()
                process.join()
    elapsed = time.monotonic() - began
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    print(f"{PROCESSES * PER_PROCESS} appends from {PROCESSES} processes in {elapsed:.1f} s")

    leaves, checkpoint = asyncio.run(read_log(database_url))
    assert [index for index, _, _ in leaves] == list(range(PROCESSES * PER_PROCESS))
    assert all(hashed == leaf_hash(content) for _, hashed, content in leaves)
    assert checkpoint.tree_size == PROCESSES * PER_PROCESS
    assert checkpoint.root_hash == root_of(hashed for _, hashed, _ in leaves)
    # Each task's appends landed in the order it made them.
    seen: dict[tuple[int, int], int] = {}
    for _, _, content in leaves:
        made = json.loads(content)
        task = (made["worker"], made["task"])
        assert seen.get(task, -1) == made["seq"] - 1
        seen[task] = made["seq"]
    assert len(seen) == sum(TASKS)
    # And they did append at once: each process's leaves are interleaved with the other's.
    workers = [json.loads(content)["worker"] for _, _, content in leaves]
    assert sum(1 for a, b in itertools.pairwise(workers) if a != b) > 100


async def read_log(database_url: str) -> tuple[list[tuple[int, bytes, bytes]], object]:
    database = Database(database_url)
    database.open()
    try:
        async with database.engine.connect() as connection:
            query = select(LogLeaf.leaf_index, LogLeaf.leaf_hash, LogLeaf.content).order_by(
                LogLeaf.leaf_index
            )
            rows = [
                (index, hashed, content) for index, hashed, content in (await connection.execute(query)).all()
            ]
            assert (await connection.execute(select(func.count()).select_from(LogLeaf))).scalar() == len(rows)
        checkpoint = await TransparencyLog(database, NoteSigner(bytes(32), name="test/log")).checkpoint()
        return rows, checkpoint
    finally:
        await database.close()
