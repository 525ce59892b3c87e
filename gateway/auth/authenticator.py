"""Turning a presented credential into a `Principal`: from the cache when known, from the database otherwise.

A made-up API token is refused by its tag alone; a known-bad one from the negative cache; a good one from the
positive cache while the revocation feed is current. Only the first sight of a credential (and each TTL after, and
each request while the feed is behind) costs a query. `last_used_at` is kept in memory and written in batches,
never one write per request.

When the database cannot answer (refused, timed out, no connection free), a cached principal still serves until
`AUTH_CACHE_SECONDS` after the feed was last confirmed current; past that, or for a credential not cached, the
answer is 503 `auth_unavailable`: never a 401 the database did not say, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.jwt import Claims, InvalidTokenError, TokenVerifier, looks_like_jwt
from gateway.auth.principals import PrincipalCache
from gateway.auth.tokens import (
    AGENT_KEY_PREFIX,
    API_TOKEN_PREFIX,
    TokenCodec,
    find_api_token,
    record_last_used,
)
from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.db.models import ApiToken, RefreshToken, User
from gateway.db.uncancelled import finish_uncancelled
from gateway.errors import AuthenticationError, AuthUnavailableError
from gateway.principals import API_TOKEN, JWT, SESSION, AppliedLimit, Principal

logger = logging.getLogger("gateway.auth")

LAST_USED_FLUSH_SECONDS = 10.0
LAST_USED_STOP_SECONDS = 1.0  # how long a flush under way when the app stops is waited for
LOOKUP_TIMEOUT_SECONDS = 2.0  # a credential lookup slower than this: the database is away
# Once a lookup found it away, the lookups of the next second do not wait for it again, unless the revocation feed
# has reached it since.
AWAY_SECONDS = 1.0
DEFAULT_AUTH_CACHE_SECONDS = 30.0
# What "the database cannot answer" looks like: a connection refused or reset, a timeout, no pooled connection free.
DATABASE_AWAY = (OSError, TimeoutError, DBAPIError, PoolTimeoutError)
SESSION_CLAIM = "sid"  # the refresh family (login) an access token belongs to


class AgentKeyLookup(Protocol):
    """The agent keys' store, as the authenticator needs it. The agents feature owns the keys and implements this
    (`gateway.agents.agent_keys.AgentKeys`); the app hands it in, so that auth imports nothing of agents."""

    async def principal(self, session: AsyncSession, key_hash: str) -> Principal | None:
        """Who the live key stored under `key_hash` proves; None when there is none, or it was revoked."""
        ...

    def is_key_id(self, token_id: str) -> bool:
        """Whether a principal's `token_id` is an agent key's."""
        ...

    async def record_last_used(self, session: AsyncSession, last_used: dict[str, datetime]) -> None:
        """Writes a batch of `last_used_at` times (key id → time)."""
        ...


class LimitLookup(Protocol):
    """The budgets' limits, as the authenticator needs them: implemented by `gateway.budgets.service.Budgets`,
    handed in by the app, so that auth imports nothing of budgets."""

    async def limits_of(self, session: AsyncSession, principal: Principal) -> tuple[AppliedLimit, ...]:
        """The limits that apply to `principal` (its token's, its user's, its agent's)."""
        ...


class Authenticator:
    """Resolves Bearer tokens and session cookies to principals; raises `AuthenticationError` otherwise."""

    def __init__(
        self,
        database: Database,
        codec: TokenCodec,
        verifier: TokenVerifier,
        cache: PrincipalCache,
        *,
        agent_keys: AgentKeyLookup,
        auth_cache_seconds: float = DEFAULT_AUTH_CACHE_SECONDS,
        limits: LimitLookup | None = None,
    ) -> None:
        self.database = database
        self.limits = limits
        self.codec = codec
        self.verifier = verifier
        self.cache = cache
        self.agent_keys = agent_keys
        self.auth_cache_seconds = auth_cache_seconds
        self.platform_issuer = verifier.platform.issuer
        self._last_used: dict[str, datetime] = {}
        self._away_at = -math.inf  # time.monotonic() when a lookup last found the database away
        self._lookups: set[asyncio.Task[Principal | None]] = set()  # held until done, abandoned ones included

    async def authenticate(self, credential: str) -> Principal:
        """The principal `credential` proves. Raises `AuthenticationError` (never an empty principal)."""
        if credential.startswith(API_TOKEN_PREFIX):
            principal = await self._api_token(credential)
            self._last_used[principal.token_id or ""] = utcnow()
            return principal
        if credential.startswith(AGENT_KEY_PREFIX):
            principal = await self._agent_key(credential)
            self._last_used[principal.token_id or ""] = utcnow()
            return principal
        if looks_like_jwt(credential):
            return await self._jwt(credential)
        raise AuthenticationError("The credential is not valid.")

    async def _api_token(self, token: str) -> Principal:
        async def load(session: AsyncSession, key: str) -> Principal | None:
            found = await find_api_token(session, key)
            if found is None or not _token_is_live(*found, now=utcnow()):
                return None
            record, user = found
            return Principal(
                user_id=user.id,
                kind=API_TOKEN,
                scopes=frozenset(record.scopes),
                token_id=record.id,
                is_admin=user.is_admin,
                expires_at=record.expires_at.timestamp() if record.expires_at else None,
            )

        well_formed = self.codec.is_well_formed_api_token(token)
        return await self._stored(token, well_formed, load, refused="API token", why="revoked or has expired")

    async def _agent_key(self, agent_key: str) -> Principal:
        well_formed = self.codec.is_well_formed(agent_key, AGENT_KEY_PREFIX)
        return await self._stored(
            agent_key, well_formed, self.agent_keys.principal, refused="agent key", why="revoked"
        )

    async def _stored(
        self,
        credential: str,
        well_formed: bool,
        load: Callable[[AsyncSession, str], Awaitable[Principal | None]],
        *,
        refused: str,
        why: str,
    ) -> Principal:
        """A credential stored as a keyed hash (API token, agent key): from the cache, else one lookup."""
        if not well_formed:
            raise AuthenticationError(f"The {refused} is not valid.")
        key = self.codec.lookup_hash(credential)
        principal = self._cached(key)
        if principal is not None:
            return principal
        principal = await self._looked_up(key, lambda session: load(session, key))
        if principal is None:
            raise AuthenticationError(f"The {refused} is not valid, or was {why}.")
        return principal

    async def _jwt(self, token: str) -> Principal:
        key = "jwt:" + self.codec.lookup_hash(token)
        principal = self._cached(key)
        if principal is not None:
            return principal
        try:
            claims = await self.verifier.verify(token)
        except InvalidTokenError:
            # Not cached as refused: checking a signature costs no query, and a provider's JWKS outage
            # must not leave good tokens refused afterwards.
            raise AuthenticationError("The token is not valid or has expired.") from None
        principal = await self._looked_up(key, lambda session: self._platform_user(session, claims))
        if principal is None:
            raise AuthenticationError("The token's user is unknown or disabled, or its session has ended.")
        return principal

    async def _looked_up(
        self, key: str, load: Callable[[AsyncSession], Awaitable[Principal | None]]
    ) -> Principal | None:
        """The database's answer for `key` (cached, refused as None); when it cannot answer, the cached principal
        if the feed was confirmed within AUTH_CACHE_SECONDS. Raises `AuthUnavailableError` otherwise."""
        generation = self.cache.generation
        away = self._away_at > self.cache.confirmed_at and time.monotonic() - self._away_at < AWAY_SECONDS
        if not away:
            try:
                principal = await self._ask_database(load)
            except DATABASE_AWAY as exc:
                self._away_at = time.monotonic()
                logger.warning("credential lookup failed, the database is away: %s", type(exc).__name__)
            else:
                if principal is None:
                    self.cache.refuse(key)
                else:
                    self.cache.remember(key, principal, generation=generation)
                return principal
        if self.cache.is_refused(key):  # revoked meanwhile: the feed said so
            raise AuthenticationError("The credential is not valid.")
        principal = self.cache.recall(key)
        if principal is None or time.monotonic() - self.cache.confirmed_at > self.auth_cache_seconds:
            raise AuthUnavailableError()
        return principal

    async def _ask_database(
        self, load: Callable[[AsyncSession], Awaitable[Principal | None]]
    ) -> Principal | None:
        """`load` in a session of its own, within LOOKUP_TIMEOUT_SECONDS. Past that it is cancelled and left to
        end alone: releasing its connection may wait on the same silent network (SQLAlchemy closes it gracefully
        first, for up to 2 s)."""

        async def in_session() -> Principal | None:
            async with self.database.session() as session:
                principal = await load(session)
                if principal is None or self.limits is None:
                    return principal
                # The principal knows its budgets and rate limits from here on: admission asks nothing more.
                limits = await self.limits.limits_of(session, principal)
                return replace(principal, limits=limits) if limits else principal

        lookup = asyncio.create_task(in_session())
        self._lookups.add(lookup)
        lookup.add_done_callback(self._lookups.discard)
        try:
            done, _ = await asyncio.wait({lookup}, timeout=LOOKUP_TIMEOUT_SECONDS)
        finally:
            if not lookup.done():
                lookup.cancel()
        if not done:
            raise TimeoutError("credential lookup")
        return lookup.result()

    async def _platform_user(self, session: AsyncSession, claims: Claims) -> Principal | None:
        own = claims.issuer == self.platform_issuer
        session_id = claims.raw.get(SESSION_CLAIM) if own else None
        user = await session.get(User, claims.subject)
        if user is None or user.disabled_at is not None:
            return None
        if isinstance(session_id, str) and not await _session_is_live(session, session_id):
            return None
        return Principal(
            user_id=user.id,
            kind=SESSION if own else JWT,
            session_id=session_id if isinstance(session_id, str) else None,
            is_admin=user.is_admin,
            expires_at=float(claims.expires_at),
        )

    def _cached(self, key: str) -> Principal | None:
        if self.cache.is_refused(key):
            raise AuthenticationError("The credential is not valid.")
        principal = self.cache.get(key)
        if principal is not None and principal.expires_at is not None and principal.expires_at <= time.time():
            raise AuthenticationError("The credential has expired.")
        return principal

    async def flush_last_used(self) -> None:
        """Write the `last_used_at` times gathered since the last flush, in one transaction."""
        if not self._last_used:
            return
        batch, self._last_used = self._last_used, {}
        agent_keys = {key_id: at for key_id, at in batch.items() if self.agent_keys.is_key_id(key_id)}
        try:
            async with self.database.session() as session, session.begin():
                await record_last_used(session, {k: at for k, at in batch.items() if k not in agent_keys})
                await self.agent_keys.record_last_used(session, agent_keys)
        except BaseException:
            # Kept for the next flush (the database away), unless a later use came meanwhile: a time is never
            # written backwards, so writing one twice is harmless.
            for key_id, at in batch.items():
                self._last_used.setdefault(key_id, at)
            raise

    async def run_last_used_writer(self) -> None:
        """Flush `last_used_at` every few seconds until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(LAST_USED_FLUSH_SECONDS)
                try:
                    # A cancel lets the flush's transaction end rather than cut it (gateway.db.uncancelled).
                    await finish_uncancelled(self.flush_last_used(), grace=LAST_USED_STOP_SECONDS)
                except Exception as exc:  # a database hiccup must not end the writer
                    logger.warning("could not record token last use: %s", type(exc).__name__)
        finally:
            with contextlib.suppress(Exception):
                await finish_uncancelled(self.flush_last_used(), grace=LAST_USED_STOP_SECONDS)


def _token_is_live(record: ApiToken, user: User, *, now: datetime) -> bool:
    return (
        record.revoked_at is None
        and (record.expires_at is None or record.expires_at > now)
        and user.disabled_at is None
    )


async def _session_is_live(session: AsyncSession, session_id: str) -> bool:
    """Whether the login `session_id` still has an unrevoked refresh token (logout revokes them all)."""
    live = await session.scalar(
        select(RefreshToken.id)
        .where(RefreshToken.family_id == session_id, RefreshToken.revoked_at.is_(None))
        .limit(1)
    )
    return live is not None
