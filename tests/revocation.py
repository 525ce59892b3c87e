"""How long an instance went on accepting a credential after it was revoked, measured as the promise is made."""

from __future__ import annotations

import time
from collections.abc import Callable


def seconds_served(send: Callable[[], int], *, until: int = 401, within: float = 10.0) -> float:
    """Polls `send()` (a request's status) until it answers `until`; returns the seconds from the call to the
    sending of the last request answered otherwise (0.0 when the first one is `until`). The bound is on when a
    request is decided, not on how long its answer takes to come back: on a loaded host a refusal, or a lookup
    held on a connection a partition silenced, may arrive late though nothing was served meanwhile. Fails after
    `within` seconds."""
    began = time.monotonic()
    last_served = 0.0
    while time.monotonic() - began < within:
        sent = time.monotonic() - began
        if send() == until:
            return last_served
        last_served = sent
        time.sleep(0.02)
    raise AssertionError(f"no {until} after {within} s")
