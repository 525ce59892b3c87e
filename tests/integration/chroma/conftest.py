"""A gateway in front of the session's real Chroma server, and two users who must never see each other's data."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import chromadb
import httpx
import pytest
from chromadb.api import ClientAPI

from gateway.settings import Settings
from tests.conftest import GatewayFactory, add_user
from tests.fakes.chroma_tap import ChromaTap
from tests.serving import LiveServer

CHROMA_KEY = "chroma-upstream-key"


@dataclass(frozen=True)
class ChromaUser:
    user_id: str
    token: str  # a platform JWT
    gateway: LiveServer

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def client(self, database: str = "default_database") -> ClientAPI:
        """The official client, through the gateway, as this user."""
        return chromadb.HttpClient(
            host=f"{self.gateway.url}/v1/chroma",
            headers=self.headers,
            database=database,
            settings=chromadb.Settings(anonymized_telemetry=False),
        )

    def http(self) -> httpx.Client:
        """A plain HTTP client at `/v1/chroma`, for what the official client would never send."""
        return httpx.Client(base_url=f"{self.gateway.url}/v1/chroma", headers=self.headers, timeout=10)


@pytest.fixture(scope="module")
def chroma_tap(chroma_url: str, gateway_env: dict[str, str]) -> Iterator[ChromaTap]:
    """What reaches Chroma from the gateway, on its way there. One tap per database (`gateway_env`), as the users
    are: a module's SQLite and Postgres halves may run back to back (one file alone, or under pytest-xdist), and
    the second half's checks must not see the first half's users."""
    tap = ChromaTap(chroma_url)
    with LiveServer(tap.app()) as server:
        tap.url = server.url
        yield tap


@pytest.fixture(scope="module")
def chroma_gateway(start_gateway: GatewayFactory, chroma_tap: ChromaTap) -> Iterator[LiveServer]:
    with start_gateway(CHROMA_BASE_URL=chroma_tap.url, CHROMA_API_KEY=CHROMA_KEY, USAGE_API_KEY="") as server:
        yield server


def new_user(gateway: LiveServer, gateway_env: dict[str, str], name: str) -> ChromaUser:
    login = {
        "email": f"{name}-{uuid.uuid4().hex[:8]}@example.com",
        "password": "correct horse battery staple",
    }
    user_id = asyncio.run(add_user(Settings.from_env(gateway_env, env_file=None).database_url, **login))
    response = httpx.post(f"{gateway.url}/api/v1/auth/login", json=login)
    assert response.status_code == 200, response.text
    return ChromaUser(user_id, response.json()["access_token"], gateway)


@pytest.fixture(scope="module")
def alice(chroma_gateway: LiveServer, gateway_env: dict[str, str]) -> ChromaUser:
    return new_user(chroma_gateway, gateway_env, "alice")


@pytest.fixture(scope="module")
def bob(chroma_gateway: LiveServer, gateway_env: dict[str, str]) -> ChromaUser:
    return new_user(chroma_gateway, gateway_env, "bob")
