"""LoginThrottle: a sliding window of failures per key."""

from __future__ import annotations

import time

from gateway.auth.throttle import LoginThrottle


def test_the_limit_is_reached_after_max_failures_with_a_retry_after() -> None:
    throttle = LoginThrottle(max_failures=3, window_seconds=60)
    for _ in range(2):
        throttle.failed("email:a", "ip:1")
    assert throttle.retry_after("email:a", "ip:1") is None

    throttle.failed("email:a", "ip:1")
    wait = throttle.retry_after("email:a", "ip:2")

    assert wait is not None and 1 <= wait <= 60
    assert throttle.retry_after("email:b", "ip:1") is not None  # the address is throttled too
    assert throttle.retry_after("email:b", "ip:2") is None


def test_failures_leave_the_window() -> None:
    throttle = LoginThrottle(max_failures=1, window_seconds=0.05)
    throttle.failed("email:a")
    assert throttle.retry_after("email:a") is not None
    time.sleep(0.06)
    assert throttle.retry_after("email:a") is None


def test_success_clears_the_email() -> None:
    throttle = LoginThrottle(max_failures=2, window_seconds=60)
    throttle.failed("email:a")
    throttle.succeeded("email:a")
    throttle.failed("email:a")

    assert throttle.retry_after("email:a") is None
