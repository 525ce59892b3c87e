"""Per-user namespacing of Chroma, in front of the proxy: names prefixed on the way in, stripped on the way out.

Requests: the route must be on the allowlist (`gateway.chroma.routes`); database names in the path, the query
string and JSON bodies are parsed, namespaced and re-serialised (never spliced as raw bytes); every collection id
is proven to belong to the caller's database before anything is forwarded. Responses: database and collection
records lose the prefix, the database list keeps only the caller's (paged after filtering), and error messages
are scrubbed of namespaces. The rewritten path and query go to the proxy in the scope.

A step of the pipeline, so on the middleware floor: it reads the body as `gateway.middleware.rewrite` does; what
Chroma's names and routes are is the chroma feature's (`gateway.chroma`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.chroma.names import DEFAULT_DATABASE, DEFAULT_TENANT, Namespace
from gateway.chroma.routes import DATABASES, DB, ChromaCall, Reply, match
from gateway.chroma.upstream import ChromaLookups
from gateway.context import RequestContext
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.fields import query_int
from gateway.jsonbody import parse_json_object
from gateway.middleware.rewrite import read_body, replaying

JSON_HEADERS = [(b"content-type", b"application/json")]
PAGING = ("limit", "offset")


class ChromaNamespaceMiddleware:
    """Turns a user's Chroma request into one on their own namespace, or refuses it."""

    def __init__(
        self, app: ASGIApp, *, lookups: ChromaLookups | None, separator: str, auth_header: str, max_bytes: int
    ) -> None:
        self.app = app
        self.lookups = lookups
        self.separator = separator
        self.auth_header = auth_header.encode("latin-1")
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.lookups is None:  # not configured: the endpoint says so
            await self.app(scope, receive, send)
            return
        context = RequestContext.of(scope)
        assert context is not None and context.principal is not None, "auth runs first and requires a user"
        namespace = Namespace(context.principal.user_id, self.separator)
        call = match(scope["method"], scope.get("raw_path") or scope["path"].encode("utf-8"))

        if call.reply is Reply.IDENTITY:
            await _send_json(send, 200, _identity(context.principal.user_id))
            return

        database = namespace.database(call.database) if call.database is not None else None
        if database is not None and call.database == DEFAULT_DATABASE:
            await self.lookups.ensure_database(database)
        if database is not None and call.collection_id is not None:
            await self.lookups.check_owner(database, call.collection_id)

        body = await self._body(scope, receive, namespace, creates_database=call.rule.pattern == DATABASES)
        if body is None:
            return  # the client left before sending its body
        query, paging = _query(scope.get("query_string", b""), namespace, call)
        path = "/" + "/".join(quote(s, safe="") for s in call.upstream_segments(database))
        forwarded = dict(scope)
        forwarded["path"] = path
        forwarded["raw_path"] = path.encode("ascii")
        forwarded["query_string"] = query
        forwarded["headers"] = self._headers(scope, len(body))
        if database is not None and scope["method"] == "DELETE" and call.rule.pattern == DB:
            self.lookups.forget_database(database)

        await self.app(forwarded, replaying(body, receive), _ResponseFilter(send, namespace, call, paging))

    def _headers(self, scope: Scope, length: int) -> list[tuple[bytes, bytes]]:
        # No compression (the gateway reads the answers it rewrites) and no Chroma key of the client's own.
        dropped = (b"content-length", b"transfer-encoding", b"accept-encoding", self.auth_header)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in dropped]
        if length or scope["method"] in ("POST", "PUT", "PATCH"):
            headers.append((b"content-length", str(length).encode("ascii")))
        return headers

    async def _body(
        self, scope: Scope, receive: Receive, namespace: Namespace, *, creates_database: bool
    ) -> bytes | None:
        body = await read_body(scope, receive, self.max_bytes)
        if body is None:
            return None
        if not body.strip():
            return body
        document = parse_json_object(body)
        changed = False
        if creates_database:
            name = document.get("name")
            if not isinstance(name, str):
                raise InvalidRequestError("A database needs a string `name`.", code="invalid_database_name")
            document["name"] = namespace.database(name)
            changed = True
        if "database" in document:
            if not isinstance(document["database"], str):
                raise InvalidRequestError("`database` must be a string.", param="database")
            document["database"] = namespace.database(document["database"])
            changed = True
        if "tenant" in document and document["tenant"] != DEFAULT_TENANT:
            raise NotFoundError(f"Tenant [{document['tenant']}] not found.", code="tenant_not_found")
        return orjson.dumps(document) if changed else body


