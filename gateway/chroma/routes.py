"""The Chroma routes a user may call, and what each one addresses: an allowlist, not a blocklist.

A request path is split on its raw (still percent-encoded) slashes, each segment decoded once and checked, then
matched against the tables below: every route of Chroma's v2 API is in ALLOWED or in REFUSED (403, with its
reason: they reach across users or change the server); anything else is 404. Paths that could mean something else
to another parser (encoded slashes or backslashes, `.` and `..` segments, empty segments) are 403 before matching.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.chroma.names import DEFAULT_TENANT, check_name
from gateway.errors import InvalidRequestError, MethodNotAllowedError, NotFoundError, PermissionDeniedError

PREFIX = "/v1/chroma"
DATABASES = ("api", "v2", "tenants", "{tenant}", "databases")
DB = (*DATABASES, "{database}")
COLLECTION = (*DB, "collections", "{collection_id}")


class Reply(enum.Enum):
    """What the gateway does with the upstream's answer (or instead of it)."""

    PASS = "pass"  # streamed back as it is
    IDENTITY = "identity"  # answered by the gateway, never forwarded
    DATABASE_LIST = "database_list"  # filtered to the caller's, prefixes stripped, then paged
    DATABASE = "database"  # one database record, prefix stripped
    COLLECTIONS = "collections"  # collection record(s): the `database` field stripped


@dataclass(frozen=True, slots=True)
class Rule:
    methods: frozenset[str]
    pattern: tuple[str, ...]
    reply: Reply = Reply.PASS


def _rule(methods: str, pattern: tuple[str, ...] | str, reply: Reply = Reply.PASS) -> Rule:
    parts = tuple(pattern.split("/")) if isinstance(pattern, str) else pattern
    return Rule(frozenset(methods.split()), parts, reply)


# Every route of Chroma's v2 API (`chroma run` of the pinned chromadb, its /openapi.json, and `GET /api/v2`, the
# async client's heartbeat) is either here or in REFUSED below.
ALLOWED = (
    _rule("GET", "api/v2"),
    _rule("GET", "api/v2/heartbeat"),
    _rule("GET", "api/v2/version"),
    _rule("GET", "api/v2/healthcheck"),
    _rule("GET", "api/v2/pre-flight-checks"),
    _rule("GET", "api/v2/auth/identity", Reply.IDENTITY),
    _rule("GET", "api/v2/tenants/{tenant}"),
    _rule("GET", DATABASES, Reply.DATABASE_LIST),
    _rule("POST", DATABASES),
    _rule("GET", DB, Reply.DATABASE),
    _rule("DELETE", DB),
    _rule("GET POST", (*DB, "collections"), Reply.COLLECTIONS),
    _rule("GET", (*DB, "collections_count")),
    _rule("GET", (*DB, "collections", "by-id", "{collection_id}"), Reply.COLLECTIONS),
    # GET and DELETE address a collection by name inside the database; PUT by id, anywhere (hence the check).
    _rule("GET DELETE", (*DB, "collections", "{collection_name}"), Reply.COLLECTIONS),
    _rule("PUT", COLLECTION),
    *(
        _rule("POST", (*COLLECTION, op))
        for op in ("add", "upsert", "update", "delete", "get", "query", "search")
    ),
    *(_rule("GET", (*COLLECTION, op)) for op in ("count", "indexing_status", "fork_count")),
    _rule("POST", (*COLLECTION, "fork"), Reply.COLLECTIONS),
)
# Known Chroma routes that no user may call through the gateway, whatever the method (403), each with its reason.
REFUSED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("api", "v2", "reset"), "it empties the whole server, every user's data"),
    (("api", "v2", "tenants"), "creating tenants is the operator's; users share one tenant"),
    (("api", "v2", "tenants", "{any}"), "renaming (PATCH) the tenant all users share is the operator's"),
    (
        ("api", "v2", "collections", "{any}"),
        "a collection by CRN names it outside any database: no ownership check",
    ),
    (
        (*COLLECTION, "attached_functions", "{any}", "detach"),
        "functions run server-side code on Chroma's account",
    ),
    ((*COLLECTION, "functions", "attach"), "functions run server-side code on Chroma's account"),
    ((*COLLECTION, "functions", "{any}"), "functions run server-side code on Chroma's account"),
)
UNSAFE_ESCAPES = ("%2f", "%5c", "%00")


