"""`/v1/usage`, `/v1/usage/daily`, `/v1/usage/rollups`: the usage summaries, for the operator or for one user.

The operator's `USAGE_API_KEY` (Bearer or `x-usage-key`, compared in constant time) sees the whole dataset, as
does an admin's session (platform JWT), and anyone when no key is set. Another platform JWT or a `usage:read` API
token sees only its own user's usage. Whoever sees the whole dataset may narrow it to one user (`user_id`, for the
dashboard's user picker); anyone else giving `user_id` is refused (403), so that a user cannot mistake their own
figures for another's.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth.authenticator import Authenticator
from gateway.budgets.views import USAGE_LIMITS_VIEW, user_limit_views
from gateway.db.base import iso
from gateway.db.engine import Database
from gateway.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from gateway.fields import is_id, query_int
from gateway.middleware.auth import CHALLENGE, presented_credential
from gateway.openapi import BEARER, INTEGER, NUMBER, SESSION, STRING, TIME, USAGE_KEY, Operation, Reply, obj
from gateway.usage import queries

USAGE_SCOPE = "usage:read"
MAX_HOURS = 720
MAX_DAILY_DAYS = 365
USER_ID_PREFIX = "usr"  # gateway.auth.users


class UsageRoutes:
    def __init__(
        self, database: Database, authenticator: Authenticator, *, dataset: str, usage_api_key: str | None
    ) -> None:
        self.database = database
        self.authenticator = authenticator
        self.dataset = dataset
        self.usage_api_key = usage_api_key.encode() if usage_api_key else None

    async def summary(self, request: Request) -> JSONResponse:
        user_id = await self._whose_usage(request)
        hours = _hours(request)
        now = datetime.now(UTC)
        async with self.database.session() as session:
            body = await queries.summary(session, dataset=self.dataset, hours=hours, now=now, user_id=user_id)
            if user_id is not None:  # one user's usage: their budgets and rate limits too (issue 22)
                body["limits"] = await user_limit_views(session, user_id)
        return JSONResponse({"window": {"hours": hours, "generated_at": iso(now)}, **body})

    async def daily(self, request: Request) -> JSONResponse:
        user_id = await self._whose_usage(request)
        days = query_int(
            request.query_params.get("days"), param="days", low=1, high=MAX_DAILY_DAYS, default=7
        )
        now = datetime.now(UTC)
        async with self.database.session() as session:
            buckets = await queries.daily(session, dataset=self.dataset, days=days, now=now, user_id=user_id)
        return JSONResponse({"generated_at": iso(now), "timezone": "UTC", "days": days, "daily": buckets})

    async def rollups(self, request: Request) -> JSONResponse:
        user_id = await self._whose_usage(request)
        now = datetime.now(UTC)
        async with self.database.session() as session:
            rollups = await queries.rollups(session, dataset=self.dataset, now=now, user_id=user_id)
        return JSONResponse({"generated_at": iso(now), "rollups": rollups, "windows": rollups})

    async def _whose_usage(self, request: Request) -> str | None:
        """None for the whole dataset; else the user id whose usage the caller reads: their own, or the one
        `user_id` narrows the whole dataset to."""
        narrowed = request.query_params.get("user_id")
        own = await self._caller_scope(request)
        if narrowed is None:
            return own
        if own is not None:
            raise PermissionDeniedError(
                "Only an admin or the operator may read another user's usage.", param="user_id"
            )
        if not is_id(narrowed, USER_ID_PREFIX):
            raise InvalidRequestError("user_id must be a user id (usr_...).", param="user_id")
        return narrowed

    async def _caller_scope(self, request: Request) -> str | None:
        """None for the whole dataset (the operator's key, an admin's session, or no key configured); else the
        caller's user id."""
        usage_key = request.headers.get("x-usage-key")
        credential, _ = presented_credential(request.scope)
        for candidate in (usage_key, credential):
            if (
                candidate
                and self.usage_api_key
                and hmac.compare_digest(candidate.encode(), self.usage_api_key)
            ):
                return None
        if usage_key is not None:
            raise AuthenticationError("The usage key is not valid.", headers=CHALLENGE)
        if credential is None:
            if self.usage_api_key is not None:
                raise AuthenticationError("A usage key or a credential is required.", headers=CHALLENGE)
            return None
        principal = await self.authenticator.authenticate(credential)
        if not principal.is_platform_user and not principal.may(USAGE_SCOPE):
            raise PermissionDeniedError(
                f"This token lacks the {USAGE_SCOPE!r} scope.", code="insufficient_scope"
            )
        if principal.is_platform_user and principal.is_admin:
            return None
        return principal.user_id


