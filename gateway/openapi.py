"""The gateway's OpenAPI 3.1 document, assembled from the operation each route is declared with (`ApiRoute`), so
that the routes and their description are written once, side by side, and cannot drift apart.

Starlette's own `SchemaGenerator` reads each endpoint's docstring as YAML: our endpoints' docstrings are prose,
the proxied endpoints are `ReverseProxy` instances (no docstring of their own per route), and a schema kept in
a docstring is checked by nothing. Here an operation is data next to its route, and a test compares the document
with the routes the app serves.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from gateway import __version__

Schema = dict[str, Any]

JSON = "application/json"
# What a route declared without methods (the Chroma pass-through) is documented with: the methods an API uses.
ANY_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PARAMETER = re.compile(r"\{(\w+)(?::\w+)?\}")

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "description": "ISO 8601, UTC"}
HASH: Schema = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}
ANY_OBJECT: Schema = {"type": "object", "additionalProperties": True}
# Text a route stores or looks up: no NUL (`gateway.fields`; a lone surrogate has no JSON form a parser takes), and
# not blank.
TEXT: Schema = {"type": "string", "pattern": "^[^\\u0000]*[^\\u0000\\s][^\\u0000]*$"}

# The credentials an operation takes, by the names of the document's security schemes.
BEARER = "bearer"  # a platform JWT, an API token or an agent key
SESSION = "session"  # the gw_session cookie
USAGE_KEY = "usageKey"  # the operator's USAGE_API_KEY in x-usage-key
USER = (BEARER, SESSION)

ERROR_ENVELOPE: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "properties": {
                "message": STRING,
                "type": STRING,
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}
ERRORS = {
    400: "The request is invalid (malformed JSON, a bad field or parameter)",
    401: "A credential is missing, invalid, expired or revoked",
    403: "The credential may not do this (scope, credential kind, foreign leaf, cross-site request)",
    404: "No such resource, or it is another user's",
    409: "It already exists",
    413: "The body is over its limit",
    415: "The body is not of a type this route takes",
    426: "The route speaks WebSocket only",
    429: "Too many attempts, or a quota is exhausted (Retry-After)",
    502: "The upstream failed or broke off",
    503: "A dependency is away (database, credential checks, usage journal, upstream pool, configuration)",
    504: "The upstream sent no response headers in time",
}
# Every route may answer these: its database, or the usage journal, may be away.
ALWAYS = (503,)


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None) -> Schema:
    """A JSON object with these fields (further fields allowed: a client must ignore what it does not know)."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def data_of(item: Schema) -> Schema:
    """The API's list shape: `{"data": [item, ...]}`."""
    return obj({"data": {"type": "array", "items": item}})


@dataclass(frozen=True, slots=True)
class Reply:
    """One response of an operation: a JSON body by default; `schema=None` with no media type: no body."""

    description: str
    schema: Schema | None = None
    media_type: str | None = JSON
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> description
    also: Mapping[str, Schema] = field(default_factory=dict)  # other media types it may come as, with theirs


EMPTY = Reply("Done; no body", media_type=None)


@dataclass(frozen=True, slots=True)
class Operation:
    """What one method of a route takes and answers. `errors` are the statuses of the error envelope it may
    answer besides `ALWAYS`; `security` the credentials it takes (none: public), `auth_optional` when it may be
    called without one too; `passthrough` describes the upstream's own answers, which pass unchanged."""

    summary: str
    responses: Mapping[int, Reply]
    errors: Collection[int] = ()
    body: Schema | None = None
    body_required: bool = True
    body_media_type: str = JSON
    query: Mapping[str, Schema] = field(default_factory=dict)
    required_query: Collection[str] = ()
    path: Mapping[str, Schema] = field(default_factory=dict)  # a path parameter's form (default: any string)
    security: Sequence[str] = ()
    auth_optional: bool = False
    passthrough: str | None = None


