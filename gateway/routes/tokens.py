"""`/v1/api-tokens`: a user lists, creates and revokes their API tokens, and sets their budgets and rate limits
(platform JWT only). A change of limits reaches every instance's cached principals as revocations do."""

from __future__ import annotations

import time
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth.principals import Principal
from gateway.auth.revocations import LIMITS, TOKEN, Revocations
from gateway.auth.tokens import (
    KNOWN_SCOPES,
    PROXY_SCOPES,
    TokenCodec,
    create_api_token,
    list_api_tokens,
    revoke_api_token,
)
from gateway.budgets.limits import LimitChanges, owner, parse_limits
from gateway.budgets.store import set_limits
from gateway.budgets.views import LIMITS_VIEW, LimitViews, limit_views
from gateway.context import RequestContext
from gateway.db.base import iso, utcnow
from gateway.db.engine import Database
from gateway.db.models import ApiToken
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.fields import is_id
from gateway.openapi import EMPTY, STRING, TIME, USER, Operation, Reply, data_of, nullable, obj
from gateway.routes.bodies import json_object, optional_string

MAX_EXPIRY_DAYS = 3650
TOKEN_ID_PREFIX = "tok"  # gateway.auth.tokens


def token_json(record: ApiToken, limits: LimitViews | None = None) -> dict[str, object]:
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "scopes": record.scopes,
        "created_at": iso(record.created_at),
        "last_used_at": iso(record.last_used_at),
        "expires_at": iso(record.expires_at),
        "revoked_at": iso(record.revoked_at),
        "limits": limits or {},
    }


def token_owner(token_id: str) -> str:
    return owner("token", token_id)


def caller(request: Request) -> Principal:
    context = RequestContext.of(request.scope)
    assert context is not None and isinstance(context.principal, Principal), "route mounted without auth"
    return context.principal


class TokenRoutes:
    def __init__(self, database: Database, codec: TokenCodec, revocations: Revocations) -> None:
        self.database = database
        self.codec = codec
        self.revocations = revocations

    async def list(self, request: Request) -> JSONResponse:
        async with self.database.session() as session:
            records = await list_api_tokens(session, caller(request).user_id)
            views = await limit_views(session, [token_owner(record.id) for record in records])
        return JSONResponse(
            {"data": [token_json(record, views.get(token_owner(record.id))) for record in records]}
        )

    async def create(self, request: Request) -> JSONResponse:
        body = await json_object(request, require_json_type=True)
        name = optional_string(body, "name", column=ApiToken.name) or ""
        scopes = _scopes(body.get("scopes"))
        expires_at = None
        if (days := body.get("expires_in_days")) is not None:
            if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_EXPIRY_DAYS:
                raise InvalidRequestError(
                    f"expires_in_days must be a whole number from 1 to {MAX_EXPIRY_DAYS}.",
                    param="expires_in_days",
                )
            expires_at = utcnow() + timedelta(days=days)
        limits = parse_limits(body["limits"]) if body.get("limits") is not None else None
        async with self.database.session() as session:
            async with session.begin():
                record, raw = await create_api_token(
                    session,
                    self.codec,
                    user_id=caller(request).user_id,
                    name=name,
                    scopes=scopes,
                    expires_at=expires_at,
                )
                if limits is not None:
                    await set_limits(session, token_owner(record.id), limits, now=time.time())
            views = await limit_views(session, [token_owner(record.id)])
        return JSONResponse(
            {**token_json(record, views.get(token_owner(record.id))), "token": raw}, status_code=201
        )

    async def update(self, request: Request) -> JSONResponse:
        """`PATCH /v1/api-tokens/{id}` with `{"limits": {...}}`: each kind given is set (null removes it), the
        others stay; honoured by every instance within a second."""
        token_id = request.path_params["token_id"]
        if not is_id(token_id, TOKEN_ID_PREFIX):
            raise NotFoundError("No such API token.")
        body = await json_object(request, require_json_type=True)
        if "limits" not in body:
            raise InvalidRequestError("Give the token's new limits as limits.", param="limits")
        changes: LimitChanges = parse_limits(body["limits"])
        async with self.database.session() as session:
            async with session.begin():
                records = await list_api_tokens(session, caller(request).user_id)
                record = next((found for found in records if found.id == token_id), None)
                if record is None:
                    raise NotFoundError("No such API token.")
                await set_limits(session, token_owner(token_id), changes, now=time.time())
                target = await self.revocations.announce(session, LIMITS, token_owner(token_id))
            self.revocations.apply(target)
            views = await limit_views(session, [token_owner(token_id)])
        return JSONResponse(token_json(record, views.get(token_owner(token_id))))

    async def revoke(self, request: Request) -> Response:
        token_id = request.path_params["token_id"]
        if not is_id(token_id, TOKEN_ID_PREFIX):
            raise NotFoundError("No such API token.")
        async with self.database.session() as session:
            async with session.begin():
                record = await revoke_api_token(session, user_id=caller(request).user_id, token_id=token_id)
                if record is None:
                    raise NotFoundError("No such API token.")
                target = await self.revocations.announce(session, TOKEN, record.id)
            self.revocations.apply(target)
        return Response(status_code=204)


