"""The bounded cache of proven `Principal`s that spares known credentials a database query.

The cache never writes back what it read: a revocation evicts entries (and remembers them as refused) and bumps a
generation, and a lookup that began before the revocation does not store its (now stale) answer. Negative answers
live in their own, smaller, short-lived map, so a flood of bad credentials cannot push valid ones out.

An entry is served only while the revocation feed is current: `confirm` records when the last read of the feed
began (every revocation committed before then has been applied), and `get` misses once that is older than
`current_for`. `recall` is for when the database cannot be asked: whatever is cached, however old.
"""

from __future__ import annotations

import math
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

# How long after the last read of the revocation feed began the cache is still trusted. A revocation committed
# at T is in every read begun after T, so no credential is served from here past T + 0.8 s: the rest of the
# promised second is the request's own (gateway.auth.revocations reads every 0.2 s, so this spans a stalled read
# and its replacement).
FEED_CURRENT_SECONDS = 0.8


class PrincipalCache:
    """Credential key → Principal for a short TTL, and credential key → "refused" for a shorter one."""

    def __init__(
        self,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
        max_entries: int = 10_000,
        current_for: float = FEED_CURRENT_SECONDS,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.current_for = current_for
        self.generation = 0
        self.confirmed_at = -math.inf  # time.monotonic() when the last read of the revocation feed began
        self.hits = 0
        self.misses = 0
        # key → (fresh until, by time.monotonic(); principal)
        self._known: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._refused: OrderedDict[str, float] = OrderedDict()

    def confirm(self, began: float) -> None:
        """Every revocation committed before `began` (time.monotonic()) has been applied."""
        self.confirmed_at = max(self.confirmed_at, began)

    def get(self, key: str) -> Principal | None:
        """The cached principal for `key`, if fresh and the revocation feed current (a hit); else None (a miss)."""
        entry = self._known.get(key)
        if entry is not None:
            now = time.monotonic()
            if now < entry[0] and now - self.confirmed_at <= self.current_for:
                self._known.move_to_end(key)
                self.hits += 1
                return entry[1]
        self.misses += 1
        return None

    def recall(self, key: str) -> Principal | None:
        """Whatever is cached for `key`, past its TTL too, unless the credential itself has expired: for when the
        database cannot be asked (the caller bounds how long that is trusted)."""
        entry = self._known.get(key)
        if entry is None:
            return None
        principal = entry[1]
        if principal.expires_at is not None and principal.expires_at <= time.time():
            return None
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
        lifetime = self.ttl
        if principal.expires_at is not None:
            lifetime = min(lifetime, principal.expires_at - time.time())
        self._known[key] = (time.monotonic() + lifetime, principal)
        self._known.move_to_end(key)
        while len(self._known) > self.max_entries:
            self._known.popitem(last=False)

    def refuse(self, key: str) -> None:
        self._refused[key] = time.monotonic() + self.negative_ttl
        self._refused.move_to_end(key)
        while len(self._refused) > self.max_entries:
            self._refused.popitem(last=False)

    def evict(self, matches: Callable[[Principal], bool]) -> None:
        """Refuse every principal `matches` selects (a revoked credential needs no query to be refused again);
        lookups already under way will not cache theirs."""
        self.generation += 1
        for key in [key for key, (_, principal) in self._known.items() if matches(principal)]:
            del self._known[key]
            self.refuse(key)

    def forget(self, matches: Callable[[Principal], bool]) -> None:
        """Drop every principal `matches` selects, without refusing it: its next use looks it up again (its
        limits changed); lookups already under way will not cache theirs."""
        self.generation += 1
        for key in [key for key, (_, principal) in self._known.items() if matches(principal)]:
            del self._known[key]

    def clear(self) -> None:
        self.generation += 1
        self._known.clear()
        self._refused.clear()
