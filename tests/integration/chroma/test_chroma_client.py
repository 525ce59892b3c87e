"""The official `chromadb` client through the gateway, as two users with the same names: each sees only theirs."""

from __future__ import annotations

import chromadb
import pytest

from tests.integration.chroma.conftest import ChromaUser

EMBEDDINGS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def admin(user: ChromaUser) -> chromadb.api.AdminAPI:
    return chromadb.AdminClient(
        chromadb.Settings(
            chroma_api_impl="chromadb.api.fastapi.FastAPI",
            chroma_server_host=f"{user.gateway.url}/v1/chroma",
            chroma_server_http_port=int(user.gateway.url.rsplit(":", 1)[1]),
            chroma_server_headers=user.headers,
            anonymized_telemetry=False,
        )
    )


def test_the_client_starts_on_the_users_own_default_database(alice: ChromaUser) -> None:
    client = alice.client()
    assert client.heartbeat() > 0
    assert client.list_collections() == []


def test_two_users_with_the_same_names_see_only_their_own(alice: ChromaUser, bob: ChromaUser) -> None:
    for user, word in ((alice, "apple"), (bob, "banana")):
        user.client()  # creates the user's default database
        admin(user).create_database("projects")
        collection = user.client("projects").create_collection("notes", embedding_function=None)
        collection.add(
            ids=["1", "2", "3"],
            embeddings=EMBEDDINGS,
            documents=[f"{word} one", f"{word} two", f"{word} three"],
        )

    for user, word in ((alice, "apple"), (bob, "banana")):
        client = user.client("projects")
        collection = client.get_collection("notes", embedding_function=None)
        assert collection.count() == 3
        found = collection.query(query_embeddings=[[1.0, 0.0, 0.0]], n_results=1)
        assert found["documents"] == [[f"{word} one"]]
        assert sorted(collection.get()["documents"] or []) == sorted(
            f"{word} {n}" for n in ("one", "two", "three")
        )
        assert [c.name for c in client.list_collections()] == ["notes"]
        assert collection.database == "projects"
        names = [db["name"] for db in admin(user).list_databases()]
        assert sorted(names) == ["default_database", "projects"]
        assert admin(user).get_database("projects")["name"] == "projects"


def test_a_collection_deleted_by_one_user_stays_for_the_other(alice: ChromaUser, bob: ChromaUser) -> None:
    for user in (alice, bob):
        user.client().create_collection("scratch", embedding_function=None).add(
            ids=["x"], embeddings=[[0.5, 0.5, 0.5]]
        )
    alice.client().delete_collection("scratch")
    with pytest.raises(Exception, match="does not exist"):
        alice.client().get_collection("scratch")
    assert bob.client().get_collection("scratch", embedding_function=None).count() == 1
