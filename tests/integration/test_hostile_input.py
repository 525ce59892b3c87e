"""Text, ids and numbers a hostile client sends, over real HTTP, on SQLite and on Postgres: each refused with the
envelope (400 naming the field, or 404 for an id of the wrong form), never a 500, and every answered proxied
request still leaves its usage row."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.db.models import UsageEvent
from tests.conftest import GatewayFactory
from tests.integration.agents_support import User, new_user, usage_rows
from tests.serving import LiveServer

NUL = "\u0000"
LONE_SURROGATE = b'"\\ud800"'  # as JSON text: json and orjson differ on whether to let it through
# Digits `str.isdigit()` accepts and `int()` refuses or that no route should take: superscript two, fullwidth
# and Arabic-Indic digits, a number past `int()`'s 4,300-digit limit, signs and spaces.
HOSTILE_NUMBERS = ["%C2%B2", "%EF%BC%91", "%D9%A3", "5" * 5000, "0" * 5000, "-1", "+1", "%201", "1e3", ""]


def assert_refused(response: httpx.Response, status: int, param: str | None = None) -> None:
    """The gateway's envelope, or, on the Chroma routes, Chroma's error format with the gateway's code and param."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    if isinstance(body["error"], str):  # Chroma's format (`/v1/chroma/...`)
        error = body
        assert set(error) == {"error", "message", "code", "param"}
    else:
        error = body["error"]
        assert set(error) == {"message", "type", "code", "param"}
    if param is not None:
        assert error["param"] == param, error


@pytest.fixture(scope="module")
def alice(gateway_env: dict[str, str], gateway: LiveServer) -> User:
    return new_user(gateway_env, gateway.url)


@pytest.fixture(scope="module")
def agent(alice: User) -> dict[str, Any]:
    return alice.create_agent()


@pytest.fixture(scope="module")
def signup_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    with start_gateway(ALLOW_SIGNUP="1") as server:
        yield server


# ----- NUL and lone surrogates in stored or looked-up text -----


@pytest.mark.parametrize("field", ["email", "password"])
def test_login_with_a_nul_is_400_naming_the_field(gateway: LiveServer, field: str) -> None:
    body = {"email": "a@example.com", "password": "a long enough password", field: f"a{NUL}@example.com"}
    response = httpx.post(f"{gateway.url}/api/v1/auth/login", json=body)
    assert_refused(response, 400, field)


@pytest.mark.parametrize("field", ["email", "password"])
def test_signup_with_a_nul_is_400_naming_the_field(signup_gateway: LiveServer, field: str) -> None:
    body = {"email": "nul@example.com", "password": "a long enough password", field: f"x{NUL}@example.com"}
    response = httpx.post(f"{signup_gateway.url}/api/v1/auth/signup", json=body)
    assert_refused(response, 400, field)


def test_a_lone_surrogate_in_a_body_is_400(gateway: LiveServer, alice: User) -> None:
    login = b'{"email": ' + LONE_SURROGATE + b', "password": "a long enough password"}'
    response = httpx.post(
        f"{gateway.url}/api/v1/auth/login", content=login, headers={"content-type": "application/json"}
    )
    assert_refused(response, 400)
    response = alice.request(
        "POST",
        "/v1/agents",
        content=b'{"agent_name": ' + LONE_SURROGATE + b"}",
        headers={"content-type": "application/json"},
    )
    assert_refused(response, 400)


@pytest.mark.parametrize("field", ["agent_name", "model", "model_provider", "governance_mode"])
def test_agent_text_with_a_nul_or_past_its_column_is_400(
    alice: User, agent: dict[str, Any], field: str
) -> None:
    for value in (f"name{NUL}", "n" * 10_000):
        assert_refused(alice.request("POST", "/v1/agents", json={field: value}), 400, field)
        assert_refused(alice.request("PATCH", f"/v1/agents/{agent['id']}", json={field: value}), 400, field)


def test_token_and_key_names_with_a_nul_or_too_long_are_400(alice: User, agent: dict[str, Any]) -> None:
    for value in (f"name{NUL}", "n" * 10_000):
        assert_refused(alice.request("POST", "/v1/api-tokens", json={"name": value}), 400, "name")
        assert_refused(
            alice.request("POST", f"/v1/agents/{agent['id']}/api-keys", json={"name": value}), 400, "name"
        )


def test_a_vault_provider_with_a_nul_is_400(alice: User, agent: dict[str, Any]) -> None:
    response = alice.request("DELETE", f"/v1/agents/{agent['id']}/vault?provider=openai%00")
    assert_refused(response, 400, "provider")
    response = alice.request(
        "POST", f"/v1/agents/{agent['id']}/vault", json={"provider": f"openai{NUL}", "api_key": "sk-x"}
    )
    assert_refused(response, 400, "provider")


# ----- ids of the wrong form: 404, as for an unknown id -----

WRONG_IDS = ["%00", "_%00", "_" + "a" * 23, "_" + "a" * 25, "_" + "A" * 24, "_" + "g" * 24, "_" + "a" * 5000]


