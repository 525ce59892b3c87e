"""Who a request is: the `Principal` auth proves and the request context carries, and the scopes a credential
may hold.

On the foundation's floor, so that the context (`gateway.context`), the usage rows and every feature can name the
caller without importing `gateway.auth`, which proves it (and keeps the cache of proven ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

SESSION = "session"  # the gateway's own access JWT, from the cookie or a Bearer header
JWT = "jwt"  # an external identity provider's JWT
API_TOKEN = "api_token"
AGENT_KEY = "agent_key"
PLATFORM_KINDS = frozenset({SESSION, JWT})
KNOWN_SCOPES = frozenset({"chat", "ocr", "chroma", "usage:read", "agents"})


class AppliedLimit(NamedTuple):
    """A budget or rate limit that applies to a principal (`gateway.budgets`): known when it is proven, so that
    admission needs no query to learn whether there is anything to reserve."""

    id: str
    owner: str  # token:<id>, user:<id> or agent:<id>
    kind: str  # usd_per_period, tokens_per_period, requests_per_minute
    period: str  # day, month, rolling, minute
    cap: int


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the user, how they proved it, and what they may do."""

    user_id: str
    kind: str
    scopes: frozenset[str] = KNOWN_SCOPES
    token_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    is_admin: bool = False
    expires_at: float | None = None  # epoch seconds; the cache never serves it past this
    limits: tuple[AppliedLimit, ...] = ()  # its token's, user's and agent's limits; none: admission is free

    @property
    def is_platform_user(self) -> bool:
        """True for a platform JWT (a person), false for API tokens and agent keys."""
        return self.kind in PLATFORM_KINDS

    def may(self, scope: str) -> bool:
        return scope in self.scopes
