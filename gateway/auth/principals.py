"""The bounded cache of proven `Principal`s that spares known credentials a database query.

The cache never writes back what it read: a revocation evicts entries and bumps a generation, and a lookup that
began before the revocation does not store its (now stale) answer. Negative answers live in their own, smaller,
short-lived map, so a flood of bad credentials cannot push valid ones out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

# Principal and the credential kinds live on the foundation (gateway.principals), so that the request context
# can name the caller; they are re-exported here for auth's importers.
from gateway.principals import (
    AGENT_KEY,
    API_TOKEN,
    JWT,
    PLATFORM_KINDS,
    SESSION,
    Principal,
)

__all__ = ["AGENT_KEY", "API_TOKEN", "JWT", "PLATFORM_KINDS", "SESSION", "Principal", "PrincipalCache"]


class PrincipalCache:
    """Credential key → Principal for a short TTL, and credential key → "refused" for a shorter one."""

    def __init__(self, *, ttl: float = 30.0, negative_ttl: float = 5.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.generation = 0
        self._known: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._refused: OrderedDict[str, float] = OrderedDict()

    def get(self, key: str) -> Principal | None:
        """The cached principal for `key`, if any and still fresh."""
        entry = self._known.get(key)
        if entry is None:
            return None
        valid_until, principal = entry
        if time.time() >= valid_until:
            del self._known[key]
            return None
        self._known.move_to_end(key)
        return principal

    def is_refused(self, key: str) -> bool:
        """Whether `key` was refused within the negative TTL."""
        until = self._refused.get(key)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._refused[key]
            return False
        return True

    def remember(self, key: str, principal: Principal, *, generation: int) -> None:
        """Cache `principal`, unless a revocation happened since its lookup began (`generation`)."""
        if generation != self.generation:
            return
        valid_until = time.time() + self.ttl
        if principal.expires_at is not None:
            valid_until = min(valid_until, principal.expires_at)
        self._known[key] = (valid_until, principal)
        self._known.move_to_end(key)
        while len(self._known) > self.max_entries:
            self._known.popitem(last=False)

    def refuse(self, key: str) -> None:
        self._refused[key] = time.monotonic() + self.negative_ttl
        self._refused.move_to_end(key)
        while len(self._refused) > self.max_entries:
            self._refused.popitem(last=False)

    def evict(self, matches: Callable[[Principal], bool]) -> None:
        """Drop every principal `matches` selects; lookups already under way will not cache theirs."""
        self.generation += 1
        for key in [key for key, (_, principal) in self._known.items() if matches(principal)]:
            del self._known[key]

    def clear(self) -> None:
        self.generation += 1
        self._known.clear()
        self._refused.clear()
