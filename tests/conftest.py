"""Shared fixtures: fake upstreams and gateways served on loopback, and databases on SQLite and the real Postgres.

Postgres is not optional: `TEST_POSTGRES_URL` (default: the local server's `postgres` database, user `postgres`)
names an admin connection; each run creates its own database there and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import asyncpg
import pytest

from gateway.app import create_app
from gateway.cli import uvicorn_options
from gateway.settings import Settings, sqlite_url
from tests.fakes.mistral_ocr import FakeMistral
from tests.fakes.openai_upstream import FakeOpenAI
from tests.serving import LiveServer

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
UPSTREAM_OPENAI_KEY = "sk-upstream-openai-secret"
UPSTREAM_MISTRAL_KEY = "mistral-upstream-secret"

GatewayFactory = Callable[..., AbstractContextManager[LiveServer]]


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    return POSTGRES_ADMIN_URL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh Postgres database for this test run (asyncpg URL), dropped at the end."""
    name = f"gateway_test_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "gateway.db")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once on SQLite and once on Postgres."""
    fixture = "sqlite_database_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[tuple[FakeOpenAI, LiveServer]]:
    fake = FakeOpenAI()
    with LiveServer(fake.app) as server:
        yield fake, server


@pytest.fixture(scope="session")
def fake_mistral_server() -> Iterator[tuple[FakeMistral, LiveServer]]:
    fake = FakeMistral()
    with LiveServer(fake.app) as server:
        yield fake, server


@pytest.fixture
def fake_openai(fake_openai_server: tuple[FakeOpenAI, LiveServer]) -> FakeOpenAI:
    fake_openai_server[0].recorder.reset()
    return fake_openai_server[0]


@pytest.fixture
def fake_mistral(fake_mistral_server: tuple[FakeMistral, LiveServer]) -> FakeMistral:
    fake_mistral_server[0].recorder.reset()
    return fake_mistral_server[0]


@pytest.fixture(scope="session")
def gateway_env(
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai_server: tuple[FakeOpenAI, LiveServer],
    fake_mistral_server: tuple[FakeMistral, LiveServer],
) -> dict[str, str]:
    """The environment of a gateway in front of the fakes, on its own SQLite file."""
    data_dir = tmp_path_factory.mktemp("gateway-data")
    return {
        "DATA_DIR": str(data_dir),
        "OPENAI_API_KEY": UPSTREAM_OPENAI_KEY,
        # With a trailing /v1, which the gateway must not double.
        "OPENAI_BASE_URL": f"{fake_openai_server[1].url}/v1",
        "MISTRAL_API_KEY": UPSTREAM_MISTRAL_KEY,
        "MISTRAL_BASE_URL": fake_mistral_server[1].url,
        "UPSTREAM_CONNECT_TIMEOUT": "2",
        "UPSTREAM_READ_TIMEOUT": "30",
    }


@pytest.fixture(scope="session")
def start_gateway(gateway_env: dict[str, str]) -> GatewayFactory:
    """`with start_gateway(VAR=value, ...) as gateway:` serves a gateway whose settings differ from the default."""

    def start(**overrides: str) -> AbstractContextManager[LiveServer]:
        settings = Settings.from_env({**gateway_env, **overrides}, env_file=None)
        options = uvicorn_options()
        options.pop("log_config")
        return LiveServer(create_app(settings), **options)

    return start


@pytest.fixture(scope="session")
def gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    """The default gateway, in front of the fakes, shared by the tests that need no special settings."""
    with start_gateway() as server:
        yield server
