"""Agents over HTTP: create, list, get, update, delete, start and stop, and who may reach which agent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.agents_support import User, new_user
from tests.serving import LiveServer


@pytest.fixture(scope="module")
def alice(gateway_env: dict[str, str], gateway: LiveServer) -> User:
    return new_user(gateway_env, gateway.url)


@pytest.fixture(scope="module")
def bob(gateway_env: dict[str, str], gateway: LiveServer) -> User:
    return new_user(gateway_env, gateway.url)


AGENT_FIELDS = {
    "id",
    "agent_name",
    "model",
    "model_provider",
    "governance_mode",
    "state",
    "tier",
    "created_at",
    "updated_at",
    "last_started_at",
    "last_stopped_at",
    "session_id",
    "message_count",
}


def test_a_new_agent_has_the_documented_defaults_and_is_stopped(alice: User) -> None:
    response = alice.request("POST", "/v1/agents", json={})

    assert response.status_code == 201
    agent = response.json()
    assert set(agent) == AGENT_FIELDS
    assert agent["id"].startswith("ocs_")
    assert agent["agent_name"] == "My Agent"
    assert agent["model"] == "@cf/meta/llama-3.1-8b-instruct"
    assert agent["model_provider"] == "workers-ai"
    assert agent["governance_mode"] == "transparent"
    assert agent["state"] == "stopped"
    assert agent["message_count"] == 0
    assert agent["created_at"].endswith("Z")
    assert agent["last_started_at"] is None


def test_an_empty_body_means_the_defaults(alice: User) -> None:
    response = alice.request("POST", "/v1/agents")

    assert response.status_code == 201
    assert response.json()["agent_name"] == "My Agent"


def test_create_takes_the_given_fields(alice: User) -> None:
    agent = alice.create_agent(
        agent_name="Helper", model="gpt-4o-mini", model_provider="openai", governance_mode="enforcing"
    )

    assert (agent["agent_name"], agent["model"], agent["model_provider"], agent["governance_mode"]) == (
        "Helper",
        "gpt-4o-mini",
        "openai",
        "enforcing",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model_provider": "nobody"}, "model_provider"),
        ({"governance_mode": "lenient"}, "governance_mode"),
        ({"agent_name": 7}, "agent_name"),
        ({"agent_name": "   "}, "agent_name"),
        ({"model": "x" * 201}, "model"),
    ],
)
def test_create_refuses_bad_fields(alice: User, body: dict[str, Any], param: str) -> None:
    response = alice.request("POST", "/v1/agents", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_create_refuses_a_body_that_is_not_json(alice: User) -> None:
    response = alice.request(
        "POST", "/v1/agents", content=b"{nope", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_agent_routes_need_a_credential(gateway: LiveServer) -> None:
    assert httpx.get(f"{gateway.url}/v1/agents").status_code == 401
    assert httpx.post(f"{gateway.url}/v1/agents", json={}).status_code == 401


def test_the_list_shows_the_users_own_agents_newest_first(alice: User, bob: User) -> None:
    first, second = alice.create_agent(agent_name="first"), alice.create_agent(agent_name="second")
    bobs = bob.create_agent(agent_name="bob's")

    listed = alice.request("GET", "/v1/agents").json()["data"]

    ids = [agent["id"] for agent in listed]
    assert ids.index(second["id"]) < ids.index(first["id"])
    assert bobs["id"] not in ids
    assert all(set(agent) == AGENT_FIELDS for agent in listed)


def test_get_and_patch(alice: User) -> None:
    agent = alice.create_agent()

    got = alice.request("GET", f"/v1/agents/{agent['id']}")
    patched = alice.request(
        "PATCH", f"/v1/agents/{agent['id']}", json={"agent_name": "Renamed", "governance_mode": "enforcing"}
    )

    assert got.status_code == 200 and got.json() == agent
    assert patched.status_code == 200
    assert patched.json()["agent_name"] == "Renamed"
    assert patched.json()["governance_mode"] == "enforcing"
    assert patched.json()["model"] == agent["model"]
    assert patched.json()["updated_at"] > agent["updated_at"]
    assert alice.request("GET", f"/v1/agents/{agent['id']}").json()["agent_name"] == "Renamed"


def test_patch_refuses_an_unknown_provider(alice: User) -> None:
    agent = alice.create_agent()

    response = alice.request("PATCH", f"/v1/agents/{agent['id']}", json={"model_provider": "nobody"})

    assert response.status_code == 400
    assert alice.request("GET", f"/v1/agents/{agent['id']}").json()["model_provider"] == "workers-ai"


def test_delete_removes_the_agent(alice: User) -> None:
    agent = alice.create_agent()

    assert alice.request("DELETE", f"/v1/agents/{agent['id']}").status_code == 204
    assert alice.request("GET", f"/v1/agents/{agent['id']}").status_code == 404
    assert alice.request("DELETE", f"/v1/agents/{agent['id']}").status_code == 404


def test_start_runs_the_agent_and_starting_again_changes_nothing(alice: User) -> None:
    agent = alice.create_agent()

    started = alice.request("POST", f"/v1/agents/{agent['id']}/start")
    again = alice.request("POST", f"/v1/agents/{agent['id']}/start")

    assert started.status_code == 200
    assert started.json()["state"] == "running"
    assert started.json()["last_started_at"] is not None
    assert again.status_code == 200
    assert again.json() == started.json()


def test_stop_returns_an_automatic_checkpoint(alice: User) -> None:
    agent = alice.running_agent()

    stopped = alice.request("POST", f"/v1/agents/{agent['id']}/stop")

    assert stopped.status_code == 200
    body = stopped.json()
    assert body["state"] == "stopped"
    assert body["last_stopped_at"] is not None
    checkpoint = body["checkpoint"]
    assert set(checkpoint) == {"id", "created_at", "message_count", "last_leaf_hash", "tree_size"}
    assert checkpoint["id"].startswith("ckpt_")
    assert checkpoint["message_count"] == 0
    assert checkpoint["last_leaf_hash"] is None
    assert isinstance(checkpoint["tree_size"], int)


def test_stopping_a_stopped_agent_writes_no_checkpoint(alice: User) -> None:
    agent = alice.create_agent()

    stopped = alice.request("POST", f"/v1/agents/{agent['id']}/stop")

    assert stopped.status_code == 200
    assert stopped.json()["state"] == "stopped"
    assert stopped.json()["checkpoint"] is None


def test_clearing_the_messages_starts_a_new_session(alice: User) -> None:
    agent = alice.create_agent()

    cleared = alice.request("DELETE", f"/v1/agents/{agent['id']}/messages")

    assert cleared.status_code == 204
    after = alice.request("GET", f"/v1/agents/{agent['id']}").json()
    assert after["session_id"] != agent["session_id"]
    messages = alice.request("GET", f"/v1/agents/{agent['id']}/messages").json()
    assert messages["data"] == [] and messages["session_id"] == after["session_id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/start"),
        ("POST", "/stop"),
        ("GET", "/messages"),
        ("DELETE", "/messages"),
        ("GET", "/proofs/sha256:" + "ab" * 32),
    ],
)
def test_another_users_agent_is_not_found(alice: User, bob: User, method: str, path: str) -> None:
    agent = alice.create_agent()

    response = bob.request(method, f"/v1/agents/{agent['id']}{path}", json={} if method == "PATCH" else None)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "agent_not_found"
    assert alice.request("GET", f"/v1/agents/{agent['id']}").json()["state"] == "stopped"


def test_an_api_token_needs_the_agents_scope(alice: User) -> None:
    agent = alice.create_agent()
    chat_only = alice.api_token(["chat"])

    for method, path in (("POST", "/v1/agents"), ("GET", f"/v1/agents/{agent['id']}")):
        response = alice.request(method, path, token=chat_only, json={} if method == "POST" else None)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "insufficient_scope"


def test_an_agents_token_manages_agents_but_cannot_list_them(alice: User) -> None:
    token = alice.api_token(["agents"])

    created = alice.request("POST", "/v1/agents", token=token, json={"agent_name": "by token"})
    agent_id = created.json()["id"]
    started = alice.request("POST", f"/v1/agents/{agent_id}/start", token=token)
    listed = alice.request("GET", "/v1/agents", token=token)

    assert created.status_code == 201
    assert started.status_code == 200
    assert listed.status_code == 403
    assert alice.request("GET", f"/v1/agents/{agent_id}").json()["agent_name"] == "by token"


def test_an_agent_key_reaches_only_its_own_agents_marked_routes(alice: User) -> None:
    agent, other = alice.create_agent(), alice.create_agent()
    key = alice.agent_key(agent["id"])
    own = f"/v1/agents/{agent['id']}"

    assert alice.request("GET", own, token=key).status_code == 200
    assert alice.request("GET", f"{own}/messages", token=key).status_code == 200
    for method, path in (
        ("GET", "/v1/agents"),
        ("POST", "/v1/agents"),
        ("PATCH", own),
        ("DELETE", own),
        ("POST", f"{own}/start"),
        ("POST", f"{own}/stop"),
        ("DELETE", f"{own}/messages"),
        ("GET", f"/v1/agents/{other['id']}"),
    ):
        response = alice.request(method, path, token=key, json={} if method in ("POST", "PATCH") else None)
        assert response.status_code == 403, (method, path, response.text)
    assert alice.request("GET", own).json()["state"] == "stopped"


def test_deleting_an_agent_revokes_its_keys_at_once(alice: User) -> None:
    agent = alice.create_agent()
    key = alice.agent_key(agent["id"])
    assert alice.request("GET", f"/v1/agents/{agent['id']}", token=key).status_code == 200  # now cached

    alice.request("DELETE", f"/v1/agents/{agent['id']}")

    assert alice.request("GET", f"/v1/agents/{agent['id']}", token=key).status_code == 401


def test_a_plain_get_of_the_chat_route_asks_for_a_websocket(alice: User) -> None:
    agent = alice.create_agent()

    response = alice.request("GET", f"/v1/agents/{agent['id']}/chat")

    assert response.status_code == 426
    assert response.json()["error"]["code"] == "websocket_required"


def test_wrong_method_is_405(alice: User) -> None:
    agent = alice.create_agent()

    response = alice.request("PUT", f"/v1/agents/{agent['id']}")

    assert response.status_code == 405
    assert "allow" in response.headers


def test_messages_refuse_bad_paging(alice: User) -> None:
    agent = alice.create_agent()

    for query in ("limit=0", "limit=x", "limit=100000", "before=yesterday", "before=msg_nope"):
        response = alice.request("GET", f"/v1/agents/{agent['id']}/messages?{query}")
        assert response.status_code == 400, query
