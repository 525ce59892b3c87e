"""Revocation reaches every instance's principal cache: here at once, elsewhere through Postgres LISTEN/NOTIFY.

A revocation is announced inside the transaction that revokes (Postgres delivers the notification on commit, and
never for a rolled-back change). An instance whose listening connection drops clears its whole cache when it
reconnects, since it may have missed something.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.principals import Principal, PrincipalCache
from gateway.db.engine import Database

logger = logging.getLogger("gateway.auth")

CHANNEL = "gateway_revocations"
RECONNECT_SECONDS = 1.0
# What a revocation names: a user (disabled), an API token, or a login session (logout, refresh reuse).
USER, TOKEN, SESSION = "user", "token", "session"


def revoked_target(target: str) -> tuple[str, str]:
    kind, _, value = target.partition(":")
    return kind, value


def matches(target: str, principal: Principal) -> bool:
    kind, value = revoked_target(target)
    return (
        (kind == USER and principal.user_id == value)
        or (kind == TOKEN and principal.token_id == value)
        or (kind == SESSION and principal.session_id == value)
    )


class Revocations:
    """Announces revocations and applies those announced anywhere to this instance's cache."""

    def __init__(self, database: Database, cache: PrincipalCache) -> None:
        self.database = database
        self.cache = cache

    async def announce(self, session: AsyncSession, kind: str, value: str) -> str:
        """Within the revoking transaction: tell every instance (on Postgres, at commit). Returns the target,
        which the caller applies here with `apply` once the transaction has committed (not before: a lookup
        in between would read, and cache, the old state)."""
        target = f"{kind}:{value}"
        if self.database.is_postgres:
            await session.execute(
                text("SELECT pg_notify(:channel, :target)"), {"channel": CHANNEL, "target": target}
            )
        return target

    def apply(self, target: str) -> None:
        """Evict every cached principal the revocation names."""
        self.cache.evict(lambda principal: matches(target, principal))

    async def listen(self) -> None:
        """On Postgres: apply every announced revocation until cancelled, reconnecting when the link drops."""
        if not self.database.is_postgres:
            return
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
