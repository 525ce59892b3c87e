"""An agent's vault, API keys and quota over real HTTP, on SQLite and Postgres; and who may reach them."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from gateway.agents.quotas import Quotas, check_chat_quota
from gateway.agents.vault import Vault, VaultError, byok_key, master_key_id, vault_for
from gateway.auth.authenticator import LAST_USED_FLUSH_SECONDS
from gateway.db.agent_models import Agent, AgentMessage
from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.errors import QuotaExceededError
from gateway.ids import new_id
from gateway.settings import Settings
from gateway.tiers import parse_tiers
from tests.conftest import GatewayFactory, PostgresServer, add_user
from tests.fakes.openai_upstream import FakeOpenAI
from tests.revocation import seconds_served
from tests.serving import GATEWAY, LiveServer, clean_env

BYOK_SECRET = "sk-byok-" + "Zq7vR2xK9mPw4nLs8tYb3cHd"
RAW_AGENT_KEY = re.compile(r"ak_[A-Za-z0-9_-]{49}")
REVOCATION_BOUND_SECONDS = 1.0
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> str | None:
    code: str | None = response.json()["error"]["code"]
    return code


def database_url(env: dict[str, str]) -> str:
    return Settings.from_env(env, env_file=None).database_url


def login_new_user(url: str, env: dict[str, str]) -> str:
    """A fresh user's platform JWT."""
    login = {"email": f"assets-{uuid.uuid4().hex}@example.com", "password": "a long enough test password"}
    asyncio.run(add_user(database_url(env), email=login["email"], password=login["password"]))
    response = httpx.post(f"{url}/api/v1/auth/login", json=login)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def create_agent(url: str, token: str) -> str:
    response = httpx.post(f"{url}/v1/agents", json={"model_provider": "openai"}, headers=bearer(token))
    assert response.status_code == 201, response.text
    agent_id: str = response.json()["id"]
    return agent_id


def create_key(url: str, token: str, agent_id: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/agents/{agent_id}/api-keys", json=body, headers=bearer(token))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def store_byok(
    url: str, token: str, agent_id: str, api_key: str = BYOK_SECRET, provider: str = "openai"
) -> None:
    response = httpx.post(
        f"{url}/v1/agents/{agent_id}/vault",
        json={"provider": provider, "api_key": api_key},
        headers=bearer(token),
    )
    assert response.status_code == 201, response.text


async def _rows(url: str, statement: str, **params: Any) -> list[dict[str, Any]]:
    database = Database(url)
    database.open()
    try:
        async with database.session() as session, session.begin():
            result = await session.execute(text(statement), params)
            is_query = statement.lstrip().upper().startswith("SELECT")
            return [dict(row) for row in result.mappings().all()] if is_query else []
    finally:
        await database.close()