@dataclass(frozen=True, slots=True)
class ChromaCall:
    """One allowed request, with the names it addresses as the user sent them."""

    rule: Rule
    segments: tuple[str, ...]  # decoded; placeholders still hold the user's values
    database: str | None = None
    collection_id: uuid.UUID | None = None

    @property
    def reply(self) -> Reply:
        return self.rule.reply

    def upstream_segments(self, chroma_database: str | None) -> tuple[str, ...]:
        """The path segments to send Chroma: the database namespaced, the collection id in canonical form."""
        out = list(self.segments)
        for i, part in enumerate(self.rule.pattern):
            if part == "{database}" and chroma_database is not None:
                out[i] = chroma_database
            elif part == "{collection_id}" and self.collection_id is not None:
                out[i] = str(self.collection_id)
        return tuple(out)


def split_path(raw_path: bytes) -> tuple[str, ...]:
    """The decoded segments of a `/v1/chroma/...` path; 403 for anything ambiguous."""
    try:
        text = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise _unsafe() from None
    if not text.startswith(PREFIX):
        raise _unsafe()
    rest = text[len(PREFIX) :]
    if rest in ("", "/"):
        raise NotFoundError("Unknown Chroma route.")
    if not rest.startswith("/"):
        raise _unsafe()
    segments = []
    for raw in rest[1:].split("/"):
        if any(escape in raw.lower() for escape in UNSAFE_ESCAPES):
            raise _unsafe()
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise _unsafe() from None
        if segment in ("", ".", "..") or "\\" in segment or not segment.isprintable():
            raise _unsafe()
        segments.append(segment)
    return tuple(segments)


def match(method: str, raw_path: bytes) -> ChromaCall:
    """The allowed call `method raw_path` makes, or the error that refuses it."""
    segments = split_path(raw_path)
    path_known = False
    for rule in ALLOWED:
        values = _bind(rule.pattern, segments)
        if values is None:
            continue
        path_known = True
        if method not in rule.methods:
            continue
        return _call(rule, segments, values)
    for pattern, reason in REFUSED:
        if _bind(pattern, segments) is not None:
            raise PermissionDeniedError(f"This Chroma route is not available through the gateway: {reason}.")
    if path_known:
        allowed = sorted(
            {m for rule in ALLOWED if _bind(rule.pattern, segments) is not None for m in rule.methods}
        )
        raise MethodNotAllowedError(headers={"Allow": ", ".join(allowed)})
    raise NotFoundError("Unknown Chroma route.")


def _bind(pattern: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    values: dict[str, str] = {}
    for part, segment in zip(pattern, segments, strict=True):
        if part.startswith("{"):
            values[part[1:-1]] = segment
        elif part != segment:
            return None
    return values


def _call(rule: Rule, segments: tuple[str, ...], values: dict[str, str]) -> ChromaCall:
    tenant = values.get("tenant")
    if tenant is not None and tenant != DEFAULT_TENANT:
        raise NotFoundError(f"Tenant [{tenant}] not found.", code="tenant_not_found")
    if "collection_name" in values:
        check_name(values["collection_name"], what="collection")
    collection_id = None
    if "collection_id" in values:
        try:
            collection_id = uuid.UUID(values["collection_id"])
        except ValueError:
            raise InvalidRequestError(
                "A collection id must be a UUID.", code="invalid_collection_id", param="collection_id"
            ) from None
    return ChromaCall(rule, segments, database=values.get("database"), collection_id=collection_id)


def _unsafe() -> PermissionDeniedError:
    return PermissionDeniedError(
        "The Chroma path is ambiguous (encoded or relative segments); it was not sent."
    )
