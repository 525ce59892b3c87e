"""Running the Alembic migrations from code (`gateway migrate`, `gateway serve` on SQLite, the tests)."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from gateway.db.engine import create_engine

HEAD = "head"
BASE = "base"


def alembic_config() -> Config:
    """Alembic's configuration, pointing at the migration scripts shipped inside the package."""
    config = Config()
    config.set_main_option("script_location", str(files("gateway.migrations")))
    return config


async def upgrade(database_url: str, revision: str = HEAD) -> None:
    """Apply the migrations up to `revision` on `database_url`."""
    await _run(database_url, "upgrade", revision)


async def downgrade(database_url: str, revision: str = BASE) -> None:
    """Revert the migrations down to `revision` on `database_url`."""
    await _run(database_url, "downgrade", revision)


async def _run(database_url: str, direction: str, revision: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_on_connection, direction, revision)
    finally:
        await engine.dispose()


def _run_on_connection(connection: Connection, direction: str, revision: str) -> None:
    # Alembic's "connection sharing" recipe: env.py uses this connection instead of making an engine.
    config = alembic_config()
    config.attributes["connection"] = connection
    getattr(command, direction)(config, revision)
