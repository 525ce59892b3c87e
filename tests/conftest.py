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
import httpx
import pytest
from sqlalchemy import select

from gateway.app import create_app
from gateway.auth.users import create_user
from gateway.cli import uvicorn_options
from gateway.db.engine import Database, prepare_data_dir
from gateway.db.migrate import upgrade
from gateway.db.models import UsageEvent
from gateway.settings import Settings, sqlite_url
from tests.chroma_server import chroma_server
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


class PostgresServer:
    """Creates databases on the local Postgres for this run, each with a unique name, and drops them all."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create_database(self) -> str:
        """A fresh, empty database (as an asyncpg URL)."""
        name = f"gateway_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(self._admin(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        base = self.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        return f"{base}/{name}"

    def drop_all(self) -> None:
        for name in self.created:
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    async def _admin(self, statement: str) -> None:
        connection = await asyncpg.connect(self.admin_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(POSTGRES_ADMIN_URL)
    try:
        yield server
    finally:
        server.drop_all()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh Postgres database for this run (asyncpg URL), for tests that manage its schema themselves."""
    return postgres_server.create_database()


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "gateway.db")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once on SQLite and once on Postgres."""
    fixture = "sqlite_database_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


# The fake upstreams keep an idle connection longer than the gateway does (gateway.upstreams.KEEPALIVE_SECONDS,
# 30 s), as an upstream should: with uvicorn's 5 s, a request written just as the upstream closed its idle
# connection got a 502 (a POST is not sent twice, as nginx does not), one in a 10,000-request soak.
UPSTREAM_KEEPALIVE_SECONDS = 75


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[tuple[FakeOpenAI, LiveServer]]:
    fake = FakeOpenAI()
    with LiveServer(fake.app, timeout_keep_alive=UPSTREAM_KEEPALIVE_SECONDS) as server:
        yield fake, server


@pytest.fixture(scope="session")
def fake_mistral_server() -> Iterator[tuple[FakeMistral, LiveServer]]:
    fake = FakeMistral()
    with LiveServer(fake.app, timeout_keep_alive=UPSTREAM_KEEPALIVE_SECONDS) as server:
        yield fake, server


@pytest.fixture
def fake_openai(fake_openai_server: tuple[FakeOpenAI, LiveServer]) -> Iterator[FakeOpenAI]:
    fake_openai_server[0].reset()
    yield fake_openai_server[0]
    fake_openai_server[0].release()  # a test that failed midway leaves no stream held


@pytest.fixture
def fake_mistral(fake_mistral_server: tuple[FakeMistral, LiveServer]) -> FakeMistral:
    fake_mistral_server[0].recorder.reset()
    return fake_mistral_server[0]


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def gateway_env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    fake_openai_server: tuple[FakeOpenAI, LiveServer],
    fake_mistral_server: tuple[FakeMistral, LiveServer],
) -> dict[str, str]:
    """The environment of a gateway in front of the fakes. Every test that uses a gateway runs twice: on the
    embedded SQLite default, and on a Postgres database of its own."""
    data_dir = tmp_path_factory.mktemp(f"gateway-data-{request.param}")
    database = {"postgres": {"DATABASE_URL": postgres_server.create_database()}}.get(request.param, {})
    return {
        **database,
        "DATA_DIR": str(data_dir),
        "OPENAI_API_KEY": UPSTREAM_OPENAI_KEY,
        # With a trailing /v1, which the gateway must not double.
        "OPENAI_BASE_URL": f"{fake_openai_server[1].url}/v1",
        "MISTRAL_API_KEY": UPSTREAM_MISTRAL_KEY,
        "MISTRAL_BASE_URL": fake_mistral_server[1].url,
        "UPSTREAM_CONNECT_TIMEOUT": "2",
        "UPSTREAM_READ_TIMEOUT": "30",
        # In-process gateways' access lines would interleave with pytest's report (tests/integration/test_cli.py
        # checks the access log of a real `gateway serve`).
        "ACCESS_LOG": "0",
    }


@pytest.fixture(scope="session")
def start_gateway(gateway_env: dict[str, str]) -> GatewayFactory:
    """`with start_gateway(VAR=value, ...) as gateway:` serves a gateway whose settings differ from the default.

    Its database is migrated first, as `gateway serve` or `gateway migrate` would; gateways that keep the
    default DATABASE_URL share one SQLite file (and so one set of users and tokens).
    """

    def start(*, migrate: bool = True, **overrides: str) -> AbstractContextManager[LiveServer]:
        settings = Settings.from_env({**gateway_env, **overrides}, env_file=None)
        if migrate:
            prepare_data_dir(settings)
            asyncio.run(upgrade(settings.database_url))
        # The edge's limits from these settings, as `gateway serve` has them.
        options = uvicorn_options(settings)
        options.pop("log_config")
        return LiveServer(create_app(settings), **options)

    return start


@pytest.fixture(scope="session")
def user_login(gateway_env: dict[str, str], gateway: LiveServer) -> dict[str, str]:
    """An ordinary user in the default gateway's database, as a login body."""
    login = {"email": "alice@example.com", "password": "correct horse battery staple"}
    asyncio.run(add_user(Settings.from_env(gateway_env, env_file=None).database_url, **login))
    return login


@pytest.fixture(scope="session")
def access_token(gateway: LiveServer, user_login: dict[str, str]) -> str:
    """A platform JWT for the user, from the login route."""
    response = httpx.post(f"{gateway.url}/api/v1/auth/login", json=user_login)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture(scope="session")
def api_token(gateway: LiveServer, access_token: str) -> str:
    """An API token with every proxy scope, created through the API as a user would."""
    response = httpx.post(
        f"{gateway.url}/v1/api-tokens",
        json={"name": "tests"},
        headers={"authorization": f"Bearer {access_token}"},
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


async def usage_rows(database_url: str, request_ids: set[str]) -> set[str]:
    """The request ids of `request_ids` that are rows of `usage_events`."""
    database = Database(database_url)
    database.open()
    try:
        async with database.session() as session:
            query = select(UsageEvent.request_id).where(UsageEvent.request_id.in_(request_ids))
            return set((await session.scalars(query)).all())
    finally:
        await database.close()


async def add_user(database_url: str, *, email: str, password: str, is_admin: bool = False) -> str:
    """Creates a user as `gateway users create` does; returns the id."""
    database = Database(database_url)
    database.open()
    try:
        async with database.session() as session, session.begin():
            user = await create_user(session, email=email, password=password, is_admin=is_admin)
            return user.id
    finally:
        await database.close()


@pytest.fixture(scope="session")
def gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    """The default gateway, in front of the fakes, shared by the tests that need no special settings."""
    with start_gateway() as server:
        yield server


@pytest.fixture(scope="session")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Chroma server for the whole session (users are kept apart by the gateway, not by fresh servers)."""
    with chroma_server(tmp_path_factory.mktemp("chroma")) as url:
        yield url
