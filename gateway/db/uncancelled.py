"""Database work that a cancel does not cut in the middle: how the background writers stop.

A statement cancelled while it runs leaves its connection inside a transaction: the driver's thread (aiosqlite) or
the server (Postgres) goes on with it, and the rollback SQLAlchemy then schedules may never run once the event
loop ends. On SQLite that connection holds the database's write lock until it is garbage-collected, seconds
later: every other writer of the file (another process, `gateway users`, the next test) is refused meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def finish_uncancelled(work: Awaitable[T], *, grace: float) -> T:
    """`work`'s result; a cancel of the caller meanwhile waits up to `grace` seconds for `work` to end, then goes
    on, `work` left to finish alone (a partitioned database answers nothing: the caller must not wait for it)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task}, timeout=grace)
        left_to_finish(task)
        raise


def left_to_finish(task: asyncio.Future[T]) -> None:
    """Takes `task`'s error when it ends, so that no one's awaiting it is not printed as a "Task exception was
    never retrieved" traceback at exit (whoever left it has reported its failure already)."""
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
