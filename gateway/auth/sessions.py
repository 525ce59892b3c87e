"""Browser sessions: login, single-use rotating refresh tokens with reuse detection, logout.

Every refresh token descends from one login (its family, which is also the access token's `sid`). Using a
refresh token marks it used, atomically, and issues its successor; presenting a used one means it was stolen or
replayed, so the whole family dies, and with it every access token of that login.

The session's CSRF token is an HMAC of its id under the server's token hash key: a page of the session can read
it from its cookie, and no other session's token (an attacker's own, planted as a cookie) passes for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.authenticator import SESSION_CLAIM
from gateway.auth.jwt import InvalidTokenError, PlatformTokens
from gateway.auth.passwords import verify_password_off_loop
from gateway.auth.revocations import SESSION, Revocations
from gateway.auth.tokens import TokenCodec
from gateway.auth.users import find_user_by_email
from gateway.db.base import utcnow
from gateway.db.engine import Database
from gateway.db.models import RefreshToken, User
from gateway.errors import AuthenticationError
from gateway.ids import new_id

INVALID_LOGIN = "Invalid email or password."
# The browser session's cookies: set by the session routes, read by the auth middleware and the agent chat.
SESSION_COOKIE = "gw_session"
REFRESH_COOKIE = "gw_refresh"
CSRF_COOKIE = "gw_csrf"
CSRF_PURPOSE = "csrf\0"  # keeps the CSRF tokens apart from the other hashes made under the same key


def csrf_token(codec: TokenCodec, session_id: str) -> str:
    """The CSRF token of the login `session_id`."""
    return codec.lookup_hash(CSRF_PURPOSE + session_id)


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """What a login or a refresh hands the browser."""

    user: User
    session_id: str
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class SessionService:
    """Issues, rotates and ends browser sessions."""

    def __init__(
        self,
        database: Database,
        codec: TokenCodec,
        platform: PlatformTokens,
        revocations: Revocations,
        *,
        access_ttl_seconds: int,
        refresh_ttl_seconds: int,
    ) -> None:
        self.database = database
        self.codec = codec
        self.platform = platform
        self.revocations = revocations
        self.access_ttl_seconds = access_ttl_seconds
        self.refresh_ttl_seconds = refresh_ttl_seconds

    async def login(self, email: str, password: str) -> IssuedSession:
        """A new session. Raises `AuthenticationError` with one message for every kind of wrong answer.

        The password is checked with no database connection held: parallel checks queue for the CPUs, and
        logins waiting there would hold the pool from every other request. The user is read again afterwards,
        and must still have the hash that was checked and be enabled."""
        async with self.database.session() as session:
            user = await find_user_by_email(session, email)
        checked_hash = user.password_hash if user else None
        matches, new_hash = await verify_password_off_loop(checked_hash, password)
        if user is None or not matches:
            raise AuthenticationError(INVALID_LOGIN, code="invalid_credentials")
        async with self.database.session() as session, session.begin():
            current = await session.get(User, user.id)
            if current is None or current.password_hash != checked_hash or current.disabled_at is not None:
                raise AuthenticationError(INVALID_LOGIN, code="invalid_credentials")
            if new_hash is not None:
                current.password_hash = new_hash
            return await self._issue(session, current, family_id=new_id("ses"))

    async def start_for(self, user: User) -> IssuedSession:
        """A session for a user who just proved themselves another way (signup)."""
        async with self.database.session() as session, session.begin():
            return await self._issue(session, user, family_id=new_id("ses"))

    async def refresh(self, raw_refresh_token: str) -> IssuedSession:
        """The successor session of `raw_refresh_token`. Raises `AuthenticationError`; a reused token kills
        its family first."""
        token_hash = self.codec.lookup_hash(raw_refresh_token)
        async with self.database.session() as session:
            async with session.begin():
                record = await session.scalar(
                    select(RefreshToken).where(RefreshToken.token_hash == token_hash)
                )
                if record is None:
                    raise AuthenticationError("The refresh token is not valid.", code="invalid_refresh_token")
                now = utcnow()
                claimed = await session.execute(
                    update(RefreshToken)
                    .where(
                        RefreshToken.id == record.id,
                        RefreshToken.used_at.is_(None),
                        RefreshToken.revoked_at.is_(None),
                    )
                    .values(used_at=now)
                )
                reused = claimed.rowcount == 0  # type: ignore[attr-defined]
                if not reused:
                    user = await session.get(User, record.user_id)
                    if record.expires_at <= now or user is None or user.disabled_at is not None:
                        raise AuthenticationError("The session has ended.", code="invalid_refresh_token")
                    return await self._issue(session, user, family_id=record.family_id)
                target = await self._revoke_family(session, record.family_id)
            self.revocations.apply(target)
        raise AuthenticationError(
            "The refresh token was already used; the session is ended.", code="refresh_token_reused"
        )

    async def session_of_refresh(self, raw_refresh_token: str) -> str | None:
        """The login a refresh token belongs to (used or not), or None for an unknown one."""
        async with self.database.session() as session:
            family_id: str | None = await session.scalar(
                select(RefreshToken.family_id).where(
                    RefreshToken.token_hash == self.codec.lookup_hash(raw_refresh_token)
                )
            )
            return family_id

    def session_of_access(self, access_token: str) -> str | None:
        """The login an access token of this gateway belongs to (its `sid`), expired or not, or None: a client
        whose token has lapsed can still end its session."""
        try:
            session_id = self.platform.verify(access_token, expired_ok=True).raw.get(SESSION_CLAIM)
        except InvalidTokenError:
            return None
        return session_id if isinstance(session_id, str) else None

    def csrf_token(self, session_id: str) -> str:
        return csrf_token(self.codec, session_id)

    async def logout(self, session_ids: set[str]) -> None:
        """Ends the logins `session_ids`: their refresh families are revoked, and with them their access tokens,
        here at once and on every instance through the revocation feed. Unknown ones are ignored."""
        if not session_ids:
            return
        async with self.database.session() as session:
            async with session.begin():
                await session.execute(
                    update(RefreshToken)
                    .where(RefreshToken.family_id.in_(session_ids), RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                )
                # Announced last, after every row it revokes is locked (see Revocations.announce).
                targets = [
                    await self.revocations.announce(session, SESSION, session_id)
                    for session_id in sorted(session_ids)
                ]
            for target in targets:
                self.revocations.apply(target)

    async def _revoke_family(self, session: AsyncSession, family_id: str) -> str:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return await self.revocations.announce(session, SESSION, family_id)

    async def _issue(self, session: AsyncSession, user: User, *, family_id: str) -> IssuedSession:
        raw = self.codec.new_opaque_secret()
        session.add(
            RefreshToken(
                id=new_id("rt"),
                user_id=user.id,
                family_id=family_id,
                token_hash=self.codec.lookup_hash(raw),
                created_at=utcnow(),
                expires_at=utcnow() + timedelta(seconds=self.refresh_ttl_seconds),
            )
        )
        await session.flush()
        access = self.platform.issue(
            user.id, ttl_seconds=self.access_ttl_seconds, extra={SESSION_CLAIM: family_id}
        )
        return IssuedSession(user, family_id, access, self.access_ttl_seconds, raw, self.refresh_ttl_seconds)