def _scopes(value: object) -> list[str]:
    if value is None:
        return sorted(PROXY_SCOPES)  # sorted, as given scopes are
    if not isinstance(value, list) or not all(isinstance(scope, str) for scope in value):
        raise InvalidRequestError("scopes must be an array of strings.", param="scopes")
    unknown = sorted(set(value) - KNOWN_SCOPES)
    if unknown:
        raise InvalidRequestError(
            f"Unknown scopes {unknown}; known: {sorted(KNOWN_SCOPES)}.", param="scopes", code="invalid_scope"
        )
    return sorted(set(value))


TOKEN_RECORD = obj(
    {
        "id": STRING,
        "name": STRING,
        "prefix": STRING,
        "scopes": {"type": "array", "items": STRING},
        "created_at": TIME,
        "last_used_at": nullable(TIME),
        "expires_at": nullable(TIME),
        "revoked_at": nullable(TIME),
        "limits": LIMITS_VIEW,
    }
)
LIMITS_BODY = {
    "type": "object",
    "description": "Each kind's cap (null removes it); period `day` or `month` (default), or `rolling_days`",
    "properties": {
        "usd_per_period": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]},
        "tokens_per_period": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        "requests_per_minute": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        "period": {"type": "string", "enum": ["day", "month"]},
        "rolling_days": {"type": "integer", "minimum": 1, "maximum": 366},
    },
    "additionalProperties": False,
}
LIST = Operation(
    "The caller's API tokens, newest first (platform JWT only)",
    {200: Reply("The tokens, never the secrets", data_of(TOKEN_RECORD))},
    errors=(401, 403),
    security=USER,
)
CREATE = Operation(
    "A new API token: its secret shown this once (platform JWT only)",
    {
        201: Reply(
            "The token record and its `token`",
            {**TOKEN_RECORD, "required": [*TOKEN_RECORD["required"], "token"]},
        )
    },
    body=obj(
        {},
        {
            "name": {"type": "string", "maxLength": 200},
            "scopes": {"type": "array", "items": {"type": "string", "enum": sorted(KNOWN_SCOPES)}},
            "expires_in_days": {"type": "integer", "minimum": 1, "maximum": MAX_EXPIRY_DAYS},
            "limits": LIMITS_BODY,
        },
    ),
    errors=(400, 401, 403, 409, 413, 415),
    security=USER,
)
UPDATE = Operation(
    "Change an API token's budgets and rate limits, honoured everywhere within a second (platform JWT only)",
    {200: Reply("The token record with its limits", TOKEN_RECORD)},
    body=obj({"limits": LIMITS_BODY}),
    errors=(400, 401, 403, 404, 409, 413, 415),
    security=USER,
)
REVOKE = Operation(
    "Revoke an API token, everywhere within a second; idempotent",
    {204: EMPTY},
    errors=(401, 403, 404),
    security=USER,
)
