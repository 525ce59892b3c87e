"""ChromaNamespaceMiddleware against a scripted Chroma: what goes in is namespaced, what comes out is the caller's.

The real-server tests (tests/integration/chroma) cannot make Chroma fail on demand or list foreign names in an
error; this stand-in can.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.principals import SESSION, Principal
from gateway.chroma.names import Namespace
from gateway.context import RequestContext
from gateway.middleware.chroma import ChromaNamespaceMiddleware
from gateway.routing import Gateway
from tests.serving import LiveServer

USER = "usr_caller"
MINE = Namespace(USER, "__")
THEIRS = Namespace("usr_other", "__")
T = "/v1/chroma/api/v2/tenants/default_tenant"


class SignedIn:
    """Stands in for the auth middleware: every request is USER's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = RequestContext.of(scope)
        assert context is not None
        context.principal = Principal(user_id=USER, kind=SESSION)
        await self.app(scope, receive, send)


class Lookups:
    async def ensure_database(self, database: str) -> None:
        pass

    async def check_owner(self, database: str, collection_id: uuid.UUID) -> None:
        pass

    def forget_database(self, database: str) -> None:
        pass


async def scripted_chroma(request: Request) -> Response:
    """Answers as Chroma would, from the namespaced path the middleware forwarded."""
    path = request.scope["raw_path"].decode()
    received = {"path": path, "query": request.url.query, "body": (await request.body()).decode()}
    if path.endswith("/databases") and request.method == "GET":
        names = [
            MINE.database("one"),
            THEIRS.database("secret"),
            MINE.database("two"),
            MINE.database("three"),
        ]
        return JSONResponse(
            [{"id": str(i), "name": n, "tenant": "default_tenant"} for i, n in enumerate(names)]
        )
    if path.endswith(MINE.database("broken")):
        message = f"internal: [{MINE.database('broken')}] near [{THEIRS.database('secret')}]"
        return JSONResponse({"error": "InternalError", "message": message}, status_code=500)
    return JSONResponse(received)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    chain = [
        Middleware(SignedIn),
        Middleware(
            ChromaNamespaceMiddleware,
            lookups=Lookups(),
            separator="__",
            auth_header="x-chroma-api-key",
            max_bytes=1000,
        ),
    ]
    app = Gateway(
        routes=[
            Route(
                "/v1/chroma/{path:path}", scripted_chroma, methods=["GET", "POST", "DELETE"], middleware=chain
            )
        ],
    )
    with LiveServer(app) as live:
        yield live.url


def test_the_database_list_is_filtered_stripped_then_paged(server: str) -> None:
    everything = httpx.get(f"{server}{T}/databases").json()
    assert [db["name"] for db in everything] == ["one", "two", "three"]
    paged = httpx.get(f"{server}{T}/databases", params={"offset": 1, "limit": 1}).json()
    assert [db["name"] for db in paged] == ["two"]


def test_a_server_error_keeps_its_status_and_loses_every_namespace(server: str) -> None:
    response = httpx.get(f"{server}{T}/databases/broken")
    assert response.status_code == 500
    message = response.json()["message"]
    assert message == "internal: [broken] near [[hidden]]"
    assert b"usr_other".hex() not in response.text


def test_create_database_names_are_namespaced_in_the_body(server: str) -> None:
    forwarded = httpx.post(f"{server}{T}/databases", json={"name": "fresh"}).json()
    assert json.loads(forwarded["body"]) == {"name": MINE.database("fresh")}


def test_a_database_field_in_any_body_and_the_query_string_are_namespaced(server: str) -> None:
    forwarded: dict[str, Any] = httpx.post(
        f"{server}{T}/databases/mine/collections",
        params={"database": "other", "tenant": "default_tenant"},
        json={"name": "c01", "database": "other"},
    ).json()
    assert (
        forwarded["path"] == f"/api/v2/tenants/default_tenant/databases/{MINE.database('mine')}/collections"
    )
    assert json.loads(forwarded["body"])["database"] == MINE.database("other")
    assert f"database={MINE.database('other')}" in forwarded["query"]


def test_another_tenant_in_the_body_or_query_is_not_found(server: str) -> None:
    assert httpx.post(f"{server}{T}/databases", json={"name": "abc", "tenant": "t2"}).status_code == 404
    assert httpx.get(f"{server}{T}/databases/abc", params={"tenant": "t2"}).status_code == 404


def test_bodies_over_the_limit_are_413(server: str) -> None:
    assert httpx.post(f"{server}{T}/databases", json={"name": "x" * 2000}).status_code == 413
