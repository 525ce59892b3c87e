"""Chroma's settings as an operator sees them: unset means 503, the key's header and scheme can be changed."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import GatewayFactory
from tests.fakes.chroma_tap import ChromaTap
from tests.integration.chroma.conftest import ChromaUser, new_user
from tests.serving import LiveServer

HEARTBEAT = "/v1/chroma/api/v2/heartbeat"


@pytest.fixture(scope="module")
def unconfigured(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    with start_gateway() as server:
        yield server


def test_without_chroma_settings_a_user_gets_503(
    unconfigured: LiveServer, gateway_env: dict[str, str]
) -> None:
    user = new_user(unconfigured, gateway_env, "carol")
    response = httpx.get(f"{unconfigured.url}{HEARTBEAT}", headers=user.headers)
    assert response.status_code == 503
    assert response.json()["error"] == "InternalError"
    assert "not configured" in response.json()["message"]


def test_without_chroma_settings_no_credential_is_still_401(unconfigured: LiveServer) -> None:
    assert httpx.get(f"{unconfigured.url}{HEARTBEAT}").status_code == 401


def test_the_key_header_and_scheme_follow_the_settings(
    start_gateway: GatewayFactory, chroma_tap: ChromaTap, gateway_env: dict[str, str]
) -> None:
    with start_gateway(
        CHROMA_BASE_URL=chroma_tap.url,
        CHROMA_API_KEY="k-123",
        CHROMA_AUTH_HEADER="Authorization",
        CHROMA_AUTH_SCHEME="Bearer",
    ) as server:
        user: ChromaUser = new_user(server, gateway_env, "dave")
        before = len(chroma_tap.seen)
        assert httpx.get(f"{server.url}{HEARTBEAT}", headers=user.headers).status_code == 200
        (seen,) = chroma_tap.seen[before:]
        assert seen.headers["authorization"] == "Bearer k-123"
        assert "x-chroma-api-key" not in seen.headers


def test_an_api_token_needs_the_chroma_scope(alice: ChromaUser) -> None:
    def token(scopes: list[str]) -> str:
        created = httpx.post(
            f"{alice.gateway.url}/v1/api-tokens", json={"name": "t", "scopes": scopes}, headers=alice.headers
        )
        assert created.status_code == 201, created.text
        return str(created.json()["token"])

    chat_only = {"authorization": f"Bearer {token(['chat'])}"}
    with_chroma = {"authorization": f"Bearer {token(['chroma'])}"}
    assert httpx.get(f"{alice.gateway.url}{HEARTBEAT}", headers=chat_only).status_code == 403
    assert httpx.get(f"{alice.gateway.url}{HEARTBEAT}", headers=with_chroma).status_code == 200
