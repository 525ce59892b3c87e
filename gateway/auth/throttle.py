"""Login throttling: repeated failures for one email or one client address are slowed down (429).

Kept in process memory, bounded: a replica set multiplies the allowance by its size, which still stops guessing
at any useful rate; the password hash's cost does the rest.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

MAX_FAILURES = 5
WINDOW_SECONDS = 15 * 60
MAX_TRACKED = 50_000


class LoginThrottle:
    """Counts failed logins per key (`email:...`, `ip:...`) in a sliding window."""

    def __init__(self, *, max_failures: int = MAX_FAILURES, window_seconds: float = WINDOW_SECONDS) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, *keys: str) -> int | None:
        """Seconds to wait before another attempt for any of `keys`, or None when attempts are allowed."""
        now = time.monotonic()
        waits = []
        for key in keys:
            failures = self._recent(key, now)
            if len(failures) >= self.max_failures:
                waits.append(failures[0] + self.window_seconds - now)
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            failures = self._recent(key, now)
            failures.append(now)
            self._failures[key] = failures
            self._failures.move_to_end(key)
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window_seconds:
            failures.popleft()
        return failures
