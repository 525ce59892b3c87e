"""Agent API keys: `ak_` secrets scoped to one agent, stored only as a keyed hash, and their queries.

They share the API tokens' shape and keyed hash (`gateway.auth.tokens.TokenCodec`). A key proves its agent's
owner with `kind=AGENT_KEY` and the agent's id, and reaches only its own agent's routes marked for agent keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.principals import AGENT_KEY, Principal
from gateway.auth.tokens import AGENT_KEY_PREFIX, TokenCodec, display_prefix
from gateway.db.agent_models import Agent
from gateway.db.asset_models import AgentApiKey
from gateway.db.base import utcnow
from gateway.db.models import User
from gateway.ids import new_id

AGENT_KEY_ID_PREFIX = "akey"
# What an agent key may be limited to: the agent's chat (WebSocket) and its files. Reading the agent, its
# messages, proofs and quota needs no scope.
AGENT_KEY_SCOPES = frozenset({"chat", "files"})


@dataclass(frozen=True, slots=True)
class FoundKey:
    """An agent key's record with its agent and the agent's owner, whatever their state."""

    record: AgentApiKey
    agent: Agent
    owner: User

    @property
    def is_live(self) -> bool:
        return self.record.revoked_at is None and self.owner.disabled_at is None

    def principal(self) -> Principal:
        """Who the key proves: the agent's owner, through this key, for this agent only."""
        return Principal(
            user_id=self.owner.id,
            kind=AGENT_KEY,
            scopes=frozenset(self.record.scopes),
            token_id=self.record.id,
            agent_id=self.agent.id,
            is_admin=False,
        )


async def create_agent_key(
    session: AsyncSession, codec: TokenCodec, *, agent_id: str, name: str, scopes: list[str]
) -> tuple[AgentApiKey, str]:
    """A new key for `agent_id`: (its record, the raw key, which is never stored).
    Precondition: `scopes` is a subset of `AGENT_KEY_SCOPES`."""
    raw = codec.new_tagged_secret(AGENT_KEY_PREFIX)
    record = AgentApiKey(
        id=new_id(AGENT_KEY_ID_PREFIX),
        agent_id=agent_id,
        name=name,
        prefix=display_prefix(raw),
        key_hash=codec.lookup_hash(raw),
        scopes=scopes,
        created_at=utcnow(),
    )
    session.add(record)
    await session.flush()
    return record, raw


async def list_agent_keys(session: AsyncSession, agent_id: str) -> list[AgentApiKey]:
    """The agent's keys, newest first, revoked ones included."""
    query = (
        select(AgentApiKey)
        .where(AgentApiKey.agent_id == agent_id)
        .order_by(AgentApiKey.created_at.desc(), AgentApiKey.id.desc())
    )
    return list((await session.scalars(query)).all())


async def revoke_agent_key(session: AsyncSession, *, agent_id: str, key_id: str) -> AgentApiKey | None:
    """Revokes the agent's key (once; again changes nothing). None when the agent has no such key."""
    record = await session.scalar(
        select(AgentApiKey).where(AgentApiKey.id == key_id, AgentApiKey.agent_id == agent_id)
    )
    if record is not None and record.revoked_at is None:
        record.revoked_at = utcnow()
    return record


async def find_agent_key(session: AsyncSession, key_hash: str) -> FoundKey | None:
    """The key stored under `key_hash`, with its agent and owner."""
    row = (
        await session.execute(
            select(AgentApiKey, Agent, User)
            .join(Agent, Agent.id == AgentApiKey.agent_id)
            .join(User, User.id == Agent.user_id)
            .where(AgentApiKey.key_hash == key_hash)
        )
    ).first()
    return None if row is None else FoundKey(row[0], row[1], row[2])


def is_agent_key_id(key_id: str) -> bool:
    return key_id.startswith(AGENT_KEY_ID_PREFIX + "_")


async def record_agent_keys_last_used(session: AsyncSession, last_used: dict[str, datetime]) -> None:
    """Writes a batch of `last_used_at` times (key id → time), never moving one backwards."""
    for key_id, used_at in last_used.items():
        await session.execute(
            update(AgentApiKey)
            .where(AgentApiKey.id == key_id)
            .where((AgentApiKey.last_used_at.is_(None)) | (AgentApiKey.last_used_at < used_at))
            .values(last_used_at=used_at)
        )


class AgentKeys:
    """The agent keys as the authenticator looks them up (`gateway.auth.authenticator.AgentKeyLookup`)."""

    async def principal(self, session: AsyncSession, key_hash: str) -> Principal | None:
        found = await find_agent_key(session, key_hash)
        return found.principal() if found is not None and found.is_live else None

    def is_key_id(self, token_id: str) -> bool:
        return is_agent_key_id(token_id)

    async def record_last_used(self, session: AsyncSession, last_used: dict[str, datetime]) -> None:
        await record_agent_keys_last_used(session, last_used)
