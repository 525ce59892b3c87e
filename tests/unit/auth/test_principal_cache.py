"""PrincipalCache: bounded, short-lived, never resurrecting a revoked principal, trusted only while the
revocation feed is current."""

from __future__ import annotations

import math
import time

from gateway.auth.principals import API_TOKEN, Principal, PrincipalCache


def principal(user: str = "usr_1", token: str | None = "tok_1", expires_at: float | None = None) -> Principal:
    return Principal(user_id=user, kind=API_TOKEN, token_id=token, expires_at=expires_at)


def current(*, ttl: float = 30.0, negative_ttl: float = 5.0, max_entries: int = 10_000) -> PrincipalCache:
    """A cache whose revocation feed is always current (what these tests are not about)."""
    return PrincipalCache(ttl=ttl, negative_ttl=negative_ttl, max_entries=max_entries, current_for=math.inf)


def test_a_remembered_principal_is_served_until_its_ttl() -> None:
    cache = current(ttl=0.05)
    cache.remember("k", principal(), generation=cache.generation)

    assert cache.get("k") == principal()
    time.sleep(0.06)
    assert cache.get("k") is None


def test_never_served_past_the_credential_expiry() -> None:
    cache = current(ttl=60)
    cache.remember("k", principal(expires_at=time.time() - 1), generation=cache.generation)

    assert cache.get("k") is None


def test_a_lookup_that_began_before_a_revocation_does_not_store_its_answer() -> None:
    cache = current()
    generation = cache.generation  # a lookup starts...
    cache.evict(lambda p: p.token_id == "tok_1")  # ...the token is revoked meanwhile...
    cache.remember("k", principal(), generation=generation)  # ...and the stale answer arrives.

    assert cache.get("k") is None


def test_evict_drops_only_what_it_names() -> None:
    cache = current()
    cache.remember("a", principal(token="tok_a"), generation=cache.generation)
    cache.remember("b", principal(token="tok_b"), generation=cache.generation)

    cache.evict(lambda p: p.token_id == "tok_a")

    assert cache.get("a") is None
    assert cache.get("b") is not None


def test_refusals_expire_and_are_bounded_apart_from_known_principals() -> None:
    cache = current(negative_ttl=0.05, max_entries=10)
    cache.remember("valid", principal(), generation=cache.generation)
    for index in range(100):
        cache.refuse(f"bad-{index}")

    assert cache.get("valid") is not None  # a flood of refusals cannot push a valid credential out
    assert cache.is_refused("bad-99") and not cache.is_refused("bad-0")
    time.sleep(0.06)
    assert not cache.is_refused("bad-99")


def test_the_cache_is_bounded() -> None:
    cache = current(max_entries=3)
    for index in range(5):
        cache.remember(f"k{index}", principal(token=f"tok_{index}"), generation=cache.generation)

    assert [cache.get(f"k{index}") is not None for index in range(5)] == [False, False, True, True, True]


def test_served_only_while_the_feed_is_confirmed_current() -> None:
    cache = PrincipalCache(current_for=0.05)
    cache.remember("k", principal(), generation=cache.generation)
    assert cache.get("k") is None  # never confirmed yet

    cache.confirm(time.monotonic())
    assert cache.get("k") == principal()
    time.sleep(0.06)
    assert cache.get("k") is None  # the feed went quiet: the database decides
    assert cache.recall("k") == principal()  # unless it cannot
    assert (cache.hits, cache.misses) == (1, 2)


def test_recall_serves_past_the_ttl_but_never_past_the_credential_expiry() -> None:
    cache = current(ttl=0.01)
    cache.remember("old", principal(), generation=cache.generation)
    cache.remember("expired", principal(expires_at=time.time() + 0.01), generation=cache.generation)
    time.sleep(0.02)

    assert cache.get("old") is None
    assert cache.recall("old") == principal()
    assert cache.recall("expired") is None


def test_an_evicted_principal_is_refused_without_a_lookup() -> None:
    cache = current()
    cache.remember("k", principal(), generation=cache.generation)

    cache.evict(lambda p: p.user_id == "usr_1")

    assert cache.is_refused("k")
    assert cache.recall("k") is None