class ApiRoute(Route):
    """A Starlette `Route` with the operation each of its methods is documented by (one for all of them)."""

    def __init__(self, path: str, endpoint: Any, *, operation: Operation, **options: Any) -> None:
        super().__init__(path, endpoint, **options)
        self.operation = operation

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The route's endpoint; for a method it does not take, 405 allowing every method of the path, whichever
        route serves it (Starlette's own 405 names only the methods of the first route the path matched, while
        the gateway declares one route per method)."""
        if self.methods is not None and scope["method"] not in self.methods:
            raise HTTPException(405, headers={"Allow": ", ".join(path_methods(scope))})
        await super().handle(scope, receive, send)


def path_methods(scope: Scope) -> list[str]:
    """The methods the routes of the scope's router take at the scope's path, sorted."""
    router = scope.get("router")
    routes = router.routes if router is not None else []
    path = scope.get("route_path") or scope["path"]
    allowed: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods is not None and route.path_regex.match(path):
            allowed |= route.methods
    return sorted(allowed)


def served_methods(route: Route) -> list[str]:
    """The methods `route` answers, as documented: HEAD (Starlette's, alongside GET) left out."""
    if route.methods is None:
        return list(ANY_METHODS)
    return sorted(method for method in route.methods if method != "HEAD")


def openapi_path(route: Route) -> str:
    """The route's path in OpenAPI's form: `{name}` for every parameter, whatever its convertor."""
    return PARAMETER.sub(r"{\1}", route.path)


def document(routes: Iterable[BaseRoute], *, title: str = "gateway") -> Schema:
    """The OpenAPI 3.1 document of the HTTP routes among `routes` (a WebSocket route has no place in it).

    Raises `TypeError` for an HTTP route declared without its operation: every route the gateway serves is
    documented."""
    paths: dict[str, dict[str, Schema]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        if not isinstance(route, ApiRoute):
            raise TypeError(f"{route.path} is declared without its operation (gateway.openapi.ApiRoute)")
        item = paths.setdefault(openapi_path(route), {})
        for method in served_methods(route):
            item[method.lower()] = _operation(route, route.operation)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_ENVELOPE},
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A platform JWT, an API token (gw_...) or an agent key (ak_...)",
                },
                SESSION: {"type": "apiKey", "in": "cookie", "name": "gw_session"},
                USAGE_KEY: {"type": "apiKey", "in": "header", "name": "x-usage-key"},
            },
        },
    }


def _operation(route: Route, operation: Operation) -> Schema:
    parameters: list[Schema] = [
        {"name": name, "in": "path", "required": True, "schema": operation.path.get(name, STRING)}
        for name in route.param_convertors
    ]
    parameters += [
        {"name": name, "in": "query", "required": name in operation.required_query, "schema": schema}
        for name, schema in operation.query.items()
    ]
    security: list[Schema] = [{name: []} for name in operation.security]
    if operation.auth_optional:
        security.append({})
    described: Schema = {"summary": operation.summary, "security": security}
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None:
        described["requestBody"] = {
            "required": operation.body_required,
            "content": {operation.body_media_type: {"schema": operation.body}},
        }
    responses = {str(status): _reply(reply) for status, reply in operation.responses.items()}
    for status in sorted({*operation.errors, *ALWAYS}):
        responses.setdefault(str(status), _error(status))
    if operation.passthrough is not None:
        responses["default"] = {"description": operation.passthrough}
    described["responses"] = responses
    return described


def _reply(reply: Reply) -> Schema:
    described: Schema = {"description": reply.description}
    if reply.media_type is not None:
        described["content"] = {
            reply.media_type: {"schema": reply.schema if reply.schema is not None else {}},
            **{media_type: {"schema": schema} for media_type, schema in reply.also.items()},
        }
    if reply.headers:
        described["headers"] = {
            name: {"description": text, "schema": STRING} for name, text in reply.headers.items()
        }
    return described


def _error(status: int) -> Schema:
    described: Schema = {
        "description": ERRORS[status],
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status == 429:
        described["headers"] = {"Retry-After": {"description": "Seconds to wait", "schema": STRING}}
    return described


class OpenApiDocument:
    """`GET /openapi.json`: the document of the app that serves it, built at its first request (the routes are
    fixed once the app is built)."""

    def __init__(self) -> None:
        self._rendered: bytes | None = None

    async def serve(self, request: Request) -> Response:
        if self._rendered is None:
            self._rendered = orjson.dumps(document(request.app.routes))
        return Response(self._rendered, media_type=JSON)


OPENAPI = Operation(
    "This document",
    {200: Reply("The gateway's OpenAPI 3.1 document", {"type": "object", "required": ["openapi", "paths"]})},
)
