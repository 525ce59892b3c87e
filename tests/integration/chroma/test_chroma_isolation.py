"""A hostile user against the Chroma namespacing: nothing of another user's is read, changed, counted or revealed.

Bob knows Alice's collection id, database names and namespace, and tries every route and encoding with them.
The tap between the gateway and Chroma shows what actually arrived there.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.fakes.chroma_tap import ChromaTap
from tests.integration.chroma.conftest import CHROMA_KEY, ChromaUser

T = "/api/v2/tenants/default_tenant"
ALICE_DOCS = ["alpha", "beta", "gamma"]
EMBEDDING = [0.1, 0.2, 0.3]


@dataclass(frozen=True)
class AliceData:
    collection_id: str
    prefix: str  # how Alice's databases are named on the Chroma server


@pytest.fixture(scope="module")
def alice_data(alice: ChromaUser) -> AliceData:
    with alice.http() as http:
        assert http.post(f"{T}/databases", json={"name": "vault"}).status_code == 200
        created = http.post(f"{T}/databases/vault/collections", json={"name": "secrets"})
        assert created.status_code == 200, created.text
        collection_id = created.json()["id"]
        added = http.post(
            f"{T}/databases/vault/collections/{collection_id}/add",
            json={"ids": ["a", "b", "c"], "embeddings": [EMBEDDING] * 3, "documents": ALICE_DOCS},
        )
        assert added.status_code in (200, 201), added.text
    return AliceData(collection_id, alice.user_id.encode().hex() + "__")


@pytest.fixture
def bob_http(bob: ChromaUser) -> Iterator[httpx.Client]:
    with bob.http() as http:
        assert http.post(f"{T}/databases", json={"name": "vault"}).status_code in (200, 409)
        yield http


def assert_alice_untouched(alice: ChromaUser, data: AliceData) -> None:
    with alice.http() as http:
        base = f"{T}/databases/vault/collections/{data.collection_id}"
        assert http.get(f"{base}/count").json() == 3
        record = http.get(f"{T}/databases/vault/collections/by-id/{data.collection_id}").json()
        assert record["name"] == "secrets" and record["metadata"] is None
        got = http.post(f"{base}/get", json={"include": ["documents"]}).json()
        assert sorted(got["documents"]) == ALICE_DOCS


UUID_ROUTES = [
    ("GET", "count", None),
    ("GET", "indexing_status", None),
    ("GET", "fork_count", None),
    ("POST", "get", {}),
    ("POST", "query", {"query_embeddings": [EMBEDDING], "n_results": 1}),
    ("POST", "search", {"searches": []}),
    ("POST", "add", {"ids": ["bob"], "embeddings": [EMBEDDING]}),
    ("POST", "upsert", {"ids": ["a"], "embeddings": [EMBEDDING], "documents": ["owned"]}),
    ("POST", "update", {"ids": ["a"], "documents": ["owned"]}),
    ("POST", "delete", {"ids": ["a", "b", "c"]}),
    ("POST", "fork", {"new_name": "stolen"}),
    ("PUT", "", {"new_name": "renamed", "new_metadata": {"owner": "bob"}}),
]


@pytest.mark.parametrize(
    ("method", "op", "body"), UUID_ROUTES, ids=[f"{m} {o or 'collection'}" for m, o, _ in UUID_ROUTES]
)
@pytest.mark.parametrize("database", ["vault", "default_database"])
def test_another_users_collection_id_is_unknown_on_every_route(
    alice: ChromaUser,
    alice_data: AliceData,
    bob_http: httpx.Client,
    method: str,
    op: str,
    body: object,
    database: str,
) -> None:
    path = f"{T}/databases/{database}/collections/{alice_data.collection_id}" + (f"/{op}" if op else "")
    response = bob_http.request(method, path, json=body)
    assert response.status_code == 404, response.text
    assert response.json() == {
        "error": "NotFoundError",
        "message": f"Collection [{alice_data.collection_id}] does not exist.",
        "code": "collection_not_found",
        "param": None,
    }
    assert_alice_untouched(alice, alice_data)


def test_a_missing_collection_id_answers_the_same_as_another_users(
    alice_data: AliceData, bob_http: httpx.Client
) -> None:
    theirs = bob_http.get(f"{T}/databases/vault/collections/{alice_data.collection_id}/count")
    missing = bob_http.get(f"{T}/databases/vault/collections/00000000-0000-4000-8000-000000000000/count")
    assert (theirs.status_code, theirs.json()["error"]) == (missing.status_code, missing.json()["error"])


def test_by_id_and_by_name_see_only_the_callers_database(
    alice_data: AliceData, bob_http: httpx.Client
) -> None:
    assert (
        bob_http.get(f"{T}/databases/vault/collections/by-id/{alice_data.collection_id}").status_code == 404
    )
    assert bob_http.get(f"{T}/databases/vault/collections/secrets").status_code == 404
    assert bob_http.delete(f"{T}/databases/vault/collections/secrets").status_code == 404
    assert bob_http.get(f"{T}/databases/vault/collections").json() == []
    assert bob_http.get(f"{T}/databases/vault/collections_count").json() == 0


@pytest.mark.parametrize(
    "database",
    [
        "{prefix}vault",  # Alice's full Chroma name: becomes a name inside Bob's namespace
        "..%2F{prefix}vault",
        "%2E%2E",
        "vault%2F..%2F..%2F{prefix}vault",
        "vault%252F{prefix}vault",
        "vault%5C..",
    ],
)
def test_alices_database_cannot_be_named_by_any_encoding(
    alice: ChromaUser, alice_data: AliceData, bob_http: httpx.Client, database: str
) -> None:
    name = database.format(prefix=alice_data.prefix)
    for response in (
        bob_http.get(f"{T}/databases/{name}"),
        bob_http.get(f"{T}/databases/{name}/collections"),
        bob_http.get(f"{T}/databases/{name}/collections/secrets"),
        bob_http.get(f"{T}/databases/{name}/collections/{alice_data.collection_id}/count"),
        bob_http.delete(f"{T}/databases/{name}"),
    ):
        # Either refused, or Bob's own (empty) database of that name: never Alice's.
        assert response.status_code in (400, 403, 404) or response.json() == [], response.text
        if response.status_code != 400:  # a 400 quotes the name Bob sent back to him
            assert alice.user_id.encode().hex() not in response.text
    assert_alice_untouched(alice, alice_data)


@pytest.mark.parametrize(
    "path",
    [
        f"{T}/databases/..",
        f"{T}/databases/./x",
        f"{T}//databases",
        f"{T}/databases/%2e%2e/collections",
        "/api/v2/tenants/default_tenant%2Fdatabases",
        "/api/v2/../v2/reset",
    ],
)
def test_ambiguous_paths_are_refused(bob: ChromaUser, path: str) -> None:
    # Sent over a bare socket: HTTP clients would normalise the dot segments before they left.
    host, port = bob.gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET /v1/chroma{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bob.token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status in (403, 404), answer


def test_the_database_list_shows_only_the_callers_own(
    alice: ChromaUser, alice_data: AliceData, bob_http: httpx.Client
) -> None:
    for name in ("b-one", "b-two", "b-three"):
        bob_http.post(f"{T}/databases", json={"name": name})
    names = [db["name"] for db in bob_http.get(f"{T}/databases").json()]
    assert {"vault", "b-one", "b-two", "b-three"} <= set(names)
    assert all("__" not in n for n in names)
    with alice.http() as http:
        assert "b-one" not in [db["name"] for db in http.get(f"{T}/databases").json()]

    paged = [db["name"] for db in bob_http.get(f"{T}/databases", params={"limit": 2, "offset": 1}).json()]
    assert paged == names[1:3]
    assert bob_http.get(f"{T}/databases", params={"limit": "many"}).status_code == 400


def test_records_name_the_users_database_without_the_prefix(bob_http: httpx.Client) -> None:
    record = bob_http.get(f"{T}/databases/vault").json()
    assert record["name"] == "vault" and record["tenant"] == "default_tenant"
    created = bob_http.post(
        f"{T}/databases/vault/collections", json={"name": "mine", "get_or_create": True}
    ).json()
    assert created["database"] == "vault"
    assert [c["database"] for c in bob_http.get(f"{T}/databases/vault/collections").json()] == ["vault"]


def test_error_messages_carry_no_namespace(bob: ChromaUser, bob_http: httpx.Client) -> None:
    again = bob_http.post(f"{T}/databases", json={"name": "vault"})
    assert again.status_code >= 400
    assert "vault" in again.text and bob.user_id.encode().hex() not in again.text
    missing = bob_http.get(f"{T}/databases/nothing-here")
    assert missing.status_code == 404
    assert "nothing-here" in missing.text and "__" not in missing.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/api/v2/reset", 403),
        ("POST", "/api/v2/tenants", 403),
        ("PATCH", "/api/v2/tenants/default_tenant", 403),
        ("GET", "/api/v2/tenants/other_tenant", 404),
        ("GET", "/api/v2/tenants/other_tenant/databases", 404),
        ("GET", "/api/v2/collections/default_tenant:vault:secrets", 403),
        (
            "POST",
            f"{T}/databases/vault/collections/00000000-0000-4000-8000-000000000000/functions/attach",
            403,
        ),
        ("GET", "/api/v2/something-new", 404),
        ("GET", "/api/v1/heartbeat", 404),
        ("DELETE", "/api/v2/heartbeat", 405),
    ],
)
def test_routes_off_the_allowlist_are_refused(
    bob_http: httpx.Client, method: str, path: str, status: int
) -> None:
    response = bob_http.request(method, path, json={"name": "x"} if method != "GET" else None)
    assert response.status_code == status, response.text
    assert response.json()["message"]


@pytest.mark.parametrize("field", ["name"])
def test_oversized_and_invalid_names_get_a_clear_400(bob_http: httpx.Client, field: str) -> None:
    too_long = bob_http.post(f"{T}/databases", json={field: "d" * 500})
    assert too_long.status_code == 400
    assert too_long.json()["error"] == "InvalidArgumentError"
    assert "at most" in too_long.json()["message"]
    for bad in ("a", "-leading", "dots..inside", "sp ace", "x" * 600):
        response = bob_http.post(f"{T}/databases", json={field: bad})
        assert response.status_code == 400, bad
    assert bob_http.post(f"{T}/databases", json={"nom": "vault"}).status_code == 400
    assert bob_http.post(f"{T}/databases", content=b"not json").status_code == 400
    assert bob_http.get(f"{T}/databases/vault/collections/by-id/not-a-uuid").status_code == 400


def test_identity_is_answered_by_the_gateway(
    bob: ChromaUser, bob_http: httpx.Client, chroma_tap: ChromaTap
) -> None:
    assert bob_http.get("/api/v2/auth/identity").json() == {
        "user_id": bob.user_id,
        "tenant": "default_tenant",
        "databases": ["default_database"],
    }
    assert not [s for s in chroma_tap.seen if s.raw_path.endswith("/auth/identity")]


def test_chroma_needs_a_user_whatever_api_auth_required_says(bob: ChromaUser) -> None:
    response = httpx.get(f"{bob.gateway.url}/v1/chroma/api/v2/heartbeat")
    assert response.status_code == 401
    assert response.json()["error"] == "AuthorizationError"


def test_the_gateways_key_replaces_the_users_credential(
    bob_http: httpx.Client, chroma_tap: ChromaTap
) -> None:
    before = len(chroma_tap.seen)
    bob_http.get(f"{T}/databases/vault", headers={"x-chroma-api-key": "bobs-own-guess"})
    (seen,) = chroma_tap.seen[before:]
    assert seen.headers["x-chroma-api-key"] == CHROMA_KEY
    assert "authorization" not in seen.headers


def test_nothing_reaches_chroma_unnamespaced(
    alice: ChromaUser, bob: ChromaUser, chroma_tap: ChromaTap
) -> None:
    # Runs last in this module: by now every test above has sent its traffic through the tap.
    prefixes = tuple(u.user_id.encode().hex() + "__" for u in (alice, bob))
    database_segment = re.compile(r"/databases/([^/?]+)")
    checked = 0
    for seen in chroma_tap.seen:
        for name in database_segment.findall(seen.raw_path):
            assert name.startswith(prefixes), seen
            checked += 1
        if seen.method == "POST" and seen.raw_path.endswith("/databases"):
            assert json.loads(seen.body)["name"].startswith(prefixes), seen
        assert not seen.raw_path.endswith(("/reset", "/tenants")), seen
    assert checked > 50


def test_chroma_requests_are_recorded_as_usage(bob: ChromaUser, bob_http: httpx.Client) -> None:
    bob_http.get(f"{T}/databases/vault")
    deadline = time.monotonic() + 10
    while True:
        usage = httpx.get(f"{bob.gateway.url}/v1/usage", params={"hours": 1}, headers=bob.headers).json()
        chroma = [row for row in usage["by_type"] if row["type"] == "chroma"]
        if chroma and chroma[0]["requests"] > 0:
            break
        assert time.monotonic() < deadline, usage
        time.sleep(0.2)
    assert usage["by_provider"][0]["provider"] == "chroma"
