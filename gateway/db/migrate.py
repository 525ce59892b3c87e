"""Running the Alembic migrations from code (`gateway migrate`, `gateway serve` on SQLite, the tests), one run at a
time per database, and telling whether a database is at this version's schema."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
from collections.abc import AsyncIterator
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.engine import create_engine

HEAD = "head"
BASE = "base"
# The advisory lock every `gateway migrate` on one Postgres database takes first (an arbitrary 64-bit key, the
# same in every version): a second run waits for the first to commit, then finds nothing left to do.
MIGRATION_LOCK_KEY = 0x67_61_74_65_77_61_79  # "gateway"
# SQLite has no advisory lock, and its busy timeout is shorter than a migration: the runs queue on a file beside it.
SQLITE_LOCK_SUFFIX = ".migrate-lock"


def alembic_config() -> Config:
    """Alembic's configuration, pointing at the migration scripts shipped inside the package."""
    config = Config()
    config.set_main_option("script_location", str(files("gateway.migrations")))
    return config


@functools.cache
def head_revision() -> str | None:
    """The revision this version of the gateway expects (read once from the scripts shipped with it)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(connection: AsyncConnection) -> str | None:
    """The revision the database on `connection` is at; None when it was never migrated."""
    return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def revision_of(database_url: str) -> str | None:
    """`current_revision` of `database_url`, on a connection of its own."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await current_revision(connection)
    finally:
        await engine.dispose()


async def upgrade(database_url: str, revision: str = HEAD) -> None:
    """Apply the migrations up to `revision` on `database_url`, after any other run on it has finished."""
    await _run(database_url, "upgrade", revision)


async def downgrade(database_url: str, revision: str = BASE) -> None:
    """Revert the migrations down to `revision` on `database_url`, after any other run on it has finished."""
    await _run(database_url, "downgrade", revision)


async def _run(database_url: str, direction: str, revision: str) -> None:
    async with _sqlite_file_lock(database_url):
        # No statement timeout: DDL on a large table, and the wait for another run's lock, may rightly take long.
        engine = create_engine(database_url, statement_timeouts=False)
        try:
            async with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    # Held until this transaction, which the whole run shares, commits or rolls back.
                    await connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                await connection.run_sync(_run_on_connection, direction, revision)
        finally:
            await engine.dispose()


@contextlib.asynccontextmanager
async def _sqlite_file_lock(database_url: str) -> AsyncIterator[None]:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    descriptor = await asyncio.to_thread(_lock_file, url.database + SQLITE_LOCK_SUFFIX)
    try:
        yield
    finally:
        os.close(descriptor)  # releases the lock, as the kernel does if this process dies


def _lock_file(path: str) -> int:
    """A descriptor of `path` (created if need be) holding its exclusive lock; blocks until it is free."""
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def _run_on_connection(connection: Connection, direction: str, revision: str) -> None:
    # Alembic's "connection sharing" recipe: env.py uses this connection instead of making an engine.
    config = alembic_config()
    config.attributes["connection"] = connection
    getattr(command, direction)(config, revision)
