"""The async engine and session factory, with SQLite tuned for a server's concurrent use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from gateway.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 5000


def create_engine(database_url: str) -> AsyncEngine:
    """An engine for `database_url` (already normalised by the settings to an async driver)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        # asyncpg prepares every statement; after five runs Postgres may switch to a generic plan, blind to the
        # window's bounds, which made the usage summaries several times slower. A custom plan costs ~1 ms.
        settings = {"plan_cache_mode": "force_custom_plan"}
        return create_async_engine(url, pool_pre_ping=True, connect_args={"server_settings": settings})
    engine = create_async_engine(url)
    event.listen(engine.sync_engine, "connect", _tune_sqlite)
    return engine


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
    """Create the data directory (and the SQLite file's folder) before anything writes there."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


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
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = None
        self._sessions = None