@pytest.mark.parametrize("tail", WRONG_IDS)
def test_malformed_ids_in_paths_are_404(alice: User, agent: dict[str, Any], tail: str) -> None:
    base = f"/v1/agents/{agent['id']}"
    for method, path in [
        ("GET", f"/v1/agents/ocs{tail}"),
        ("PATCH", f"/v1/agents/ocs{tail}"),
        ("DELETE", f"/v1/agents/ocs{tail}"),
        ("GET", f"/v1/agents/ocs{tail}/messages"),
        ("DELETE", f"/v1/api-tokens/tok{tail}"),
        ("DELETE", f"{base}/api-keys/akey{tail}"),
        ("GET", f"{base}/files/file{tail}"),
        ("DELETE", f"{base}/files/file{tail}"),
    ]:
        response = alice.request(method, path, **({"json": {}} if method == "PATCH" else {}))
        assert_refused(response, 404)


@pytest.mark.parametrize("tail", WRONG_IDS)
def test_a_malformed_before_cursor_is_400_as_an_unknown_one_is(
    alice: User, agent: dict[str, Any], tail: str
) -> None:
    response = alice.request("GET", f"/v1/agents/{agent['id']}/messages?before=msg{tail}")
    assert_refused(response, 400, "before")


# ----- query integers -----


@pytest.mark.parametrize("number", HOSTILE_NUMBERS)
def test_hostile_query_numbers_are_400_naming_the_parameter(
    gateway: LiveServer, alice: User, agent: dict[str, Any], number: str
) -> None:
    for path, param in [
        (f"/v1/agents/{agent['id']}/messages?limit={number}", "limit"),
        (f"/v1/usage?hours={number}", "hours"),
        (f"/v1/usage?days={number}", "days"),
        (f"/v1/usage/daily?days={number}", "days"),
        (f"/v1/transparency/consistency?first={number}&second=1", "first"),
        (f"/v1/transparency/consistency?first=0&second={number}", "second"),
    ]:
        assert_refused(alice.request("GET", path), 400, param)


# ----- the Chroma routes' own paging, and their usage rows -----


@pytest.fixture(scope="module")
def chroma_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    """Chroma configured at a port nothing listens on: what is refused here never reaches it."""
    with start_gateway(CHROMA_BASE_URL="http://127.0.0.1:9", CHROMA_API_KEY="chroma-key") as server:
        yield server


@pytest.fixture(scope="module")
def chroma_user(gateway_env: dict[str, str], chroma_gateway: LiveServer) -> User:
    user = new_user(gateway_env, chroma_gateway.url)
    return User(user.base_url, user.email, user.api_token(["chroma"]))


@pytest.mark.parametrize("number", HOSTILE_NUMBERS)
def test_hostile_chroma_paging_is_400_naming_the_parameter(chroma_user: User, number: str) -> None:
    databases = "/v1/chroma/api/v2/tenants/default_tenant/databases"
    for param in ("limit", "offset"):
        response = chroma_user.request("GET", f"{databases}?{param}={number}")
        assert_refused(response, 400, param)


def test_a_chroma_path_with_a_nul_is_refused_and_recorded(
    chroma_user: User, gateway_env: dict[str, str]
) -> None:
    request_id = "hostile-chroma-nul"
    for path in ("/v1/chroma/api/v2/%00", "/v1/chroma/api/v2/" + "x" * 5000):
        response = chroma_user.request("GET", path, headers={"x-request-id": request_id})
        assert 400 <= response.status_code < 500, response.text
    rows = asyncio.run(usage_rows(gateway_env, request_id, count=2))
    assert len(rows) == 2
    assert all(row.path.startswith("/v1/chroma/api/v2/") for row in rows)


# ----- the model a chat request names -----


@pytest.mark.parametrize("model", [f"gpt{NUL}", "m" * 10_000])
def test_a_chat_model_that_cannot_be_stored_is_400_and_recorded(
    gateway: LiveServer, gateway_env: dict[str, str], model: str
) -> None:
    request_id = f"hostile-model-{len(model)}"
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-request-id": request_id},
    )
    assert_refused(response, 400, "model")
    rows: list[UsageEvent] = asyncio.run(usage_rows(gateway_env, request_id))
    assert [row.status for row in rows] == [400]


# ----- the credentials' fields, each named when it is at fault -----


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"email": "a@example.com", "password": 5}, "password"),
        ({"email": "a@example.com", "password": ""}, "password"),
        ({"email": "a@example.com"}, "password"),
        ({"email": ["a@example.com"], "password": "a long enough password"}, "email"),
        ({"email": "", "password": "a long enough password"}, "email"),
    ],
)
def test_login_names_the_field_at_fault(gateway: LiveServer, body: dict[str, Any], param: str) -> None:
    assert_refused(httpx.post(f"{gateway.url}/api/v1/auth/login", json=body), 400, param)


@pytest.mark.parametrize(
    ("email", "password", "param"),
    [
        ("e" * 400 + "@example.com", "a long enough password", "email"),  # past the column's 320
        ("not an email", "a long enough password", "email"),
        ("short@example.com", "short", "password"),
        ("long@example.com", "p" * 2000, "password"),
        ("nostring@example.com", 12345678, "password"),
    ],
)
def test_signup_names_the_field_at_fault(
    signup_gateway: LiveServer, email: str, password: object, param: str
) -> None:
    response = httpx.post(
        f"{signup_gateway.url}/api/v1/auth/signup", json={"email": email, "password": password}
    )
    assert_refused(response, 400, param)
