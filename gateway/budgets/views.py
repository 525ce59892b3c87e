"""Each limit as the API shows it: its cap, period, spent, reserved and remaining, and when it resets."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.budgets import store
from gateway.budgets.limits import REQUESTS, ROLLING, owner, shown
from gateway.db.models import ApiToken

LimitViews = dict[str, dict[str, Any]]  # kind -> view

NUMBER = {"type": "number"}
LIMIT_VIEW = {
    "type": "object",
    "required": ["limit", "period", "spent", "reserved", "remaining", "resets_at"],
    "properties": {
        "limit": {**NUMBER, "description": "USD for usd_per_period; tokens; requests per minute"},
        "period": {"type": "string", "enum": ["day", "month", "rolling", "minute"]},
        "rolling_days": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "spent": {**NUMBER, "description": "settled in the period (a rate limit: admissions in the window)"},
        "reserved": {**NUMBER, "description": "held by requests under way"},
        "remaining": NUMBER,
        "resets_at": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": "ISO 8601, UTC: the period's end (rolling: the next day leaving the window; a rate "
            "limit: when its oldest admission leaves the window)",
        },
    },
}
LIMITS_VIEW = {
    "type": "object",
    "description": "Each limit set, by kind",
    "properties": {
        kind: LIMIT_VIEW for kind in ("usd_per_period", "tokens_per_period", "requests_per_minute")
    },
}


async def limit_views(session: AsyncSession, owners: Sequence[str]) -> dict[str, LimitViews]:
    """Every limit of `owners`, by owner then kind (two queries, whatever their number)."""
    states = await store.limit_states(session, owners)
    rates = [state.id for state in states if state.kind == REQUESTS]
    oldest = await store.oldest_holds(session, rates) if rates else {}
    views: dict[str, LimitViews] = defaultdict(dict)
    for state in states:
        if state.kind == REQUESTS:
            spent, reserved, resets_at = state.reserved, 0, oldest.get(state.id)
        else:
            spent, reserved, resets_at = state.spent, state.reserved, state.resets_at
        views[state.owner][state.kind] = {
            "limit": shown(state.kind, state.cap),
            "period": state.period,
            "rolling_days": state.rolling_days if state.period == ROLLING else None,
            "spent": shown(state.kind, spent),
            "reserved": shown(state.kind, reserved),
            "remaining": shown(state.kind, max(state.cap - spent - reserved, 0)),
            "resets_at": _iso(resets_at),
        }
    return views


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


USAGE_LIMITS_VIEW = {
    "type": "object",
    "description": "The user's budgets and rate limits with their counters, and each of their API tokens' (absent "
    "when the usage read is the whole gateway's)",
    "properties": {
        "user": LIMITS_VIEW,
        "tokens": {"type": "object", "description": "by token id", "additionalProperties": LIMITS_VIEW},
    },
}


async def user_limit_views(session: AsyncSession, user_id: str) -> dict[str, Any]:
    """`{"user": {kind: view}, "tokens": {token id: {kind: view}}}`: a user's own limits and their tokens' (those
    that have any), in three queries."""
    token_ids = (await session.scalars(select(ApiToken.id).where(ApiToken.user_id == user_id))).all()
    user = owner("user", user_id)
    views = await limit_views(session, [user, *(owner("token", token_id) for token_id in token_ids)])
    tokens = {
        token_id: views[owner("token", token_id)]
        for token_id in token_ids
        if owner("token", token_id) in views
    }
    return {"user": views.get(user, {}), "tokens": tokens}
