"""The migrations go up to head and down to base on SQLite and Postgres, and head matches the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from gateway.db import models
from gateway.db.engine import create_engine
from gateway.db.migrate import alembic_config, downgrade, upgrade


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def read_schema(database_url: str) -> tuple[str | None, set[str], list[object]]:
    """(current revision, tables, differences between the database and the models)."""

    def read(connection: Connection) -> tuple[str | None, set[str], list[object]]:
        context = MigrationContext.configure(connection)
        tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
        return context.get_current_revision(), tables, compare_metadata(context, models.Base.metadata)

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(read)
    finally:
        await engine.dispose()


async def test_upgrade_to_head_matches_the_models_and_downgrade_empties(database_url: str) -> None:
    await upgrade(database_url)
    revision, tables, differences = await read_schema(database_url)
    assert revision == head_revision()
    assert tables == set(models.Base.metadata.tables)
    assert differences == []

    await downgrade(database_url)
    revision, tables, _ = await read_schema(database_url)
    assert revision is None
    assert tables == set()

    await upgrade(database_url)  # and up again, as after a rollback
    assert (await read_schema(database_url))[0] == head_revision()


async def test_upgrade_twice_is_harmless(database_url: str) -> None:
    await upgrade(database_url)
    await upgrade(database_url)

    assert (await read_schema(database_url))[0] == head_revision()