def _hours(request: Request) -> int:
    """`hours` (1..720) wins over `days` (times 24, capped at 720); 24 by default."""
    query = request.query_params
    if "hours" in query:
        return query_int(query["hours"], param="hours", low=1, high=MAX_HOURS)
    if "days" in query:
        return min(query_int(query["days"], param="days", low=1, high=None) * 24, MAX_HOURS)  # any number
    return 24


FIGURES = {"requests": INTEGER, "total_tokens": INTEGER, "estimated_cost_usd": NUMBER}
GROUP = {"type": "array", "items": obj(FIGURES)}
# The operator's key, or a user's credential; or nothing, when no USAGE_API_KEY is set.
USAGE_CREDENTIALS = (USAGE_KEY, BEARER, SESSION)
USAGE_ERRORS = (400, 401, 403)
NARROWED = {
    "user_id": {
        "type": "string",
        "pattern": f"^{USER_ID_PREFIX}_[0-9a-f]{{24}}$",  # gateway.fields.ID_FORM: another form is 400
        "description": "One user's usage (admins, the operator's key, or anyone when no key is set; 403 otherwise)",
    }
}
SUMMARY = Operation(
    "Usage over the last hours (`hours` wins over `days`)",
    {
        200: Reply(
            "Totals, top models and paths, by type and by provider",
            obj(
                {
                    "window": obj({"hours": INTEGER, "generated_at": TIME}),
                    "totals": obj(FIGURES),
                    "top_models": GROUP,
                    "top_paths": GROUP,
                    "by_type": GROUP,
                    "by_provider": GROUP,
                },
                {"limits": USAGE_LIMITS_VIEW},
            ),
        )
    },
    query={
        "hours": {"type": "integer", "minimum": 1, "maximum": MAX_HOURS},
        "days": {"type": "integer", "minimum": 1},
        **NARROWED,
    },
    errors=USAGE_ERRORS,
    security=USAGE_CREDENTIALS,
    auth_optional=True,
)
DAILY = Operation(
    "Usage per UTC day, oldest first, missing days zero-filled",
    {
        200: Reply(
            "One bucket per day",
            obj(
                {
                    "generated_at": TIME,
                    "timezone": STRING,
                    "days": INTEGER,
                    "daily": {"type": "array", "items": obj({"date": STRING, **FIGURES})},
                }
            ),
        )
    },
    query={"days": {"type": "integer", "minimum": 1, "maximum": MAX_DAILY_DAYS}, **NARROWED},
    errors=USAGE_ERRORS,
    security=USAGE_CREDENTIALS,
    auth_optional=True,
)
WINDOW_TOTALS = {"type": "array", "items": obj({"window": STRING, "totals": obj(FIGURES)})}
ROLLUPS = Operation(
    "Totals over 10 minutes, 1 and 6 hours, 1 and 7 days",
    {
        200: Reply(
            "The windows", obj({"generated_at": TIME, "rollups": WINDOW_TOTALS, "windows": WINDOW_TOTALS})
        )
    },
    query=NARROWED,
    errors=USAGE_ERRORS,
    security=USAGE_CREDENTIALS,
    auth_optional=True,
)
