"""LoginThrottle on a migrated database (SQLite and Postgres): reservations counted atomically, locks per pair
that grow, a higher limit per address."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update

from gateway.auth.throttle import LoginThrottle, Reservation
from gateway.db.engine import Database
from gateway.db.migrate import upgrade
from gateway.db.models import LoginAttempts
from gateway.errors import QuotaExceededError


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await upgrade(database_url)
    database = Database(database_url)
    database.open()
    try:
        yield database
    finally:
        await database.close()


class Names:
    """Accounts and addresses of one test's own: the Postgres database lives as long as the run."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex
        self.first, self.second = f"10.0.0.1/{self.run}", f"10.0.0.2/{self.run}"

    def email(self, label: str) -> str:
        return f"{label}-{self.run}@example.com"


@pytest.fixture
def names() -> Names:
    return Names()


async def attempt(throttle: LoginThrottle, email: str, address: str) -> Reservation | int:
    """The reservation, or the Retry-After of the refusal."""
    try:
        return await throttle.reserve(email, address)
    except QuotaExceededError as exc:
        return int(exc.headers["Retry-After"])


async def unlock_all(database: Database) -> None:
    """As if every lock had run out (the failures stay counted)."""
    async with database.session() as session, session.begin():
        await session.execute(update(LoginAttempts).values(locked_until=0.0))


async def test_parallel_reservations_for_one_pair_pass_at_most_the_limit(
    database: Database, names: Names
) -> None:
    throttle = LoginThrottle(database, pair_limit=5, address_limit=100)

    outcomes = await asyncio.gather(*(attempt(throttle, names.email("a"), names.first) for _ in range(40)))

    reserved = [outcome for outcome in outcomes if isinstance(outcome, Reservation)]
    assert len(reserved) == 5
    assert all(isinstance(outcome, int) and outcome > 0 for outcome in outcomes if outcome not in reserved)


async def test_the_pair_lock_leaves_other_addresses_and_other_accounts_alone(
    database: Database, names: Names
) -> None:
    throttle = LoginThrottle(database, pair_limit=2, address_limit=100)
    for _ in range(2):
        await throttle.reserve(names.email("victim"), names.first)
    assert isinstance(await attempt(throttle, names.email("victim"), names.first), int)

    assert isinstance(await attempt(throttle, names.email("victim"), names.second), Reservation)
    assert isinstance(await attempt(throttle, names.email("other"), names.first), Reservation)


async def test_the_address_is_locked_at_its_own_limit_over_many_accounts(
    database: Database, names: Names
) -> None:
    throttle = LoginThrottle(database, pair_limit=5, address_limit=3)
    for n in range(3):
        await throttle.reserve(names.email(f"user{n}"), names.first)

    assert isinstance(await attempt(throttle, names.email("fresh"), names.first), int)
    assert isinstance(await attempt(throttle, names.email("fresh"), names.second), Reservation)


async def test_a_refused_attempt_counts_nothing(database: Database, names: Names) -> None:
    throttle = LoginThrottle(database, pair_limit=1, address_limit=2)
    await throttle.reserve(names.email("a"), names.first)
    assert isinstance(await attempt(throttle, names.email("a"), names.first), int)  # the pair refuses

    # The refusal did not count against the address: one more account still gets through.
    assert isinstance(await attempt(throttle, names.email("b"), names.first), Reservation)


async def test_each_lock_after_the_limit_is_longer_than_the_last(database: Database, names: Names) -> None:
    throttle = LoginThrottle(database, pair_limit=2, address_limit=100, first_lock_seconds=60)
    waits = []
    for _ in range(4):
        while isinstance(outcome := await attempt(throttle, names.email("a"), names.first), Reservation):
            pass
        waits.append(outcome)
        await unlock_all(database)

    assert waits[0] == pytest.approx(60, abs=1)
    assert waits == sorted(waits) and len(set(waits)) == 4


async def test_a_release_forgets_the_pair_and_gives_the_address_back_one_attempt(
    database: Database, names: Names
) -> None:
    throttle = LoginThrottle(database, pair_limit=2, address_limit=3)
    await throttle.reserve(names.email("a"), names.first)
    await throttle.reserve(names.email("b"), names.first)
    await throttle.release(await throttle.reserve(names.email("a"), names.first))

    assert isinstance(await attempt(throttle, names.email("a"), names.first), Reservation)
    assert isinstance(await attempt(throttle, names.email("c"), names.first), int)  # b's failure still counts


async def test_an_attempt_read_by_a_clock_behind_the_last_one_is_not_refused(
    database: Database, names: Names
) -> None:
    """Two instances (or two requests) whose clocks read a little apart: below the limit, the order in which their
    attempts land must not matter."""
    ahead = LoginThrottle(database, pair_limit=5, address_limit=100, clock=lambda: time.time() + 5)
    behind = LoginThrottle(database, pair_limit=5, address_limit=100)
    await ahead.reserve(names.email("a"), names.first)

    assert isinstance(await attempt(behind, names.email("a"), names.first), Reservation)
    assert isinstance(await attempt(behind, names.email("b"), names.first), Reservation)  # the address too