def _query(raw: bytes, namespace: Namespace, call: ChromaCall) -> tuple[bytes, tuple[int, int | None]]:
    """The query string for Chroma (databases namespaced), and the paging the gateway applies itself."""
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    kept: list[tuple[str, str]] = []
    offset, limit = 0, None
    for key, value in pairs:
        if key == "database":
            value = namespace.database(value)
        elif key == "tenant" and value != DEFAULT_TENANT:
            raise NotFoundError(f"Tenant [{value}] not found.", code="tenant_not_found")
        elif call.reply is Reply.DATABASE_LIST and key in PAGING:
            number = query_int(value, param=key, low=0, high=None)
            offset, limit = (number, limit) if key == "offset" else (offset, number)
            continue
        kept.append((key, value))
    return urlencode(kept, quote_via=quote).encode("ascii"), (offset, limit)


def _identity(user_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "tenant": DEFAULT_TENANT, "databases": [DEFAULT_DATABASE]}


async def _send_json(send: Send, status: int, document: Any) -> None:
    body = orjson.dumps(document)
    await send({"type": "http.response.start", "status": status, "headers": [*JSON_HEADERS, _length(body)]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode("ascii"))


class _ResponseFilter:
    """The `send` that rewrites Chroma's answer: records and lists rewritten, errors scrubbed, the rest streamed."""

    def __init__(
        self, send: Send, namespace: Namespace, call: ChromaCall, paging: tuple[int, int | None]
    ) -> None:
        self.send = send
        self.namespace = namespace
        self.call = call
        self.paging = paging
        self.start: Message | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            if status >= 400 or (status < 300 and self.call.reply is not Reply.PASS):
                self.start = message  # held until the whole body is in
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._send_rewritten(self.start, b"".join(self.chunks))
            return
        await self.send(message)

    async def _send_rewritten(self, start: Message, body: bytes) -> None:
        status: int = start["status"]
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        if status >= 400:
            body = self.namespace.scrub(body.decode("utf-8", "replace")).encode("utf-8")
        else:
            try:
                body = orjson.dumps(self._rewrite(orjson.loads(body)))
            except orjson.JSONDecodeError:
                body = self.namespace.scrub(body.decode("utf-8", "replace")).encode("utf-8")
        await self.send({**start, "headers": [*headers, _length(body)]})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    def _rewrite(self, document: Any) -> Any:
        ns = self.namespace
        reply = self.call.reply
        if reply is Reply.DATABASE_LIST:
            if not isinstance(document, list):
                return []  # fail closed: a list the gateway cannot filter is shown empty
            own = [
                {**record, "name": ns.strip(record["name"])}
                for record in document
                if isinstance(record, dict)
                and isinstance(record.get("name"), str)
                and ns.owns(record["name"])
            ]
            offset, limit = self.paging
            return own[offset:] if limit is None else own[offset : offset + limit]
        if reply is Reply.DATABASE and isinstance(document, dict) and isinstance(document.get("name"), str):
            return {**document, "name": ns.strip(document["name"])}
        if reply is Reply.COLLECTIONS:
            if isinstance(document, list):
                return [self._collection(record) for record in document]
            return self._collection(document)
        return document

    def _collection(self, record: Any) -> Any:
        if isinstance(record, dict) and isinstance(record.get("database"), str):
            return {**record, "database": self.namespace.strip(record["database"])}
        return record
