"""The gateway's own errors on `/v1/chroma` in Chroma's format, so that the official client raises its own types;
and the routes the client calls that the allowlist once missed (`by-id`, the async heartbeat)."""

from __future__ import annotations

import asyncio
import uuid

import chromadb
import httpx
import pytest
from chromadb.api.base_http_client import BaseHTTPClient
from chromadb.errors import AuthorizationError, NotFoundError

from tests.integration.chroma.conftest import ChromaUser

OPERATIONS_ON_A_COLLECTION = ("add", "get", "count", "peek", "query", "upsert", "update", "delete", "modify")


def _operate(collection: chromadb.Collection, operation: str) -> None:
    calls = {
        "add": lambda: collection.add(ids=["a"], embeddings=[[1.0, 2.0]]),
        "get": lambda: collection.get(),
        "count": lambda: collection.count(),
        "peek": lambda: collection.peek(),
        "query": lambda: collection.query(query_embeddings=[[1.0, 2.0]], n_results=1),
        "upsert": lambda: collection.upsert(ids=["a"], embeddings=[[1.0, 2.0]]),
        "update": lambda: collection.update(ids=["a"], embeddings=[[1.0, 2.0]]),
        "delete": lambda: collection.delete(ids=["a"]),
        "modify": lambda: collection.modify(metadata={"k": "v"}),
    }
    calls[operation]()


@pytest.mark.parametrize("operation", OPERATIONS_ON_A_COLLECTION)
def test_an_operation_on_a_deleted_collection_raises_not_found(alice: ChromaUser, operation: str) -> None:
    client = alice.client()
    name = f"gone-{uuid.uuid4().hex[:8]}"
    collection = client.create_collection(name)
    client.delete_collection(name)
    with pytest.raises(NotFoundError, match=r"Collection \[.*\] does not exist"):
        _operate(collection, operation)


def test_the_async_client_gets_not_found_and_its_heartbeat(alice: ChromaUser) -> None:
    async def scenario() -> None:
        client = await chromadb.AsyncHttpClient(
            host=f"{alice.gateway.url}/v1/chroma",
            headers=alice.headers,
            settings=chromadb.Settings(anonymized_telemetry=False),
        )
        assert await client.heartbeat() > 0
        name = f"gone-{uuid.uuid4().hex[:8]}"
        collection = await client.create_collection(name)
        await client.delete_collection(name)
        with pytest.raises(NotFoundError):
            await collection.count()
        with pytest.raises(NotFoundError):
            await collection.add(ids=["a"], embeddings=[[1.0, 2.0]])

    asyncio.run(scenario())


def test_get_collection_by_id_is_ones_own_only(alice: ChromaUser, bob: ChromaUser) -> None:
    own = alice.client().create_collection(f"by-id-{uuid.uuid4().hex[:8]}")
    assert alice.client().get_collection_by_id(own.id).name == own.name
    with pytest.raises(NotFoundError, match=rf"Collection \[{own.id}\] does not exist"):
        bob.client().get_collection_by_id(own.id)


def test_unknown_and_refused_routes_answer_in_chromas_format(alice: ChromaUser) -> None:
    with alice.http() as http:
        unknown = http.get("/api/v2/no-such-route")
        refused = http.post("/api/v2/reset")
        bad_id = http.get("/api/v2/tenants/default_tenant/databases/default_database/collections/x/count")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "NotFoundError",
        "message": "Unknown Chroma route.",
        "code": "not_found",
        "param": None,
    }
    assert refused.status_code == 403
    assert refused.json()["error"] == "AuthError"
    assert "empties the whole server" in refused.json()["message"]
    assert bad_id.status_code == 400
    assert bad_id.json()["error"] == "InvalidArgumentError"


def test_a_bad_credential_is_chromas_authorization_error(alice: ChromaUser) -> None:
    response = httpx.get(
        f"{alice.gateway.url}/v1/chroma/api/v2/heartbeat", headers={"authorization": "Bearer not-a-token"}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "AuthorizationError"
    assert "www-authenticate" in response.headers
    with pytest.raises(AuthorizationError):  # the official client's own mapping of an answer to its type
        BaseHTTPClient._raise_chroma_error(response)


def test_a_path_the_router_cannot_match_is_still_answered_in_chromas_format(alice: ChromaUser) -> None:
    """A newline in the path (`%0A`, decoded by the server) falls past the Chroma route's pattern to the router's
    own 404, which once came in the OpenAI envelope (the fuzzer found it): the error path answers in Chroma's
    format for the whole prefix, with or without a credential."""
    with alice.http() as http:
        newline = http.get("/api/v2/%0A/heartbeat")
    anonymous = httpx.get(f"{alice.gateway.url}/v1/chroma/api/v2/%0A/x")
    for response in (newline, anonymous):
        assert (response.status_code, response.json()["error"]) == (404, "NotFoundError"), response.text
        with pytest.raises(NotFoundError):  # the official client's own mapping of an answer to its type
            BaseHTTPClient._raise_chroma_error(response)
