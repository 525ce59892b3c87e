"""Revocation reaches every instance's principal cache: here at once, elsewhere through Postgres LISTEN/NOTIFY.

A revocation is announced inside the transaction that revokes (Postgres delivers the notification on commit, and
never for a rolled-back change). An instance whose listening connection drops clears its whole cache when it
reconnects, since it may have missed something. On SQLite, where several workers may share one file, the
announcement is a row in `revocation_events` that every instance polls for a few times a second.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg
from sqlalchemy import delete, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.principals import Principal, PrincipalCache
from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.db.models import RevocationEvent

logger = logging.getLogger("gateway.auth")

CHANNEL = "gateway_revocations"
RECONNECT_SECONDS = 1.0
POLL_SECONDS = 0.25
PRUNE_EVERY_POLLS = 240  # about once a minute
EVENT_RETENTION_SECONDS = 600  # far longer than any instance takes between two polls
# What a revocation names: a user (disabled), an API token or agent key (by id), a login session (logout,
# refresh reuse), or an agent (deleted: every key of it).
USER, TOKEN, SESSION, AGENT = "user", "token", "session", "agent"


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

    async def announce(self, session: AsyncSession, kind: str, value: str) -> str:
        """Within the revoking transaction: tell every instance (at commit). Returns the target,
        which the caller applies here with `apply` once the transaction has committed (not before: a lookup
        in between would read, and cache, the old state)."""
        target = f"{kind}:{value}"
        if self.database.is_postgres:
            await session.execute(
                text("SELECT pg_notify(:channel, :target)"), {"channel": CHANNEL, "target": target}
            )
        else:
            session.add(RevocationEvent(target=target, created_at=utcnow()))
        return target

    def apply(self, target: str) -> None:
        """Evict every cached principal the revocation names."""
        self.cache.evict(lambda principal: matches(target, principal))

    async def listen(self) -> None:
        """Apply every revocation announced by any instance, until cancelled."""
        if self.database.is_postgres:
            await self._listen_for_notifications()
        else:
            await self._poll_events()

    async def _poll_events(self) -> None:
        async with self.database.session() as session:
            seen = await session.scalar(select(func.max(RevocationEvent.id))) or 0
        polls = 0
        while True:
            await asyncio.sleep(POLL_SECONDS)
            polls += 1
            try:
                async with self.database.session() as session, session.begin():
                    events = await session.execute(
                        select(RevocationEvent.id, RevocationEvent.target)
                        .where(RevocationEvent.id > seen)
                        .order_by(RevocationEvent.id)
                    )
                    for event_id, target in events:
                        self.apply(target)
                        seen = event_id
                    if polls % PRUNE_EVERY_POLLS == 0:
                        cutoff = utcnow() - timedelta(seconds=EVENT_RETENTION_SECONDS)
                        await session.execute(
                            delete(RevocationEvent).where(RevocationEvent.created_at < cutoff)
                        )
            except SQLAlchemyError as exc:
                logger.warning("revocation poll failed: %s", type(exc).__name__)

    async def _listen_for_notifications(self) -> None:
        """Reconnects whenever the listening connection drops."""
        dsn = make_url(self.database.url).set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                connection = await asyncpg.connect(dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                logger.warning("revocation listener cannot connect: %s", type(exc).__name__)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            lost = asyncio.Event()
            try:
                connection.add_termination_listener(lambda _connection, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, lambda _c, _pid, _channel, target: self.apply(target))
                self.cache.clear()  # whatever happened while we were not listening is now forgotten
                await lost.wait()
                logger.warning("revocation listener lost its connection; reconnecting")
            finally:
                if not connection.is_closed():
                    await connection.close()
