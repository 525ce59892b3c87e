"""`/v1/api-tokens` over real HTTP: creating, listing and revoking tokens, and what a token may then do."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update

from gateway.db.engine import Database
from gateway.db.models import ApiToken
from gateway.settings import Settings
from tests.conftest import UPSTREAM_OPENAI_KEY, GatewayFactory, add_user
from tests.fakes.mistral_ocr import FakeMistral
from tests.fakes.openai_upstream import FakeOpenAI
from tests.serving import LiveServer

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
OCR_BODY = {"url": "https://example.com/scan.pdf"}
TOKEN_SHAPE = re.compile(r"gw_[A-Za-z0-9_-]{43,}")
RECORD_FIELDS = {
    "id",
    "name",
    "prefix",
    "scopes",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked_at",
    "limits",  # each budget or rate limit with its counters (tests/integration/test_budgets.py)
}
LAST_USED_WAIT_SECONDS = 25.0  # the gateway flushes last use every 10 s: two flushes and a slow write


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def when(stamp: str) -> datetime:
    assert stamp.endswith("Z"), stamp
    return datetime.fromisoformat(stamp)


def create_token(gateway: LiveServer, access_token: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{gateway.url}/v1/api-tokens", json=body, headers=bearer(access_token))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def list_tokens(gateway: LiveServer, access_token: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{gateway.url}/v1/api-tokens", headers=bearer(access_token))
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["data"]
    return records


def chat(gateway: LiveServer, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT_BODY, headers=headers)


def ocr(gateway: LiveServer, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/ocr", json=OCR_BODY, headers=headers)


def error_code(response: httpx.Response) -> str | None:
    code: str | None = response.json()["error"]["code"]
    return code


def database_url(gateway_env: dict[str, str]) -> str:
    return Settings.from_env(gateway_env, env_file=None).database_url


async def _stored_rows(url: str) -> list[dict[str, Any]]:
    database = Database(url)
    database.open()
    try:
        async with database.session() as session:
            result = await session.execute(text("SELECT * FROM api_tokens"))
            return [dict(row) for row in result.mappings().all()]
    finally:
        await database.close()


async def _set_expiry(url: str, token_id: str, expires_at: datetime) -> None:
    database = Database(url)
    database.open()
    try:
        async with database.session() as session, session.begin():
            await session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(expires_at=expires_at)
            )
    finally:
        await database.close()


def login_new_user(gateway: LiveServer, gateway_env: dict[str, str]) -> str:
    """A fresh user's platform JWT (a user of its own keeps token lists free of other tests' tokens)."""
    login = {"email": f"user-{uuid.uuid4().hex}@example.com", "password": "a long enough test password"}
    asyncio.run(add_user(database_url(gateway_env), email=login["email"], password=login["password"]))
    response = httpx.post(f"{gateway.url}/api/v1/auth/login", json=login)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture
def user(gateway: LiveServer, gateway_env: dict[str, str]) -> str:
    return login_new_user(gateway, gateway_env)


@pytest.fixture
def other_user(gateway: LiveServer, gateway_env: dict[str, str]) -> str:
    return login_new_user(gateway, gateway_env)


@pytest.fixture(scope="module")
def strict_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    """A gateway on the same database that requires a credential on chat and OCR."""
    with start_gateway(API_AUTH_REQUIRED="1") as server:
        yield server


# Creating.


def test_create_answers_201_with_the_record_and_the_token(gateway: LiveServer, user: str) -> None:
    before = datetime.now(UTC)
    created = create_token(gateway, user, name="laptop")

    assert set(created) == RECORD_FIELDS | {"token"}
    assert created["id"].startswith("tok_")
    assert created["name"] == "laptop"
    assert TOKEN_SHAPE.fullmatch(created["token"])
    assert created["token"].startswith(created["prefix"]) and len(created["prefix"]) < len(created["token"])
    assert created["prefix"].startswith("gw_")
    assert before - timedelta(seconds=5) <= when(created["created_at"]) <= datetime.now(UTC)
    assert (created["last_used_at"], created["expires_at"], created["revoked_at"]) == (None, None, None)


def test_omitted_scopes_mean_every_proxy_scope(gateway: LiveServer, user: str) -> None:
    assert create_token(gateway, user)["scopes"] == ["chat", "chroma", "ocr"]


def test_given_scopes_are_kept_deduplicated_and_sorted(gateway: LiveServer, user: str) -> None:
    assert create_token(gateway, user, scopes=["usage:read", "chat", "chat"])["scopes"] == [
        "chat",
        "usage:read",
    ]


def test_omitted_name_is_empty(gateway: LiveServer, user: str) -> None:
    assert create_token(gateway, user)["name"] == ""


def test_new_token_works_on_chat(gateway: LiveServer, user: str, fake_openai: FakeOpenAI) -> None:
    token = create_token(gateway, user)["token"]

    response = chat(gateway, bearer(token))

    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert fake_openai.recorder.last.headers["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"


def test_chat_only_token_works_on_chat(gateway: LiveServer, user: str, fake_openai: FakeOpenAI) -> None:
    token = create_token(gateway, user, scopes=["chat"])["token"]

    response = chat(gateway, bearer(token))

    assert response.status_code == 200, response.text


def test_ocr_only_token_works_on_ocr(gateway: LiveServer, user: str, fake_mistral: FakeMistral) -> None:
    token = create_token(gateway, user, scopes=["ocr"])["token"]

    response = ocr(gateway, bearer(token))

    assert response.status_code == 200, response.text


def test_token_is_never_listed(gateway: LiveServer, user: str) -> None:
    created = create_token(gateway, user)

    response = httpx.get(f"{gateway.url}/v1/api-tokens", headers=bearer(user))

    assert response.status_code == 200
    assert created["token"] not in response.text
    (record,) = response.json()["data"]
    assert set(record) == RECORD_FIELDS
    assert record == {key: created[key] for key in RECORD_FIELDS}


def test_database_holds_only_a_keyed_hash_of_the_token(
    gateway: LiveServer, gateway_env: dict[str, str], user: str
) -> None:
    created = create_token(gateway, user)
    raw = created["token"]
    random_part = raw[len("gw_") :]

    rows = asyncio.run(_stored_rows(database_url(gateway_env)))

    (row,) = [row for row in rows if row["id"] == created["id"]]
    assert re.fullmatch(r"[0-9a-f]{64}", row["token_hash"])
    for stored in rows:
        for value in stored.values():
            assert raw not in str(value)
            assert random_part[:43] not in str(value)
            assert random_part[8:] not in str(value)  # nothing past what the display prefix shows


# Listing.


def test_list_is_newest_first(gateway: LiveServer, user: str) -> None:
    ids = [create_token(gateway, user, name=f"t{n}")["id"] for n in range(3)]

    assert [record["id"] for record in list_tokens(gateway, user)] == ids[::-1]


def test_list_holds_only_the_callers_tokens(gateway: LiveServer, user: str, other_user: str) -> None:
    mine = create_token(gateway, user)["id"]
    theirs = create_token(gateway, other_user)["id"]

    assert [record["id"] for record in list_tokens(gateway, user)] == [mine]
    assert [record["id"] for record in list_tokens(gateway, other_user)] == [theirs]


def test_new_user_lists_no_tokens(gateway: LiveServer, user: str) -> None:
    assert list_tokens(gateway, user) == []


# Revoking.


def test_revoke_answers_204_and_again_204(gateway: LiveServer, user: str) -> None:
    token_id = create_token(gateway, user)["id"]
    url = f"{gateway.url}/v1/api-tokens/{token_id}"

    first = httpx.delete(url, headers=bearer(user))
    second = httpx.delete(url, headers=bearer(user))

    assert (first.status_code, second.status_code) == (204, 204)
    assert first.content == b""
    (record,) = list_tokens(gateway, user)
    assert record["revoked_at"] is not None


def test_revoking_twice_keeps_the_first_revocation_time(gateway: LiveServer, user: str) -> None:
    token_id = create_token(gateway, user)["id"]
    url = f"{gateway.url}/v1/api-tokens/{token_id}"
    httpx.delete(url, headers=bearer(user))
    first = list_tokens(gateway, user)[0]["revoked_at"]

    httpx.delete(url, headers=bearer(user))

    assert list_tokens(gateway, user)[0]["revoked_at"] == first


def test_revoked_token_is_refused_at_once(gateway: LiveServer, user: str, fake_openai: FakeOpenAI) -> None:
    created = create_token(gateway, user)
    assert chat(gateway, bearer(created["token"])).status_code == 200  # now cached by the gateway

    httpx.delete(f"{gateway.url}/v1/api-tokens/{created['id']}", headers=bearer(user))
    response = chat(gateway, bearer(created["token"]))

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_revoking_an_unknown_token_is_404(gateway: LiveServer, user: str) -> None:
    response = httpx.delete(f"{gateway.url}/v1/api-tokens/tok_doesnotexist", headers=bearer(user))

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_revoking_another_users_token_is_404_and_leaves_it_working(
    gateway: LiveServer, user: str, other_user: str, fake_openai: FakeOpenAI
) -> None:
    created = create_token(gateway, user)

    response = httpx.delete(f"{gateway.url}/v1/api-tokens/{created['id']}", headers=bearer(other_user))

    assert response.status_code == 404
    assert list_tokens(gateway, user)[0]["revoked_at"] is None
    assert chat(gateway, bearer(created["token"])).status_code == 200


# Validation.


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}],
    ids=["none", "text", "form"],
)
def test_create_without_json_content_type_is_415(
    gateway: LiveServer, user: str, headers: dict[str, str]
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/api-tokens", content=b'{"name": "x"}', headers={**bearer(user), **headers}
    )

    assert response.status_code == 415
    assert list_tokens(gateway, user) == []


@pytest.mark.parametrize(
    "body", [b"{not json", b"", b"[]", b'"name"'], ids=["broken", "empty", "array", "string"]
)
def test_create_with_a_body_that_is_not_a_json_object_is_400(
    gateway: LiveServer, user: str, body: bytes
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/api-tokens",
        content=body,
        headers={**bearer(user), "content-type": "application/json"},
    )

    assert response.status_code == 400
    assert error_code(response) == "invalid_json"


@pytest.mark.parametrize(
    "scopes",
    ["chat", {"chat": True}, [1], [None], ["chat", "admin"], ["CHAT"], ["usage"]],
    ids=["string", "object", "number", "null", "unknown", "uppercase", "partial"],
)
def test_create_with_bad_scopes_is_400(gateway: LiveServer, user: str, scopes: object) -> None:
    response = httpx.post(f"{gateway.url}/v1/api-tokens", json={"scopes": scopes}, headers=bearer(user))

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "scopes"
    assert list_tokens(gateway, user) == []


@pytest.mark.parametrize("days", [0, -1, "7", 3651, 1.5, True, []], ids=repr)
def test_create_with_bad_expiry_is_400(gateway: LiveServer, user: str, days: object) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/api-tokens", json={"expires_in_days": days}, headers=bearer(user)
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "expires_in_days"


@pytest.mark.parametrize("name", [7, ["x"], "x" * 201], ids=["number", "array", "too-long"])
def test_create_with_bad_name_is_400(gateway: LiveServer, user: str, name: object) -> None:
    response = httpx.post(f"{gateway.url}/v1/api-tokens", json={"name": name}, headers=bearer(user))

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "name"


def test_expiry_of_one_day_is_a_day_ahead(gateway: LiveServer, user: str) -> None:
    created = create_token(gateway, user, expires_in_days=1)

    ahead = when(created["expires_at"]) - datetime.now(UTC)

    assert timedelta(hours=23, minutes=59) < ahead <= timedelta(days=1)


def test_longest_expiry_is_accepted(gateway: LiveServer, user: str) -> None:
    created = create_token(gateway, user, expires_in_days=3650)

    assert when(created["expires_at"]) - datetime.now(UTC) > timedelta(days=3649)


def test_expired_token_is_refused(
    gateway: LiveServer, gateway_env: dict[str, str], user: str, fake_openai: FakeOpenAI
) -> None:
    created = create_token(gateway, user, expires_in_days=1)
    past = datetime.now(UTC) - timedelta(minutes=5)
    asyncio.run(_set_expiry(database_url(gateway_env), created["id"], past))

    response = chat(gateway, bearer(created["token"]))

    assert response.status_code == 401
    assert fake_openai.recorder.requests == []


# What a token may call.


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_api_token_is_refused_on_the_token_routes(gateway: LiveServer, user: str, method: str) -> None:
    created = create_token(gateway, user)
    path = f"/v1/api-tokens/{created['id']}" if method == "DELETE" else "/v1/api-tokens"

    response = httpx.request(method, f"{gateway.url}{path}", json={}, headers=bearer(created["token"]))

    assert response.status_code == 403
    assert error_code(response) == "api_tokens_not_allowed"
    assert list_tokens(gateway, user)[0]["revoked_at"] is None


def test_chat_only_token_is_refused_on_ocr(gateway: LiveServer, user: str, fake_mistral: FakeMistral) -> None:
    token = create_token(gateway, user, scopes=["chat"])["token"]

    response = ocr(gateway, bearer(token))

    assert response.status_code == 403
    assert error_code(response) == "insufficient_scope"
    assert fake_mistral.recorder.requests == []


def test_ocr_only_token_is_refused_on_chat(gateway: LiveServer, user: str, fake_openai: FakeOpenAI) -> None:
    token = create_token(gateway, user, scopes=["ocr"])["token"]

    response = chat(gateway, bearer(token))

    assert response.status_code == 403
    assert error_code(response) == "insufficient_scope"
    assert fake_openai.recorder.requests == []


def test_usage_read_token_is_refused_on_chat(gateway: LiveServer, user: str, fake_openai: FakeOpenAI) -> None:
    token = create_token(gateway, user, scopes=["usage:read"])["token"]

    response = chat(gateway, bearer(token))

    assert response.status_code == 403
    assert error_code(response) == "insufficient_scope"
    assert fake_openai.recorder.requests == []


# Whether a credential is required.


def test_required_auth_refuses_chat_without_a_credential(
    strict_gateway: LiveServer, fake_openai: FakeOpenAI
) -> None:
    response = chat(strict_gateway)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert fake_openai.recorder.requests == []


def test_required_auth_refuses_ocr_without_a_credential(
    strict_gateway: LiveServer, fake_mistral: FakeMistral
) -> None:
    response = ocr(strict_gateway)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert fake_mistral.recorder.requests == []


def test_required_auth_accepts_a_valid_token(
    gateway: LiveServer,
    strict_gateway: LiveServer,
    user: str,
    fake_openai: FakeOpenAI,
    fake_mistral: FakeMistral,
) -> None:
    token = create_token(gateway, user)["token"]  # made on another instance over the same database

    assert chat(strict_gateway, bearer(token)).status_code == 200
    assert ocr(strict_gateway, bearer(token)).status_code == 200


def test_required_auth_accepts_a_platform_jwt(
    strict_gateway: LiveServer, user: str, fake_openai: FakeOpenAI
) -> None:
    assert chat(strict_gateway, bearer(user)).status_code == 200


def test_optional_auth_serves_chat_without_a_credential(gateway: LiveServer, fake_openai: FakeOpenAI) -> None:
    assert chat(gateway).status_code == 200


def test_optional_auth_serves_ocr_without_a_credential(
    gateway: LiveServer, fake_mistral: FakeMistral
) -> None:
    assert ocr(gateway).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer gw_" + "A" * 49,  # the right length, a wrong tag
        "Bearer gw_not-a-real-token",
        "Bearer garbage",
        "Bearer a.b.c",
        "Basic xyz",
        "Bearer",
        "gw_token-without-a-scheme",
    ],
    ids=["forged-gw", "short-gw", "garbage", "jwt-shaped", "basic", "empty-bearer", "no-scheme"],
)
def test_optional_auth_refuses_an_invalid_credential(
    gateway: LiveServer, fake_openai: FakeOpenAI, fake_mistral: FakeMistral, authorization: str
) -> None:
    headers = {"authorization": authorization}

    chat_response, ocr_response = chat(gateway, headers), ocr(gateway, headers)

    assert (chat_response.status_code, ocr_response.status_code) == (401, 401)
    assert chat_response.headers["www-authenticate"] == "Bearer"
    assert (fake_openai.recorder.requests, fake_mistral.recorder.requests) == ([], [])


def test_optional_auth_refuses_a_revoked_token(
    gateway: LiveServer, user: str, fake_openai: FakeOpenAI
) -> None:
    created = create_token(gateway, user)
    httpx.delete(f"{gateway.url}/v1/api-tokens/{created['id']}", headers=bearer(user))

    assert chat(gateway, bearer(created["token"])).status_code == 401


# Last use.


def test_last_used_is_null_until_the_token_is_used(gateway: LiveServer, user: str) -> None:
    create_token(gateway, user)

    assert list_tokens(gateway, user)[0]["last_used_at"] is None


def test_last_used_is_recorded_soon_after_use(
    gateway: LiveServer, user: str, fake_openai: FakeOpenAI
) -> None:
    created = create_token(gateway, user)
    used_from = datetime.now(UTC)
    assert chat(gateway, bearer(created["token"])).status_code == 200

    deadline = time.monotonic() + LAST_USED_WAIT_SECONDS
    while (
        last_used := list_tokens(gateway, user)[0]["last_used_at"]
    ) is None and time.monotonic() < deadline:
        time.sleep(0.5)

    assert last_used is not None, "last_used_at was not recorded in time"
    assert used_from - timedelta(seconds=1) <= when(last_used) <= datetime.now(UTC)
