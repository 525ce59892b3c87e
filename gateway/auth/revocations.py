"""Revocation reaches every instance's principal cache: here at once, elsewhere within a second.

A revocation is announced inside the transaction that revokes: a row in `revocation_events` and, on Postgres, a
NOTIFY (delivered on commit, never for a rolled-back change), the fast path. Every instance also reads the events
after the last id it has seen, every `POLL_SECONDS`: that read is the catch-up after any gap, and the feed's health
check. On Postgres it runs on the listening connection itself, under `READ_TIMEOUT_SECONDS`, so a stalled or reset
listener is found and replaced. Each read that succeeds confirms the cache as of the moment it began
(`PrincipalCache.confirm`); the cache is trusted only while that is recent (`FEED_CURRENT_SECONDS`). A stalled
listener is replaced within POLL_SECONDS + READ_TIMEOUT_SECONDS = 0.5 s, leaving 0.3 s to reconnect and catch up
before the cache stops being trusted.

On Postgres, ids come from a sequence, which hands them out at insert, not at commit: announcing takes a
transaction-level advisory lock first, so that revoking transactions commit in id order and a read of
"id > last seen" misses none. Announcing is the last statement of every revoking transaction (it holds no other
lock it could wait for).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import timedelta

import asyncpg
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.principals import Principal, PrincipalCache
from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.db.models import RevocationEvent
from gateway.db.uncancelled import finish_uncancelled

logger = logging.getLogger("gateway.auth")

CHANNEL = "gateway_revocations"
POLL_SECONDS = 0.2  # between two reads of the events
READ_TIMEOUT_SECONDS = 0.3  # a read (or LISTEN) slower than this: the connection is stalled, and replaced
CONNECT_TIMEOUT_SECONDS = 2.0
RECONNECT_SECONDS = 0.2
STOP_SECONDS = 1.0  # how long a stop waits for a read under way (SQLite) to end
PRUNE_EVERY_POLLS = 300  # about once a minute
EVENT_RETENTION_SECONDS = 600  # far longer than any instance takes between two reads
# After a gap longer than this, events it needed may be pruned: the catch-up clears the cache instead.
CATCH_UP_HORIZON_SECONDS = EVENT_RETENTION_SECONDS / 2
# What a revocation names: a user (disabled), an API token or agent key (by id), a login session (logout,
# refresh reuse), or an agent (deleted: every key of it).
USER, TOKEN, SESSION, AGENT = "user", "token", "session", "agent"
# Not a revocation but carried the same way: the budget limits of a user, token or agent changed
# (`limits:token:<id>`); their cached principals are dropped, not refused, and looked up again with the new limits.
LIMITS = "limits"

FEED_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, SQLAlchemyError)
LATEST = "SELECT coalesce(max(id), 0) FROM revocation_events"
SINCE = "SELECT id, target FROM revocation_events WHERE id > $1 ORDER BY id"
# The newest row stays, so that SQLite (whose ids are max + 1) never hands out an id already seen.
PRUNE = "DELETE FROM revocation_events WHERE created_at < $1 AND id < $2"


def revoked_target(target: str) -> tuple[str, str]:
    kind, _, value = target.partition(":")
    return kind, value


def matches(target: str, principal: Principal) -> bool:
    kind, value = revoked_target(target)
    return (
        (kind == USER and principal.user_id == value)
        or (kind == TOKEN and principal.token_id == value)
        or (kind == SESSION and principal.session_id == value)
        or (kind == AGENT and principal.agent_id == value)
    )


class Revocations:
    """Announces revocations and applies those announced anywhere to this instance's cache."""

    def __init__(self, database: Database, cache: PrincipalCache) -> None:
        self.database = database
        self.cache = cache
        self._seen: int | None = None  # the last event id applied
        self._reads = 0
        self._healthy = True

    async def announce(self, session: AsyncSession, kind: str, value: str) -> str:
        """Within the revoking transaction, as its last statement: tell every instance (at commit). Returns the
        target, which the caller applies here with `apply` once the transaction has committed (not before: a
        lookup in between would read, and cache, the old state)."""
        target = f"{kind}:{value}"
        if self.database.is_postgres:
            await session.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:channel)), pg_notify(:channel, :target)"),
                {"channel": CHANNEL, "target": target},
            )
        await session.execute(insert(RevocationEvent).values(target=target, created_at=utcnow()))
        return target

    def apply(self, target: str) -> None:
        """Evict every cached principal the revocation names (forget, for a change of limits)."""
        kind, value = revoked_target(target)
        if kind == LIMITS:
            self.cache.forget(lambda principal: matches(value, principal))
            return
        self.cache.evict(lambda principal: matches(target, principal))

    def feed_lag_seconds(self) -> float:
        """Seconds since the last read of the feed began that confirmed the cache current (infinite until the
        first one)."""
        return time.monotonic() - self.cache.confirmed_at

    async def listen(self) -> None:
        """Apply every revocation announced by any instance, until cancelled."""
        if self.database.is_postgres:
            await self._follow_notifications()
        else:
            await self._follow_events()

    def _caught_up(self, events: Iterable[tuple[int, str]], *, began: float) -> None:
        """Apply `events`, read by a query that began at `began`: the cache is current as of then."""
        if began - self.cache.confirmed_at > CATCH_UP_HORIZON_SECONDS:
            self.cache.clear()
        for event_id, target in events:
            self.apply(target)
            self._seen = event_id
        self.cache.confirm(began)
        self._reads += 1
        if not self._healthy:
            logger.warning("revocation feed current again")
            self._healthy = True

    def _lost(self, exc: BaseException) -> None:
        if self._healthy:
            logger.warning(
                "revocation feed interrupted (%s); the database decides until it is back", type(exc).__name__
            )
            self._healthy = False

    def _prune_due(self) -> bool:
        return self._reads % PRUNE_EVERY_POLLS == 0

    async def _follow_events(self) -> None:
        """SQLite: several workers share one file and no NOTIFY; reading the events is the whole feed."""
        while True:
            try:
                # A stop lets the read under way end rather than cut it: a transaction cut mid-statement (the
                # prune is a write) holds the file's lock until collected, its rollback cut logs a traceback.
                await finish_uncancelled(self._read_events(), grace=STOP_SECONDS)
            except FEED_ERRORS as exc:
                self._lost(exc)
            await asyncio.sleep(POLL_SECONDS)

    async def _read_events(self) -> None:
        """One read of the events table (SQLite), and now and then a prune of the old events."""
        began = time.monotonic()
        async with self.database.session() as session, session.begin():
            if self._seen is None:
                self._seen = await session.scalar(select(func.coalesce(func.max(RevocationEvent.id), 0)))
            events = await session.execute(
                select(RevocationEvent.id, RevocationEvent.target)
                .where(RevocationEvent.id > self._seen)
                .order_by(RevocationEvent.id)
            )
            self._caught_up(events, began=began)
            if self._prune_due():
                cutoff = utcnow() - timedelta(seconds=EVENT_RETENTION_SECONDS)
                await session.execute(
                    delete(RevocationEvent).where(
                        RevocationEvent.created_at < cutoff, RevocationEvent.id < self._seen
                    )
                )

    async def _follow_notifications(self) -> None:
        """Postgres: a dedicated connection that listens, and reads the events; replaced whenever it fails."""
        dsn = make_url(self.database.url).set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_SECONDS)
            except FEED_ERRORS as exc:
                self._lost(exc)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            try:
                await self._listen_on(connection)
            except FEED_ERRORS as exc:
                self._lost(exc)
            finally:
                connection.terminate()  # no goodbye: a stalled connection would not deliver it

    async def _listen_on(self, connection: asyncpg.Connection) -> None:
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            await connection.add_listener(CHANNEL, lambda _c, _pid, _channel, target: self.apply(target))
            if self._seen is None:
                self._seen = await connection.fetchval(LATEST)
        while True:
            began = time.monotonic()
            events = await connection.fetch(SINCE, self._seen, timeout=READ_TIMEOUT_SECONDS)
            self._caught_up(((event["id"], event["target"]) for event in events), began=began)
            if self._prune_due():
                cutoff = utcnow() - timedelta(seconds=EVENT_RETENTION_SECONDS)
                await connection.execute(PRUNE, cutoff, self._seen, timeout=READ_TIMEOUT_SECONDS)
            await asyncio.sleep(POLL_SECONDS)
