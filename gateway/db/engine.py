"""The async engine and session factory: every Postgres call bounded in time, SQLite tuned for a server's
concurrent use."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from gateway.settings import Settings

logger = logging.getLogger("gateway.db")

SQLITE_BUSY_TIMEOUT_MS = 5000
# A network that drops packets sends no reset: without bounds, a connect or a query waits for TCP to give up
# (minutes, or never for an idle socket), and a partition looks like a hang instead of an outage. Loopback or a
# LAN answers a connect in milliseconds and the gateway's statements in tens of them, so a few seconds each
# tells a partition from a slow moment.
CONNECT_TIMEOUT_SECONDS = 3.0  # TCP connect and Postgres' start-up exchange (asyncpg's `timeout`)
# Per statement, enforced by the server (`statement_timeout`), so a slow query on a reachable server ends in a
# clean error on a connection that stays usable; lock waits count too (a transparency append queued behind others).
STATEMENT_TIMEOUT_SECONDS = 5.0
# The client's own bound per statement (asyncpg's `command_timeout`), a second later than the server's: it fires
# only when the server's answer cannot arrive, i.e. when the network is gone, and the connection is then dropped.
NETWORK_SILENCE_SECONDS = STATEMENT_TIMEOUT_SECONDS + 1.0
POOL_TIMEOUT_SECONDS = (
    5.0  # waiting for a pooled connection, when every one is busy (SQLAlchemy's default: 30)
)
# A client cut off inside a transaction holds its row locks (the transparency tree head) until the server notices;
# the server ends such a session after this long instead of after TCP's keepalive (hours by default).
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000
# How long `Database.close` waits for the pool's connections to say goodbye (a partitioned one never does).
CLOSE_TIMEOUT_SECONDS = 1.0
# The data directory and the embedded database hold every key and credential hash: the owner's alone, whatever
# the umask. SQLite creates its -wal and -shm files with the database file's permissions.
PRIVATE_FOLDER_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def create_engine(
    database_url: str, *, statement_timeouts: bool = True, pre_ping: bool = True
) -> AsyncEngine:
    """An engine for `database_url` (already normalised by the settings to an async driver).

    On Postgres, a connect fails after `CONNECT_TIMEOUT_SECONDS` and a statement after `STATEMENT_TIMEOUT_SECONDS`
    (a `TimeoutError`, an `OSError`, when the network is silent; SQLAlchemy's `OperationalError` when the server
    cancels it); a connection that timed out is dropped, never handed out again. `statement_timeouts=False` is
    for the migrations, whose DDL and lock wait may rightly take long; their connect stays bounded. `pre_ping=False`
    spares a checkout its ping (a round trip) where a statement that fails on a dead connection may simply fail.

    A failed statement's error names the statement but not its parameters (`hide_parameters`): they are what
    users sent (emails, names, hashes of tokens), and the error's text reaches the log with its traceback."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        server_settings = {
            # asyncpg prepares every statement; after five runs Postgres may switch to a generic plan, blind to
            # the window's bounds, which made the usage summaries several times slower. A custom one costs ~1 ms.
            "plan_cache_mode": "force_custom_plan",
            "statement_timeout": str(int(STATEMENT_TIMEOUT_SECONDS * 1000) if statement_timeouts else 0),
            "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS),
        }
        engine = create_async_engine(
            url,
            hide_parameters=True,
            pool_pre_ping=pre_ping,
            pool_timeout=POOL_TIMEOUT_SECONDS,
            connect_args={
                "server_settings": server_settings,
                "timeout": CONNECT_TIMEOUT_SECONDS,
                "command_timeout": NETWORK_SILENCE_SECONDS if statement_timeouts else None,
            },
        )
        event.listen(engine.sync_engine, "handle_error", _drop_timed_out_connection)
        return engine
    engine = create_async_engine(url, hide_parameters=True)
    event.listen(engine.sync_engine, "connect", _tune_sqlite)
    return engine


def _drop_timed_out_connection(context: ExceptionContext) -> None:
    # asyncpg's statement timeout is a bare TimeoutError, which SQLAlchemy does not take for a disconnect: the
    # connection would go back to the pool with a cancellation pending on a network that is gone. As a
    # disconnect it is closed, and the pool's older connections (most likely as dead) are replaced on checkout.
    if isinstance(context.original_exception, TimeoutError):
        context.is_disconnect = True


def _tune_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "foreign_keys=ON",
        f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "synchronous=NORMAL",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (no lazy reload on the event loop)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory (and the SQLite file's folder) before anything writes there, the owner's alone
    (0700), and the SQLite file 0600 before SQLite would create it with the umask's permissions. What exists
    already is left as it is (a DATA_DIR of `.` or a shared folder is not ours to narrow)."""
    make_private_folder(settings.data_dir)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        database = Path(url.database)
        make_private_folder(database.parent)
        try:
            descriptor = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            return
        try:
            os.fchmod(descriptor, PRIVATE_FILE_MODE)  # the umask may have taken bits the owner needs
        finally:
            os.close(descriptor)


def make_private_folder(folder: Path) -> None:
    """`folder` created 0700 whatever the umask, and so is each missing parent (`mkdir(parents=True)` gives those
    the umask's mode: world-writable under 000, and anyone could swap the folder below); left as it is when it
    exists."""
    if folder.is_dir():
        return
    make_private_folder(folder.parent)
    try:
        folder.mkdir(mode=PRIVATE_FOLDER_MODE)
    except FileExistsError:
        return  # another worker made it
    os.chmod(folder, PRIVATE_FOLDER_MODE)


class Database:
    """The app's database: made in the app factory, connected in the lifespan, shared by whoever needs it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the database is not open (outside the lifespan?)")
        return self._engine

    @property
    def is_postgres(self) -> bool:
        return make_url(self.url).get_backend_name() == "postgresql"

    def session(self) -> AsyncSession:
        """A new session; use it as `async with database.session() as session, session.begin(): ...`."""
        if self._sessions is None:
            raise RuntimeError("the database is not open (outside the lifespan?)")
        return self._sessions()

    def open(self) -> None:
        self._engine = create_engine(self.url)
        self._sessions = create_sessionmaker(self._engine)

    async def close(self) -> None:
        """Closes the pool's connections, waiting at most `CLOSE_TIMEOUT_SECONDS`: on a partition each close would
        wait for an answer that never comes, and the process exits (closing the sockets) anyway."""
        engine, self._engine, self._sessions = self._engine, None, None
        if engine is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await engine.dispose()
        except TimeoutError:
            logger.warning("the database's connections did not close within %.0f s", CLOSE_TIMEOUT_SECONDS)
