"""Agents, their sessions' messages and checkpoints."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, UtcDateTime, utcnow

__all__ = ["Agent", "AgentCheckpoint", "AgentMessage"]

STOPPED = "stopped"
RUNNING = "running"


class Agent(Base):
    """A user's agent: a model behind a governance policy, with one current chat session."""

    __tablename__ = "agents"
    __table_args__ = (Index("ix_agents_user_id_created_at", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    agent_name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    model_provider: Mapped[str] = mapped_column(String(40))
    governance_mode: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default=STOPPED)
    tier: Mapped[str] = mapped_column(String(40), default="free")
    session_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Set while a chat turn runs, on whichever instance: one turn at a time per agent across processes.
    turn_until: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AgentMessage(Base):
    """One chat message of an agent's session. Assistant messages carry the tokens the upstream reported;
    `leaf_hash` ("sha256:<hex>") is the message's transparency log leaf (the verdict, for a user message)."""

    __tablename__ = "agent_messages"
    __table_args__ = (
        Index("ix_agent_messages_agent_id_session_id_created_at", "agent_id", "session_id", "created_at"),
        Index("ix_agent_messages_agent_id_created_at", "agent_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(40))
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    governance_decision: Mapped[str | None] = mapped_column(String(10))  # user messages: allow|flag|deny
    leaf_hash: Mapped[str | None] = mapped_column(String(80), index=True)


class AgentCheckpoint(Base):
    """What an agent's session looked like when it was stopped, tied to the transparency log's size then."""

    __tablename__ = "agent_checkpoints"
    __table_args__ = (Index("ix_agent_checkpoints_agent_id_created_at", "agent_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    message_count: Mapped[int]
    last_leaf_hash: Mapped[str | None] = mapped_column(String(80))
    tree_size: Mapped[int]
