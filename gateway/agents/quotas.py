"""Agents' quotas: each agent's tier, what it has used (counted in SQL), and the checks chat and uploads make.

Messages are counted per UTC day and tokens per UTC calendar month, from the agent's stored messages; storage
bytes and files from its stored files. A check that must hold under concurrency runs inside the transaction
that adds the usage, after locking the agent (`lock_agent`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.agent_models import Agent, AgentMessage
from gateway.db.asset_models import AgentFile
from gateway.db.base import iso, utcnow
from gateway.errors import QuotaExceededError
from gateway.tiers import DEFAULT_TIER, LIMIT_NAMES, Tier

logger = logging.getLogger("gateway.quotas")

USER_ROLE = "user"


@dataclass(frozen=True, slots=True)
class Period:
    """The UTC day and month a moment falls in: the windows of the per-day and per-month limits."""

    day_start: datetime
    day_end: datetime
    month_start: datetime
    month_end: datetime

    @classmethod
    def around(cls, now: datetime) -> Period:
        day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        month = day.replace(day=1)
        next_month = (month + timedelta(days=32)).replace(day=1)
        return cls(day, day + timedelta(days=1), month, next_month)


@dataclass(frozen=True, slots=True)
class Usage:
    """What an agent has used, under the names of the limits."""

    messages_per_day: int
    tokens_per_month: int
    storage_bytes: int
    files: int

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in LIMIT_NAMES}


class Quotas:
    """The configured tiers; an agent whose tier is not configured gets the default tier's limits."""

    def __init__(self, tiers: Iterable[Tier]) -> None:
        self.tiers = {tier.name: tier for tier in tiers}
        if DEFAULT_TIER not in self.tiers:
            raise ValueError(f"the {DEFAULT_TIER!r} tier must be configured")

    def tier_of(self, agent: Agent) -> Tier:
        tier = self.tiers.get(agent.tier)
        if tier is None:
            logger.warning("agent %s has unknown tier %r; using %r", agent.id, agent.tier, DEFAULT_TIER)
            return self.tiers[DEFAULT_TIER]
        return tier


async def lock_agent(session: AsyncSession, agent_id: str) -> None:
    """Within a transaction, serialise usage-adding transactions of one agent. On Postgres a row lock on the
    agent; SQLite has one writer at a time already, as long as the transaction writes before it counts."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(Agent.id).where(Agent.id == agent_id).with_for_update())


async def storage_used(session: AsyncSession, agent_id: str) -> tuple[int, int]:
    """(bytes, files) the agent stores."""
    row = (
        await session.execute(
            select(func.coalesce(func.sum(AgentFile.size), 0), func.count(AgentFile.id)).where(
                AgentFile.agent_id == agent_id
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def messages_since(session: AsyncSession, agent_id: str, since: datetime) -> int:
    """The user messages the agent received since `since`."""
    count = await session.scalar(
        select(func.count(AgentMessage.id)).where(
            AgentMessage.agent_id == agent_id,
            AgentMessage.role == USER_ROLE,
            AgentMessage.created_at >= since,
        )
    )
    return int(count or 0)


async def tokens_since(session: AsyncSession, agent_id: str, since: datetime) -> int:
    """Prompt and completion tokens the agent's messages used since `since`."""
    total = await session.scalar(
        select(
            func.coalesce(
                func.sum(
                    func.coalesce(AgentMessage.prompt_tokens, 0)
                    + func.coalesce(AgentMessage.completion_tokens, 0)
                ),
                0,
            )
        ).where(AgentMessage.agent_id == agent_id, AgentMessage.created_at >= since)
    )
    return int(total or 0)


async def usage_of(session: AsyncSession, agent_id: str, period: Period) -> Usage:
    stored_bytes, files = await storage_used(session, agent_id)
    return Usage(
        messages_per_day=await messages_since(session, agent_id, period.day_start),
        tokens_per_month=await tokens_since(session, agent_id, period.month_start),
        storage_bytes=stored_bytes,
        files=files,
    )


def remaining(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)


async def quota_report(
    session: AsyncSession, agent: Agent, quotas: Quotas, *, now: datetime | None = None
) -> dict[str, object]:
    """`GET /v1/agents/{id}/quota`: the tier, the month as the period (messages count per day within it),
    and limits, used and remaining under the same names (None: unlimited)."""
    period = Period.around(now or utcnow())
    tier = quotas.tier_of(agent)
    limits = tier.limits()
    used = (await usage_of(session, agent.id, period)).as_dict()
    return {
        "tier": tier.name,
        "period": {"start": iso(period.month_start), "end": iso(period.month_end)},
        "day": {"start": iso(period.day_start), "end": iso(period.day_end)},
        "limits": limits,
        "used": used,
        "remaining": {name: remaining(limits[name], used[name]) for name in LIMIT_NAMES},
    }


async def check_chat_quota(session: AsyncSession, agent: Agent, quotas: Quotas) -> None:
    """Before a chat turn: raises `QuotaExceededError` (429 `quota_exceeded`, with `Retry-After`) when the
    agent has used its messages of today or its tokens of this month."""
    now = utcnow()
    period = Period.around(now)
    tier = quotas.tier_of(agent)
    messages = tier.messages_per_day
    if messages is not None and await messages_since(session, agent.id, period.day_start) >= messages:
        raise _exhausted(f"The agent has used its {messages} messages of today.", period.day_end, now)
    tokens = tier.tokens_per_month
    if tokens is not None and await tokens_since(session, agent.id, period.month_start) >= tokens:
        raise _exhausted(f"The agent has used its {tokens} tokens of this month.", period.month_end, now)


def _exhausted(message: str, resets_at: datetime, now: datetime) -> QuotaExceededError:
    retry_after = max(1, int((resets_at - now).total_seconds()) + 1)
    return QuotaExceededError(message, code="quota_exceeded", headers={"Retry-After": str(retry_after)})
