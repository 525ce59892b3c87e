"""Agents and their lifecycle: creation, start and stop (with its checkpoint), sessions and their messages.

Functions take an `AsyncSession` first and leave the transaction to the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.agent_models import RUNNING, STOPPED, Agent, AgentCheckpoint, AgentMessage
from gateway.db.base import iso, utcnow
from gateway.ids import new_id

AGENT_PREFIX = "ocs"
DEFAULT_AGENT_NAME = "My Agent"
DEFAULT_MODEL = "@cf/meta/llama-3.1-8b-instruct"
DEFAULT_PROVIDER = "workers-ai"
DEFAULT_GOVERNANCE_MODE = "transparent"
USER, ASSISTANT = "user", "assistant"
DENIED = "deny"


@dataclass(frozen=True, slots=True)
class AgentChanges:
    """What a create or update sets; None leaves a field as it is (or at its default, on create)."""

    agent_name: str | None = None
    model: str | None = None
    model_provider: str | None = None
    governance_mode: str | None = None


def agent_json(agent: Agent, *, message_count: int) -> dict[str, object]:
    return {
        "id": agent.id,
        "agent_name": agent.agent_name,
        "model": agent.model,
        "model_provider": agent.model_provider,
        "governance_mode": agent.governance_mode,
        "state": agent.state,
        "tier": agent.tier,
        "created_at": iso(agent.created_at),
        "updated_at": iso(agent.updated_at),
        "last_started_at": iso(agent.last_started_at),
        "last_stopped_at": iso(agent.last_stopped_at),
        "session_id": agent.session_id,
        "message_count": message_count,
    }


def checkpoint_json(checkpoint: AgentCheckpoint) -> dict[str, object]:
    return {
        "id": checkpoint.id,
        "created_at": iso(checkpoint.created_at),
        "message_count": checkpoint.message_count,
        "last_leaf_hash": checkpoint.last_leaf_hash,
        "tree_size": checkpoint.tree_size,
    }


def message_json(message: AgentMessage) -> dict[str, object]:
    usage = None
    if message.prompt_tokens is not None or message.completion_tokens is not None:
        usage = {
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "total_tokens": (message.prompt_tokens or 0) + (message.completion_tokens or 0),
        }
    return {
        "id": message.id,
        "session_id": message.session_id,
        "role": message.role,
        "content": message.content,
        "created_at": iso(message.created_at),
        "governance_decision": message.governance_decision,
        "leaf_hash": message.leaf_hash,
        "usage": usage,
    }


async def create_agent(session: AsyncSession, *, user_id: str, changes: AgentChanges) -> Agent:
    now = utcnow()
    agent = Agent(
        id=new_id(AGENT_PREFIX),
        user_id=user_id,
        agent_name=changes.agent_name or DEFAULT_AGENT_NAME,
        model=changes.model or DEFAULT_MODEL,
        model_provider=changes.model_provider or DEFAULT_PROVIDER,
        governance_mode=changes.governance_mode or DEFAULT_GOVERNANCE_MODE,
        state=STOPPED,
        session_id=new_id("ses"),
        created_at=now,
        updated_at=now,
    )
    session.add(agent)
    await session.flush()
    return agent


async def list_agents(session: AsyncSession, user_id: str) -> list[tuple[Agent, int]]:
    """The user's agents, newest first, each with its current session's message count."""
    counts = (
        select(func.count(AgentMessage.id))
        .where(AgentMessage.agent_id == Agent.id, AgentMessage.session_id == Agent.session_id)
        .scalar_subquery()
    )
    rows = await session.execute(
        select(Agent, counts).where(Agent.user_id == user_id).order_by(Agent.created_at.desc(), Agent.id)
    )
    return [(agent, int(count)) for agent, count in rows]


async def message_count(session: AsyncSession, agent: Agent) -> int:
    """How many messages the agent's current session holds."""
    count = await session.scalar(
        select(func.count(AgentMessage.id)).where(
            AgentMessage.agent_id == agent.id, AgentMessage.session_id == agent.session_id
        )
    )
    return count or 0


