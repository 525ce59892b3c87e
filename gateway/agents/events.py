"""What agent chat writes to the transparency log: one leaf per user message with its verdict, one per reply.

A leaf holds the message's SHA-256, never its text, so that clearing a session leaves the log verifiable; the
findings name rules and offsets only. These shapes are what an auditor reads back from the log.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from gateway.agents.completions import CompletionUsage
from gateway.agents.governance import Verdict
from gateway.agents.service import ASSISTANT, USER
from gateway.db.agent_models import Agent, AgentMessage
from gateway.db.base import iso
from gateway.transparency.log import hash_text

VERDICT_KIND, REPLY_KIND = "governance", "assistant_message"


def content_hash(text: str) -> str:
    return hash_text(hashlib.sha256(text.encode()).digest())


def verdict_event(
    agent: Agent, message_id: str, content: str, verdict: Verdict, at: datetime
) -> dict[str, Any]:
    """The log leaf of a user message and its verdict."""
    return {
        "type": VERDICT_KIND,
        "agent_id": agent.id,
        "session_id": agent.session_id,
        "message_id": message_id,
        "role": USER,
        "content_hash": content_hash(content),
        "mode": verdict.mode,
        "decision": verdict.decision,
        "findings": [
            {"rule": f.rule, "category": f.category, "start": f.start, "end": f.end} for f in verdict.findings
        ],
        "created_at": iso(at),
    }


def reply_event(
    agent: Agent, message_id: str, content: str, *, prompt: AgentMessage, usage: CompletionUsage, at: datetime
) -> dict[str, Any]:
    """The log leaf of an assistant message."""
    return {
        "type": REPLY_KIND,
        "agent_id": agent.id,
        "session_id": agent.session_id,
        "message_id": message_id,
        "role": ASSISTANT,
        "content_hash": content_hash(content),
        "in_reply_to": prompt.id,
        "prompt_leaf_hash": prompt.leaf_hash,
        "provider": agent.model_provider,
        "model": agent.model,
        "usage": usage.as_json(),
        "created_at": iso(at),
    }