async def checkpoint(url: str) -> None:
    """CHECKPOINT on a connection of its own, without the gateway's statement timeout: on a Postgres shared by
    parallel test workers, writing every dirty page can take longer than the 5 s a request's query is given."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await connection.execute("CHECKPOINT", timeout=120)
    finally:
        await connection.close()


def rows(env: dict[str, str], statement: str, **params: Any) -> list[dict[str, Any]]:
    return asyncio.run(_rows(database_url(env), statement, **params))


def as_bytes(value: object) -> bytes:
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return str(value).encode()


@pytest.fixture
def owner(gateway: LiveServer, gateway_env: dict[str, str]) -> str:
    return login_new_user(gateway.url, gateway_env)


@pytest.fixture
def stranger(gateway: LiveServer, gateway_env: dict[str, str]) -> str:
    return login_new_user(gateway.url, gateway_env)


@pytest.fixture
def agent(gateway: LiveServer, owner: str) -> str:
    return create_agent(gateway.url, owner)


# The vault.


def test_a_byok_key_is_stored_replaced_listed_by_prefix_and_deleted(
    gateway: LiveServer, owner: str, agent: str
) -> None:
    vault_url = f"{gateway.url}/v1/agents/{agent}/vault"
    stored = httpx.post(vault_url, json={"provider": "openai", "api_key": BYOK_SECRET}, headers=bearer(owner))
    assert stored.status_code == 201
    assert set(stored.json()) == {"provider", "prefix", "created_at"}
    assert stored.json()["provider"] == "openai" and stored.json()["prefix"] == BYOK_SECRET[:8]

    replaced = httpx.post(
        vault_url, json={"provider": "openai", "api_key": "other-" + BYOK_SECRET}, headers=bearer(owner)
    )
    assert replaced.status_code == 201
    store_byok(gateway.url, owner, agent, "mistral-key-0123456789abcdef0123", provider="mistral")

    listing = httpx.get(vault_url, headers=bearer(owner))
    assert listing.status_code == 200
    assert [(key["provider"], key["prefix"]) for key in listing.json()["data"]] == [
        ("mistral", "mistral-"),
        ("openai", "other-sk"),
    ]
    assert BYOK_SECRET not in listing.text and BYOK_SECRET[8:] not in listing.text

    missing = httpx.delete(vault_url, headers=bearer(owner))
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "provider"
    assert httpx.delete(vault_url, params={"provider": "openai"}, headers=bearer(owner)).status_code == 204
    assert [key["provider"] for key in httpx.get(vault_url, headers=bearer(owner)).json()["data"]] == [
        "mistral"
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"provider": "nonesuch", "api_key": "k" * 20},
        {"provider": "openai"},
        {"provider": "openai", "api_key": ""},
        {"provider": "openai", "api_key": "two words"},
        {"provider": "openai", "api_key": 42},
        {"api_key": "k" * 20},
    ],
)
def test_a_bad_vault_body_is_400(gateway: LiveServer, owner: str, agent: str, body: dict[str, Any]) -> None:
    response = httpx.post(f"{gateway.url}/v1/agents/{agent}/vault", json=body, headers=bearer(owner))

    assert response.status_code == 400, response.text


def test_the_database_never_holds_a_vault_key_in_clear(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str, agent: str
) -> None:
    store_byok(gateway.url, owner, agent)

    stored = rows(gateway_env, "SELECT * FROM agent_vault_keys WHERE agent_id = :agent", agent=agent)
    assert len(stored) == 1
    secret = BYOK_SECRET.encode()
    for value in stored[0].values():
        raw = as_bytes(value)
        assert secret not in raw and secret[8:] not in raw and secret.hex().encode() not in raw
    assert stored[0]["key_id"] == vault_for(Settings.from_env(gateway_env, env_file=None)).key_id


def test_the_database_files_never_hold_a_vault_key_in_clear(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str, agent: str
) -> None:
    store_byok(gateway.url, owner, agent)
    if "DATABASE_URL" in gateway_env:
        # Postgres: the table's heap file on disk, after a checkpoint has written every dirty page there.
        asyncio.run(checkpoint(database_url(gateway_env)))
        [found] = rows(
            gateway_env,
            "SELECT pg_read_binary_file(pg_relation_filepath('agent_vault_keys')) AS content",
        )
        content = as_bytes(found["content"])
    else:
        path = Path(database_url(gateway_env).split("///", 1)[1])
        # Read by another process: closing a descriptor of the file here would drop this process's SQLite
        # locks on it (POSIX lock semantics), which the in-thread gateways' connections rely on.
        content = subprocess.run(["cat", str(path), f"{path}-wal"], capture_output=True, check=True).stdout
    assert len(content) > 0
    assert BYOK_SECRET[8:].encode() not in content


def test_a_ciphertext_moved_to_another_agents_row_does_not_open(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str
) -> None:
    first, second = create_agent(gateway.url, owner), create_agent(gateway.url, owner)
    store_byok(gateway.url, owner, first, BYOK_SECRET)
    store_byok(gateway.url, owner, second, "sk-second-agent-own-key-000000")
    vault = vault_for(Settings.from_env(gateway_env, env_file=None))
    assert byok_key_of(gateway_env, first, vault) == BYOK_SECRET
    assert byok_key_of(gateway_env, second, vault) == "sk-second-agent-own-key-000000"

    [moved] = rows(
        gateway_env, "SELECT key_id, nonce, ciphertext FROM agent_vault_keys WHERE agent_id = :a", a=first
    )
    rows(
        gateway_env,
        "UPDATE agent_vault_keys SET key_id = :key_id, nonce = :nonce, ciphertext = :ciphertext WHERE agent_id = :a",
        a=second,
        **{name: as_bytes(value) if name != "key_id" else value for name, value in moved.items()},
    )

    with pytest.raises(VaultError):
        byok_key_of(gateway_env, second, vault)
    assert byok_key_of(gateway_env, first, vault) == BYOK_SECRET


def byok_key_of(env: dict[str, str], agent_id: str, vault: Vault, provider: str = "openai") -> str | None:
    async def read() -> str | None:
        database = Database(database_url(env))
        database.open()
        try:
            async with database.session() as session:
                return await byok_key(session, agent_id, provider, vault)
        finally:
            await database.close()

    return asyncio.run(read())


# Rotation, on a database of its own (it re-seals every record of the database it is given).


@pytest.fixture
def own_database_env(
    gateway_env: dict[str, str], tmp_path: Path, postgres_server: PostgresServer
) -> dict[str, str]:
    env = {**gateway_env, "DATA_DIR": str(tmp_path / "data")}
    if "DATABASE_URL" in gateway_env:
        env["DATABASE_URL"] = postgres_server.create_database()
    return env


def rotate(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY, "vault", "rotate", *args],
        env=clean_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_vault_rotate_reseals_every_record_under_the_new_key(
    start_gateway: GatewayFactory, own_database_env: dict[str, str], tmp_path: Path
) -> None:
    old_key, new_key, unrelated = (bytes([n]) * 32 for n in (1, 2, 3))
    env = {**own_database_env, "VAULT_MASTER_KEY": old_key.hex()}
    with start_gateway(**env) as server:
        token = login_new_user(server.url, env)
        agents = [create_agent(server.url, token) for _ in range(2)]
        for number, agent_id in enumerate(agents):
            store_byok(server.url, token, agent_id, f"{BYOK_SECRET}-{number}")
    assert {row["key_id"] for row in rows(env, "SELECT key_id FROM agent_vault_keys")} == {
        master_key_id(old_key)
    }

    new_env = {**env, "VAULT_MASTER_KEY": new_key.hex()}
    without_old_key = rotate(new_env, cwd=tmp_path)
    assert without_old_key.returncode == 1
    assert agents[0] in without_old_key.stderr

    rotated = rotate(new_env, "--old-key", old_key.hex(), cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "2 records re-sealed" in rotated.stdout

    assert {row["key_id"] for row in rows(env, "SELECT key_id FROM agent_vault_keys")} == {
        master_key_id(new_key)
    }
    for number, agent_id in enumerate(agents):
        assert byok_key_of(env, agent_id, Vault(new_key)) == f"{BYOK_SECRET}-{number}"
        with pytest.raises(VaultError):
            byok_key_of(env, agent_id, Vault(old_key))

    # Again, with the previous key from the environment instead: nothing left to do.
    again = rotate(
        {**new_env, "VAULT_PREVIOUS_MASTER_KEYS": f"{unrelated.hex()},{old_key.hex()}"}, cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "0 records re-sealed, 2 already under it" in again.stdout


# Agent API keys.


def test_an_agent_key_is_shown_once_and_stored_only_as_a_keyed_hash(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str, agent: str
) -> None:
    created = create_key(gateway.url, owner, agent, name="ci")

    assert RAW_AGENT_KEY.fullmatch(created["raw_key"])
    assert created["id"].startswith("akey_") and created["name"] == "ci"
    assert created["scopes"] == ["chat", "files"] and created["prefix"] == created["raw_key"][:11]
    listing = httpx.get(f"{gateway.url}/v1/agents/{agent}/api-keys", headers=bearer(owner))
    assert listing.status_code == 200
    [record] = listing.json()["data"]
    assert record["id"] == created["id"] and "raw_key" not in record
    assert created["raw_key"] not in listing.text and created["raw_key"][11:] not in listing.text
    [stored] = rows(gateway_env, "SELECT * FROM agent_api_keys WHERE agent_id = :agent", agent=agent)
    for value in stored.values():
        assert created["raw_key"][3:].encode() not in as_bytes(value)


def test_an_agent_key_reaches_its_agents_marked_routes(gateway: LiveServer, owner: str, agent: str) -> None:
    key = create_key(gateway.url, owner, agent)["raw_key"]
    base = f"{gateway.url}/v1/agents/{agent}"

    assert httpx.get(base, headers=bearer(key)).status_code == 200
    assert httpx.get(f"{base}/quota", headers=bearer(key)).status_code == 200
    assert httpx.get(f"{base}/files", headers=bearer(key)).status_code == 200
    upload = httpx.post(f"{base}/files", files={"file": ("a.txt", b"hello")}, headers=bearer(key))
    assert upload.status_code == 201, upload.text
    download = httpx.get(f"{base}/files/{upload.json()['id']}", headers=bearer(key))
    assert download.status_code == 200 and download.content == b"hello"


def test_an_agent_key_is_refused_on_its_agents_unmarked_routes(
    gateway: LiveServer, owner: str, agent: str
) -> None:
    key = create_key(gateway.url, owner, agent)["raw_key"]
    base = f"{gateway.url}/v1/agents/{agent}"
    file_id = httpx.post(f"{base}/files", files={"file": ("a.txt", b"x")}, headers=bearer(owner)).json()["id"]

    refused = [
        httpx.post(f"{base}/vault", json={"provider": "openai", "api_key": BYOK_SECRET}, headers=bearer(key)),
        httpx.get(f"{base}/vault", headers=bearer(key)),
        httpx.delete(f"{base}/vault", params={"provider": "openai"}, headers=bearer(key)),
        httpx.post(f"{base}/api-keys", json={}, headers=bearer(key)),
        httpx.get(f"{base}/api-keys", headers=bearer(key)),
        httpx.delete(f"{base}/api-keys/akey_0", headers=bearer(key)),
        httpx.delete(f"{base}/files/{file_id}", headers=bearer(key)),
        httpx.delete(base, headers=bearer(key)),
    ]

    assert [(response.status_code, error_code(response)) for response in refused] == [
        (403, "agent_key_not_allowed")
    ] * len(refused)
    assert httpx.get(f"{base}/files/{file_id}", headers=bearer(owner)).status_code == 200


def test_an_agent_key_is_refused_on_every_route_that_is_not_an_agents(
    gateway: LiveServer, owner: str, agent: str, fake_openai: FakeOpenAI
) -> None:
    key = create_key(gateway.url, owner, agent)["raw_key"]
    url = gateway.url

    refused = {
        "chat": httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=bearer(key)),
        "ocr": httpx.post(f"{url}/v1/ocr", json={"url": "https://example.com/a.pdf"}, headers=bearer(key)),
        "chroma": httpx.get(f"{url}/v1/chroma/api/v2/heartbeat", headers=bearer(key)),
        "usage": httpx.get(f"{url}/v1/usage", headers=bearer(key)),
        "usage daily": httpx.get(f"{url}/v1/usage/daily", headers=bearer(key)),
        "tokens": httpx.get(f"{url}/v1/api-tokens", headers=bearer(key)),
        "new token": httpx.post(f"{url}/v1/api-tokens", json={}, headers=bearer(key)),
        "me": httpx.get(f"{url}/api/v1/auth/me", headers=bearer(key)),
        "agents": httpx.get(f"{url}/v1/agents", headers=bearer(key)),
        "new agent": httpx.post(f"{url}/v1/agents", json={}, headers=bearer(key)),
    }

    assert {name: response.status_code for name, response in refused.items()} == dict.fromkeys(refused, 403)
    assert fake_openai.recorder.requests == []


def test_an_agent_key_cannot_reach_another_agent_even_of_its_owner(
    gateway: LiveServer, owner: str, agent: str
) -> None:
    other = create_agent(gateway.url, owner)
    key = create_key(gateway.url, owner, agent)["raw_key"]
    base = f"{gateway.url}/v1/agents/{other}"

    responses = [
        httpx.get(base, headers=bearer(key)),
        httpx.get(f"{base}/quota", headers=bearer(key)),
        httpx.get(f"{base}/files", headers=bearer(key)),
        httpx.post(f"{base}/files", files={"file": ("a.txt", b"x")}, headers=bearer(key)),
        httpx.get(f"{base}/messages", headers=bearer(key)),
    ]

    assert [response.status_code for response in responses] == [403] * len(responses)


def test_an_agent_key_without_the_files_scope_cannot_touch_files(
    gateway: LiveServer, owner: str, agent: str
) -> None:
    key = create_key(gateway.url, owner, agent, scopes=["chat"])["raw_key"]

    listing = httpx.get(f"{gateway.url}/v1/agents/{agent}/files", headers=bearer(key))
    assert (listing.status_code, error_code(listing)) == (403, "insufficient_scope")
    assert httpx.get(f"{gateway.url}/v1/agents/{agent}/quota", headers=bearer(key)).status_code == 200


@pytest.mark.parametrize("scopes", [["admin"], "files", [1]])
def test_unknown_agent_key_scopes_are_400(
    gateway: LiveServer, owner: str, agent: str, scopes: object
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/agents/{agent}/api-keys", json={"scopes": scopes}, headers=bearer(owner)
    )

    assert response.status_code == 400


def test_made_up_and_tampered_agent_keys_are_401(gateway: LiveServer, owner: str, agent: str) -> None:
    key = create_key(gateway.url, owner, agent)["raw_key"]
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")

    for credential in (tampered, "ak_" + "x" * 49, "ak_short"):
        assert (
            httpx.get(f"{gateway.url}/v1/agents/{agent}/quota", headers=bearer(credential)).status_code == 401
        )


@pytest.fixture
def second_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    """Another instance on the same database and keys."""
    with start_gateway() as server:
        yield server


def test_a_revoked_agent_key_is_refused_everywhere_within_a_second(
    gateway: LiveServer, second_gateway: LiveServer, owner: str, agent: str
) -> None:
    created = create_key(gateway.url, owner, agent)
    key = created["raw_key"]

    def quota_status(url: str) -> int:
        return httpx.get(f"{url}/v1/agents/{agent}/quota", headers=bearer(key)).status_code

    assert quota_status(gateway.url) == 200 and quota_status(second_gateway.url) == 200  # both have it cached

    revoke_url = f"{gateway.url}/v1/agents/{agent}/api-keys/{created['id']}"
    assert httpx.delete(revoke_url, headers=bearer(owner)).status_code == 204
    assert quota_status(gateway.url) == 401
    assert seconds_served(lambda: quota_status(second_gateway.url)) < REVOCATION_BOUND_SECONDS
    upload = httpx.post(
        f"{gateway.url}/v1/agents/{agent}/files", files={"file": ("a", b"x")}, headers=bearer(key)
    )
    assert upload.status_code == 401

    assert httpx.delete(revoke_url, headers=bearer(owner)).status_code == 204  # again: no change
    [listed] = httpx.get(f"{gateway.url}/v1/agents/{agent}/api-keys", headers=bearer(owner)).json()["data"]
    assert listed["revoked_at"] is not None


def test_deleting_an_agent_ends_its_keys_at_once(gateway: LiveServer, owner: str, agent: str) -> None:
    key = create_key(gateway.url, owner, agent)["raw_key"]
    assert httpx.get(f"{gateway.url}/v1/agents/{agent}", headers=bearer(key)).status_code == 200

    assert httpx.delete(f"{gateway.url}/v1/agents/{agent}", headers=bearer(owner)).status_code == 204

    assert httpx.get(f"{gateway.url}/v1/agents/{agent}", headers=bearer(key)).status_code == 401


def test_revoking_another_agents_key_is_404(gateway: LiveServer, owner: str, agent: str) -> None:
    other = create_agent(gateway.url, owner)
    created = create_key(gateway.url, owner, other)

    response = httpx.delete(
        f"{gateway.url}/v1/agents/{agent}/api-keys/{created['id']}", headers=bearer(owner)
    )

    assert response.status_code == 404
    assert (
        httpx.get(f"{gateway.url}/v1/agents/{other}", headers=bearer(created["raw_key"])).status_code == 200
    )


# Who may reach an agent's assets.


def test_another_user_cannot_reach_an_agents_vault_keys_files_or_quota(
    gateway: LiveServer, owner: str, stranger: str, agent: str
) -> None:
    store_byok(gateway.url, owner, agent)
    key = create_key(gateway.url, owner, agent)
    file_id = httpx.post(
        f"{gateway.url}/v1/agents/{agent}/files", files={"file": ("a.txt", b"secret")}, headers=bearer(owner)
    ).json()["id"]
    base = f"{gateway.url}/v1/agents/{agent}"

    attempts = [
        httpx.get(f"{base}/vault", headers=bearer(stranger)),
        httpx.post(
            f"{base}/vault",
            json={"provider": "openai", "api_key": "sk-stranger-000000"},
            headers=bearer(stranger),
        ),
        httpx.delete(f"{base}/vault", params={"provider": "openai"}, headers=bearer(stranger)),
        httpx.get(f"{base}/api-keys", headers=bearer(stranger)),
        httpx.post(f"{base}/api-keys", json={}, headers=bearer(stranger)),
        httpx.delete(f"{base}/api-keys/{key['id']}", headers=bearer(stranger)),
        httpx.get(f"{base}/files", headers=bearer(stranger)),
        httpx.post(f"{base}/files", files={"file": ("b.txt", b"x")}, headers=bearer(stranger)),
        httpx.get(f"{base}/files/{file_id}", headers=bearer(stranger)),
        httpx.delete(f"{base}/files/{file_id}", headers=bearer(stranger)),
        httpx.get(f"{base}/quota", headers=bearer(stranger)),
    ]

    assert [response.status_code for response in attempts] == [404] * len(attempts)
    # Nothing changed: the owner still sees the key, the API key (live) and the file.
    assert len(httpx.get(f"{base}/vault", headers=bearer(owner)).json()["data"]) == 1
    assert httpx.get(f"{base}/api-keys", headers=bearer(owner)).json()["data"][0]["revoked_at"] is None
    assert httpx.get(f"{base}/files/{file_id}", headers=bearer(owner)).content == b"secret"


def test_an_api_token_needs_the_agents_scope(gateway: LiveServer, owner: str, agent: str) -> None:
    def token(scopes: list[str]) -> str:
        response = httpx.post(f"{gateway.url}/v1/api-tokens", json={"scopes": scopes}, headers=bearer(owner))
        assert response.status_code == 201
        value: str = response.json()["token"]
        return value

    without, with_agents = token(["chat"]), token(["agents"])

    assert httpx.get(f"{gateway.url}/v1/agents/{agent}/vault", headers=bearer(without)).status_code == 403
    assert httpx.get(f"{gateway.url}/v1/agents/{agent}/vault", headers=bearer(with_agents)).status_code == 200
    assert httpx.get(f"{gateway.url}/v1/agents/{agent}/quota", headers=bearer(with_agents)).status_code == 200


def test_asset_routes_need_a_credential(gateway: LiveServer, agent: str) -> None:
    for path in ("vault", "api-keys", "files", "quota"):
        assert httpx.get(f"{gateway.url}/v1/agents/{agent}/{path}").status_code == 401


# Quota.


def test_the_quota_report_shows_the_free_tier_and_what_is_used(
    gateway: LiveServer, gateway_env: dict[str, str], owner: str, agent: str
) -> None:
    httpx.post(
        f"{gateway.url}/v1/agents/{agent}/files",
        files={"file": ("a.bin", b"x" * 1000)},
        headers=bearer(owner),
    )
    add_messages(gateway_env, agent, count=3, tokens=(100, 20))

    response = httpx.get(f"{gateway.url}/v1/agents/{agent}/quota", headers=bearer(owner))

    assert response.status_code == 200
    report = response.json()
    free = {tier.name: tier for tier in parse_tiers(None)}["free"]
    assert report["tier"] == "free"
    assert report["limits"] == free.limits()
    assert report["used"] == {
        "messages_per_day": 3,
        "tokens_per_month": 360,
        "storage_bytes": 1000,
        "files": 1,
    }
    assert report["remaining"]["files"] == free.files - 1  # type: ignore[operator]
    assert report["remaining"]["storage_bytes"] == free.storage_bytes - 1000  # type: ignore[operator]
    start, end = report["period"]["start"], report["period"]["end"]
    assert start.endswith("-01T00:00:00Z") and end.endswith("-01T00:00:00Z") and start < end


def add_messages(
    env: dict[str, str], agent_id: str, *, count: int, tokens: tuple[int, int], days_ago: int = 0
) -> None:
    """`count` user messages and as many assistant replies of `tokens` (prompt, completion), as chat stores them."""

    async def add() -> None:
        database = Database(database_url(env))
        database.open()
        try:
            async with database.session() as session, session.begin():
                agent = await session.get(Agent, agent_id)
                assert agent is not None
                at = utcnow() - timedelta(days=days_ago)
                for _ in range(count):
                    for role in ("user", "assistant"):
                        session.add(
                            AgentMessage(
                                id=new_id("msg"),
                                agent_id=agent_id,
                                session_id=agent.session_id,
                                role=role,
                                content="hello",
                                created_at=at,
                                prompt_tokens=tokens[0] if role == "assistant" else None,
                                completion_tokens=tokens[1] if role == "assistant" else None,
                            )
                        )
        finally:
            await database.close()

    asyncio.run(add())


def chat_quota_error(env: dict[str, str], agent_id: str, quotas: Quotas) -> QuotaExceededError | None:
    async def check() -> QuotaExceededError | None:
        database = Database(database_url(env))
        database.open()
        try:
            async with database.session() as session:
                agent = await session.get(Agent, agent_id)
                assert agent is not None
                try:
                    await check_chat_quota(session, agent, quotas)
                except QuotaExceededError as exc:
                    return exc
                return None
        finally:
            await database.close()

    return asyncio.run(check())


def test_the_chat_quota_counts_todays_messages(
    gateway_env: dict[str, str], gateway: LiveServer, owner: str, agent: str
) -> None:
    quotas = Quotas(parse_tiers('{"free": {"messages_per_day": 2, "tokens_per_month": null}}'))
    add_messages(gateway_env, agent, count=5, tokens=(1, 1), days_ago=1)  # yesterday's do not count
    add_messages(gateway_env, agent, count=1, tokens=(1, 1))
    assert chat_quota_error(gateway_env, agent, quotas) is None

    add_messages(gateway_env, agent, count=1, tokens=(1, 1))
    error = chat_quota_error(gateway_env, agent, quotas)

    assert error is not None
    assert (error.status_code, error.code) == (429, "quota_exceeded")
    assert 0 < int(error.headers["Retry-After"]) <= 24 * 3600 + 1


def test_the_chat_quota_counts_this_months_tokens(
    gateway_env: dict[str, str], gateway: LiveServer, owner: str, agent: str
) -> None:
    quotas = Quotas(parse_tiers('{"free": {"messages_per_day": null, "tokens_per_month": 1000}}'))
    add_messages(gateway_env, agent, count=2, tokens=(400, 99))
    assert chat_quota_error(gateway_env, agent, quotas) is None

    add_messages(gateway_env, agent, count=1, tokens=(1, 1))

    error = chat_quota_error(gateway_env, agent, quotas)
    assert error is not None and error.code == "quota_exceeded"


def test_an_agent_keys_last_use_is_recorded(gateway: LiveServer, owner: str, agent: str) -> None:
    created = create_key(gateway.url, owner, agent)
    assert (
        httpx.get(f"{gateway.url}/v1/agents/{agent}/quota", headers=bearer(created["raw_key"])).status_code
        == 200
    )

    # The gateway writes last use LAST_USED_FLUSH_SECONDS (10 s) after its previous write ended.
    deadline = time.monotonic() + 2 * LAST_USED_FLUSH_SECONDS + 5
    while time.monotonic() < deadline:
        [listed] = httpx.get(f"{gateway.url}/v1/agents/{agent}/api-keys", headers=bearer(owner)).json()[
            "data"
        ]
        if listed["last_used_at"] is not None:
            break
        time.sleep(0.5)

    assert listed["last_used_at"] is not None and listed["last_used_at"] >= created["created_at"]
