"""API tokens: their format, the keyed hash they are stored and looked up under, and their queries.

A token is `gw_` + 43 url-safe random characters (32 bytes) + a 6-character tag keyed by the server, so that a
made-up token is refused without touching the database. Only HMAC-SHA-256(TOKEN_HASH_KEY, token) is stored.
Agent keys (`gateway.agents.agent_keys`) have the same shape and storage with the prefix `ak_`.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.base import utcnow
from gateway.db.models import ApiToken, User
from gateway.ids import new_id
from gateway.principals import KNOWN_SCOPES as KNOWN_SCOPES  # the scopes a token may hold

API_TOKEN_PREFIX = "gw_"
AGENT_KEY_PREFIX = "ak_"
RANDOM_CHARS = 43
TAG_CHARS = 6
DISPLAY_CHARS = 11  # "gw_" and the first 8 random characters: enough to tell tokens apart, useless to guess
PROXY_SCOPES = ("chat", "ocr", "chroma")


@dataclass(frozen=True, slots=True)
class TokenCodec:
    """Makes, checks and hashes secrets under the server's token hash key."""

    key: bytes

    def lookup_hash(self, secret: str) -> str:
        """The keyed hash a secret is stored and found under."""
        return hmac.digest(self.key, secret.encode(), "sha256").hex()  # one-shot: no HMAC object per call

    def new_api_token(self) -> str:
        return self.new_tagged_secret(API_TOKEN_PREFIX)

    def new_tagged_secret(self, prefix: str) -> str:
        """`prefix` + 32 random bytes (url-safe) + the server's tag: a token (`gw_`) or agent key (`ak_`)."""
        body = prefix + secrets.token_urlsafe(32)
        return body + self._tag(body)

    def new_opaque_secret(self) -> str:
        """A random secret with no format of its own (refresh tokens)."""
        return secrets.token_urlsafe(32)

    def is_well_formed_api_token(self, token: str) -> bool:
        """Whether `token` is one this server could have made (its tag checks out), in constant time."""
        return self.is_well_formed(token, API_TOKEN_PREFIX)

    def is_well_formed(self, token: str, prefix: str) -> bool:
        """Whether `token` is a `prefix` secret this server could have made (its tag checks out)."""
        if len(token) != len(prefix) + RANDOM_CHARS + TAG_CHARS or not token.startswith(prefix):
            return False
        body, tag = token[:-TAG_CHARS], token[-TAG_CHARS:]
        return hmac.compare_digest(tag.encode(), self._tag(body).encode())

    def _tag(self, body: str) -> str:
        digest = hmac.digest(self.key, b"gateway api token tag\x00" + body.encode(), "sha256")
        return base64.urlsafe_b64encode(digest).decode()[:TAG_CHARS]


def display_prefix(token: str) -> str:
    return token[:DISPLAY_CHARS]


async def create_api_token(
    session: AsyncSession,
    codec: TokenCodec,
    *,
    user_id: str,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
) -> tuple[ApiToken, str]:
    """A new token for `user_id`: (its record, the raw token, which is never stored)."""
    raw = codec.new_api_token()
    record = ApiToken(
        id=new_id("tok"),
        user_id=user_id,
        name=name,
        prefix=display_prefix(raw),
        token_hash=codec.lookup_hash(raw),
        scopes=scopes,
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(record)
    await session.flush()
    return record, raw


async def list_api_tokens(session: AsyncSession, user_id: str) -> list[ApiToken]:
    """The user's tokens, newest first."""
    query = (
        select(ApiToken)
        .where(ApiToken.user_id == user_id)
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    )
    return list((await session.scalars(query)).all())


async def revoke_api_token(session: AsyncSession, *, user_id: str, token_id: str) -> ApiToken | None:
    """Revokes the user's token (once; revoking again changes nothing). None when the user has no such token."""
    record = await session.scalar(
        select(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id)
    )
    if record is not None and record.revoked_at is None:
        record.revoked_at = utcnow()
    return record


async def find_api_token(session: AsyncSession, token_hash: str) -> tuple[ApiToken, User] | None:
    """The token stored under `token_hash` with its user, whatever their state."""
    row = (
        await session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == token_hash)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def record_last_used(session: AsyncSession, last_used: dict[str, datetime]) -> None:
    """Writes a batch of `last_used_at` times (token id → time), never moving one backwards."""
    for token_id, used_at in last_used.items():
        await session.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id)
            .where((ApiToken.last_used_at.is_(None)) | (ApiToken.last_used_at < used_at))
            .values(last_used_at=used_at)
        )
