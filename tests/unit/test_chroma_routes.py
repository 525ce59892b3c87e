"""The Chroma allowlist: what each path addresses, and what is refused before any name is looked at."""

from __future__ import annotations

import uuid

import pytest

from gateway.chroma.routes import Reply, match
from gateway.errors import InvalidRequestError, MethodNotAllowedError, NotFoundError, PermissionDeniedError

DB = "/v1/chroma/api/v2/tenants/default_tenant/databases"
ID = "3f1c7b9e-0c7a-4c55-9d3e-1b2a3c4d5e6f"


def test_a_collection_route_names_its_database_and_id() -> None:
    call = match("POST", f"{DB}/mine/collections/{ID.upper()}/query".encode())
    assert call.database == "mine" and call.collection_id == uuid.UUID(ID)
    assert call.upstream_segments("ns__mine")[5] == "ns__mine"
    assert call.upstream_segments("ns__mine")[7] == ID  # canonical form, whatever the client sent


def test_path_segments_are_decoded_once() -> None:
    assert match("GET", f"{DB}/my%2Ddb".encode()).database == "my-db"


@pytest.mark.parametrize(
    ("method", "path", "reply"),
    [
        ("GET", "/v1/chroma/api/v2/auth/identity", Reply.IDENTITY),
        ("GET", DB, Reply.DATABASE_LIST),
        ("GET", f"{DB}/x1y", Reply.DATABASE),
        ("POST", f"{DB}/x1y/collections", Reply.COLLECTIONS),
        ("GET", f"{DB}/x1y/collections/by-id/{ID}", Reply.COLLECTIONS),
        ("POST", f"{DB}/x1y/collections/{ID}/add", Reply.PASS),
    ],
)
def test_allowed_routes(method: str, path: str, reply: Reply) -> None:
    assert match(method, path.encode()).reply is reply


@pytest.mark.parametrize(
    ("method", "path", "error"),
    [
        ("POST", "/v1/chroma/api/v2/reset", PermissionDeniedError),
        ("POST", "/v1/chroma/api/v2/tenants", PermissionDeniedError),
        ("PATCH", "/v1/chroma/api/v2/tenants/default_tenant", PermissionDeniedError),
        ("GET", "/v1/chroma/api/v2/collections/t:d:c", PermissionDeniedError),
        ("GET", f"{DB}/a%2Fb", PermissionDeniedError),
        ("GET", f"{DB}/a%5cb", PermissionDeniedError),
        ("GET", f"{DB}/..", PermissionDeniedError),
        ("GET", f"{DB}/%2e%2e", PermissionDeniedError),
        ("GET", f"{DB}//x", PermissionDeniedError),
        ("GET", f"{DB}/a%00b", PermissionDeniedError),
        ("GET", f"{DB}/%ff", PermissionDeniedError),
        ("GET", "/v1/chroma/api/v2/tenants/other/databases", NotFoundError),
        ("GET", "/v1/chroma/api/v2/new-thing", NotFoundError),
        ("GET", "/v1/chroma", NotFoundError),
        ("DELETE", "/v1/chroma/api/v2/version", MethodNotAllowedError),
        ("GET", f"{DB}/x1y/collections/by-id/not-a-uuid", InvalidRequestError),
        ("GET", f"{DB}/x1y/collections/a", InvalidRequestError),
    ],
)
def test_refused_routes(method: str, path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        match(method, path.encode())