def update_agent(agent: Agent, changes: AgentChanges) -> None:
    for name in ("agent_name", "model", "model_provider", "governance_mode"):
        value = getattr(changes, name)
        if value is not None:
            setattr(agent, name, value)
    agent.updated_at = utcnow()


async def start_agent(session: AsyncSession, agent: Agent) -> bool:
    """`stopped` → `running`; False (and no change) when it was already running."""
    now = utcnow()
    result = await session.execute(
        update(Agent)
        .where(Agent.id == agent.id, Agent.state != RUNNING)
        .values(state=RUNNING, last_started_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(agent)
    return bool(getattr(result, "rowcount", 0))


async def stop_agent(
    session: AsyncSession, agent: Agent, *, log_size: Callable[[], Awaitable[int]]
) -> AgentCheckpoint | None:
    """`running` → `stopped` with an automatic checkpoint of the session and the log's size (`log_size`, read
    after the messages, so the tree holds every leaf they name: leaves are appended before their messages are
    stored). None (and no change) when it was not running. Concurrent stops write one checkpoint."""
    now = utcnow()
    result = await session.execute(
        update(Agent)
        .where(Agent.id == agent.id, Agent.state == RUNNING)
        .values(state=STOPPED, last_stopped_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(agent)
    if not getattr(result, "rowcount", 0):
        return None
    last_leaf = await session.scalar(
        select(AgentMessage.leaf_hash)
        .where(AgentMessage.agent_id == agent.id, AgentMessage.leaf_hash.is_not(None))
        .order_by(AgentMessage.created_at.desc(), AgentMessage.id.desc())
        .limit(1)
    )
    count = await message_count(session, agent)
    checkpoint = AgentCheckpoint(
        id=new_id("ckpt"),
        agent_id=agent.id,
        session_id=agent.session_id,
        created_at=now,
        message_count=count,
        last_leaf_hash=last_leaf,
        tree_size=await log_size(),
    )
    session.add(checkpoint)
    await session.flush()
    return checkpoint


async def session_messages(
    session: AsyncSession, agent: Agent, *, limit: int, before: datetime | None = None
) -> tuple[list[AgentMessage], bool]:
    """The latest `limit` messages of the current session (older than `before`, when given), oldest first,
    and whether older ones remain."""
    query = select(AgentMessage).where(
        AgentMessage.agent_id == agent.id, AgentMessage.session_id == agent.session_id
    )
    if before is not None:
        query = query.where(AgentMessage.created_at < before)
    rows = list(
        await session.scalars(
            query.order_by(AgentMessage.created_at.desc(), AgentMessage.id.desc()).limit(limit + 1)
        )
    )
    return list(reversed(rows[:limit])), len(rows) > limit


async def find_message(session: AsyncSession, agent: Agent, message_id: str) -> AgentMessage | None:
    return await session.scalar(
        select(AgentMessage).where(AgentMessage.id == message_id, AgentMessage.agent_id == agent.id)
    )


async def conversation(session: AsyncSession, agent: Agent, *, limit: int) -> list[AgentMessage]:
    """The context the model gets: the current session's latest `limit` messages, oldest first, without
    messages governance denied (their content must never reach the model)."""
    rows = await session.scalars(
        select(AgentMessage)
        .where(
            AgentMessage.agent_id == agent.id,
            AgentMessage.session_id == agent.session_id,
            AgentMessage.governance_decision.is_distinct_from(DENIED),
        )
        .order_by(AgentMessage.created_at.desc(), AgentMessage.id.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))


async def clear_session(session: AsyncSession, agent: Agent) -> None:
    """Start a new session. The old session's contents are erased; its rows stay, empty, so that what was
    used still counts against quotas, and the log's leaves (which hold only hashes) stay verifiable."""
    await session.execute(
        update(AgentMessage)
        .where(AgentMessage.agent_id == agent.id, AgentMessage.session_id == agent.session_id)
        .values(content="")
        .execution_options(synchronize_session=False)
    )
    agent.session_id = new_id("ses")
    agent.updated_at = utcnow()
    await session.flush()
