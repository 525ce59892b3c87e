"""Login throttling (OWASP ASVS 2.2.1): an attempt is reserved before the password is checked, and given back
only when the password was right.

Two counters are reserved together, in one transaction, each by one conditional UPSERT ... RETURNING: the
(account, address) pair, locked after `PAIR_LIMIT` failures, and the address alone, locked after the higher
`ADDRESS_LIMIT` (one address trying many accounts). A reservation is refused while its key is locked, and the
reservation that reaches the limit sets the lock itself, so N parallel attempts count N and at most the limit
reach the password check. Each further lock doubles (`FIRST_LOCK_SECONDS` up to `MAX_LOCK_SECONDS`); a key
quiet for `FORGET_SECONDS` starts again. Locking the pair, not the account, means an attacker elsewhere cannot
lock the user out. An IPv6 client is counted by its /64 (`client_of`), or each of its addresses would be new.

The counters live in the database, not in process memory: instances share one database, and a count per process
would multiply the allowance by their number. Keys are hashes, so no email or address is stored here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import Database
from gateway.db.models import LoginAttempts
from gateway.errors import QuotaExceededError

PAIR_LIMIT = 5
ADDRESS_LIMIT = 50
FIRST_LOCK_SECONDS = 60
MAX_LOCK_SECONDS = 15 * 60
FORGET_SECONDS = 60 * 60
PRUNE_EVERY_RESERVATIONS = 500
# An IPv6 subscriber is given a /64 at least: its 2^64 addresses are one client to the throttle.
IPV6_CLIENT_PREFIX = 64


@dataclass(frozen=True, slots=True)
class Reservation:
    """One login attempt, counted as failed until released."""

    pair_key: str
    address_key: str


def throttle_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def client_of(address: str) -> str:
    """The client an address is counted as: an IPv4 address (IPv4-mapped IPv6 ones too) as it is, an IPv6 one
    by its /64, which one subscriber holds whole; anything else (no address known) as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


class LoginThrottle:
    """Reserves login attempts per (account, address) pair and per address, in the shared database."""

    def __init__(
        self,
        database: Database,
        *,
        pair_limit: int = PAIR_LIMIT,
        address_limit: int = ADDRESS_LIMIT,
        first_lock_seconds: int = FIRST_LOCK_SECONDS,
        max_lock_seconds: int = MAX_LOCK_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.pair_limit = pair_limit
        self.address_limit = address_limit
        self.first_lock_seconds = first_lock_seconds
        self.max_lock_seconds = max_lock_seconds
        self.clock = clock
        self._reservations = 0

    async def reserve(self, email: str, address: str) -> Reservation:
        """Counts an attempt of `email` from `address` as failed until `release`. Raises `QuotaExceededError`
        (429 with Retry-After) while the pair or the address is locked, counting nothing."""
        client = client_of(address)
        reservation = Reservation(
            pair_key=throttle_key("pair", email.strip().lower(), client),
            address_key=throttle_key("address", client),
        )
        now = self.clock()
        async with self.database.session() as session, session.begin():
            for key, limit in (
                (reservation.pair_key, self.pair_limit),
                (reservation.address_key, self.address_limit),
            ):
                if not await self._counted(session, key, limit=limit, now=now):
                    locked_until = await session.scalar(
                        select(LoginAttempts.locked_until).where(LoginAttempts.key == key)
                    )
                    # Leaving the transaction by this error rolls it back: nothing is counted.
                    raise QuotaExceededError(
                        "Too many failed logins; try again later.",
                        code="too_many_attempts",
                        headers={"Retry-After": str(max(1, math.ceil((locked_until or now) - now)))},
                    )
        self._reservations += 1
        if self._reservations % PRUNE_EVERY_RESERVATIONS == 0:
            await self._prune(now)
        return reservation

    async def release(self, reservation: Reservation) -> None:
        """The password was right: the pair's failures are forgotten, the address gives back this attempt only
        (one good account must not clear the failures of the others tried from there)."""
        remaining = LoginAttempts.failures - 1
        async with self.database.session() as session, session.begin():
            await session.execute(delete(LoginAttempts).where(LoginAttempts.key == reservation.pair_key))
            await session.execute(
                update(LoginAttempts)
                .where(LoginAttempts.key == reservation.address_key, LoginAttempts.failures > 0)
                .values(
                    failures=remaining,
                    lock_seconds=case((remaining < self.address_limit, 0), else_=LoginAttempts.lock_seconds),
                    locked_until=case(
                        (remaining < self.address_limit, 0.0), else_=LoginAttempts.locked_until
                    ),
                )
            )

    async def _counted(self, session: AsyncSession, key: str, *, limit: int, now: float) -> bool:
        """Adds one attempt to `key` unless it is locked; the attempt that reaches `limit` locks it.

        An unlocked key's `locked_until` is 0, not the time of its last attempt: attempts run side by side (and
        instances' clocks differ a little), so an attempt may read the clock before the one counted just ahead
        of it, and would take that time for a lock."""
        insert = postgresql.insert if self.database.is_postgres else sqlite.insert
        forgotten = LoginAttempts.last_attempt <= now - FORGET_SECONDS
        failures = case((forgotten, 1), else_=LoginAttempts.failures + 1)
        doubled = case((forgotten, 0), else_=LoginAttempts.lock_seconds) * 2
        lock = case(
            (failures < limit, 0),
            (doubled < self.first_lock_seconds, self.first_lock_seconds),
            (doubled > self.max_lock_seconds, self.max_lock_seconds),
            else_=doubled,
        )
        first_lock = self.first_lock_seconds if limit <= 1 else 0
        statement = (
            insert(LoginAttempts)
            .values(
                key=key,
                failures=1,
                lock_seconds=first_lock,
                locked_until=now + first_lock if first_lock else 0.0,
                last_attempt=now,
            )
            .on_conflict_do_update(
                index_elements=[LoginAttempts.key],
                set_={
                    "failures": failures,
                    "lock_seconds": lock,
                    "locked_until": case((failures < limit, 0.0), else_=lock + now),
                    "last_attempt": now,
                },
                where=LoginAttempts.locked_until <= now,
            )
            .returning(LoginAttempts.failures)
        )
        return (await session.execute(statement)).first() is not None

    async def _prune(self, now: float) -> None:
        """Keys quiet past `FORGET_SECONDS` would start again anyway: their rows go."""
        async with self.database.session() as session, session.begin():
            await session.execute(
                delete(LoginAttempts).where(LoginAttempts.last_attempt <= now - FORGET_SECONDS)
            )
