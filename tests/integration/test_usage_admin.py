"""An admin's view of usage: the whole gateway by default, narrowed to one user with `user_id`, and the user list
(`GET /v1/users`) the dashboard's picker reads. Anyone who sees only their own usage cannot narrow to another's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, add_user
from tests.integration.test_usage_routes import (
    USAGE_ROUTES,
    Caller,
    assert_error,
    bearer,
    database_url,
    fill_for_auth,
    get,
    new_dataset,
    ok,
)
from tests.serving import LiveServer


class Admin:
    """A fresh admin (`gateway users create --admin`), signed in: its id, a platform JWT and a usage:read token."""

    def __init__(self, server: LiveServer, gateway_env: dict[str, str]) -> None:
        login = {"email": f"admin-{uuid.uuid4().hex}@example.com", "password": "a long enough admin password"}
        self.user_id = asyncio.run(add_user(database_url(gateway_env), **login, is_admin=True))
        response = httpx.post(f"{server.url}/api/v1/auth/login", json=login)
        assert response.status_code == 200, response.text
        assert response.json()["user"]["is_admin"] is True
        self.jwt: str = response.json()["access_token"]
        token = httpx.post(
            f"{server.url}/v1/api-tokens", json={"scopes": ["usage:read"]}, headers=bearer(self.jwt)
        )
        assert token.status_code == 201, token.text
        self.usage_token: str = token.json()["token"]


def seen(server: LiveServer, headers: dict[str, str], **params: Any) -> tuple[int, int, int, int]:
    """(requests in /v1/usage, its total tokens, requests over /v1/usage/daily, requests in the 24h rollup)."""
    totals = ok(get(server, "/v1/usage", headers, **params))["totals"]
    daily = ok(get(server, "/v1/usage/daily", headers, **params))["daily"]
    rollups = ok(get(server, "/v1/usage/rollups", headers, **params))["rollups"]
    day_rollup = next(r["totals"] for r in rollups if r["window"] == "24h")
    return (
        totals["requests"],
        totals["total_tokens"],
        sum(b["requests"] for b in daily),
        day_rollup["requests"],
    )


@pytest.fixture
def dataset() -> str:
    return new_dataset()


@pytest.fixture
def keyed_gateway(start_gateway: GatewayFactory, dataset: str) -> Iterator[LiveServer]:
    """A gateway with a usage key, reading a dataset of its own: an admin's view is not the keyless one's."""
    with start_gateway(ANALYTICS_DATASET=dataset, USAGE_API_KEY="usage-key-for-tests") as server:
        yield server


@pytest.fixture
def people(keyed_gateway: LiveServer, gateway_env: dict[str, str], dataset: str) -> tuple[Admin, Caller]:
    """An admin and a user of a gateway with a usage key, the user with 3 of the dataset's 10 rows."""
    admin, user = Admin(keyed_gateway, gateway_env), Caller(keyed_gateway, gateway_env)
    fill_for_auth(database_url(gateway_env), dataset, user)
    return admin, user


def test_an_admin_sees_the_whole_gateway_and_narrows_it_to_one_user(
    keyed_gateway: LiveServer, people: tuple[Admin, Caller]
) -> None:
    admin, user = people
    assert seen(keyed_gateway, bearer(admin.jwt)) == (10, 66, 10, 10)
    assert seen(keyed_gateway, bearer(admin.jwt), user_id=user.user_id) == (3, 6, 3, 3)
    assert seen(keyed_gateway, bearer(admin.jwt), user_id=admin.user_id) == (0, 0, 0, 0)
    # A user who does not exist has no usage: nothing to tell apart from one who never called.
    assert seen(keyed_gateway, bearer(admin.jwt), user_id=f"usr_{'0' * 24}") == (0, 0, 0, 0)


def test_the_admin_session_cookie_narrows_too(
    keyed_gateway: LiveServer, people: tuple[Admin, Caller]
) -> None:
    admin, user = people
    with httpx.Client(base_url=keyed_gateway.url, cookies={"gw_session": admin.jwt}) as browser:
        narrowed = browser.get("/v1/usage", params={"user_id": user.user_id, "days": 7})
    assert ok(narrowed)["totals"]["requests"] == 3


def test_the_operator_key_narrows_to_one_user(
    keyed_gateway: LiveServer, people: tuple[Admin, Caller]
) -> None:
    _, user = people
    assert seen(keyed_gateway, {"x-usage-key": "usage-key-for-tests"}, user_id=user.user_id) == (3, 6, 3, 3)


def test_a_user_cannot_read_another_users_usage(
    keyed_gateway: LiveServer, people: tuple[Admin, Caller]
) -> None:
    admin, user = people
    for credential in (user.jwt, user.usage_token, admin.usage_token):
        for target in (admin.user_id, user.user_id):  # their own too: user_id is for whole-gateway readers
            for path in USAGE_ROUTES:
                error = assert_error(get(keyed_gateway, path, bearer(credential), user_id=target), 403)
                assert error["param"] == "user_id"
    # Without user_id each sees their own, as before; an admin's API token is not the admin's session.
    assert seen(keyed_gateway, bearer(user.jwt)) == (3, 6, 3, 3)
    assert seen(keyed_gateway, bearer(admin.usage_token)) == (0, 0, 0, 0)


@pytest.mark.parametrize("user_id", ["", "alice", "usr_XYZ", f"tok_{'0' * 24}", "usr_" + "0" * 23 + "\x00"])
def test_a_user_id_that_is_not_one_is_400(
    keyed_gateway: LiveServer, people: tuple[Admin, Caller], user_id: str
) -> None:
    admin, _ = people
    for path in USAGE_ROUTES:
        assert_error(get(keyed_gateway, path, bearer(admin.jwt), user_id=user_id), 400, param="user_id")


def test_an_admin_lists_the_users(keyed_gateway: LiveServer, people: tuple[Admin, Caller]) -> None:
    admin, user = people
    users = ok(get(keyed_gateway, "/v1/users", bearer(admin.jwt)))["data"]
    by_id = {record["id"]: record for record in users}
    assert by_id[admin.user_id]["is_admin"] is True
    assert by_id[user.user_id]["is_admin"] is False
    assert set(by_id[user.user_id]) == {"id", "email", "is_admin", "created_at", "disabled_at"}
    assert by_id[user.user_id]["email"].startswith("usage-")
    assert not any("password" in key for record in users for key in record)


def test_only_an_admins_session_lists_the_users(
    keyed_gateway: LiveServer, people: tuple[Admin, Caller]
) -> None:
    admin, user = people
    assert assert_error(get(keyed_gateway, "/v1/users", bearer(user.jwt)), 403)["code"] == "admin_only"
    assert_error(get(keyed_gateway, "/v1/users", bearer(admin.usage_token)), 403)  # API tokens: platform only
    assert_error(get(keyed_gateway, "/v1/users", {"x-usage-key": "usage-key-for-tests"}), 401)
    assert_error(get(keyed_gateway, "/v1/users"), 401)


def test_the_document_describes_the_narrowing_and_the_user_list(gateway: LiveServer) -> None:
    paths = ok(httpx.get(f"{gateway.url}/openapi.json"))["paths"]
    for path in USAGE_ROUTES:
        names = {parameter["name"] for parameter in paths[path]["get"]["parameters"]}
        assert "user_id" in names, path
    users = paths["/v1/users"]["get"]
    assert set(users["responses"]) >= {"200", "401", "403"}
    assert users["responses"]["200"]["content"]["application/json"]["schema"]["required"] == ["data"]
