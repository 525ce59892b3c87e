"""The ORM models: identity (users, tokens, revocations) and usage. Agents and the log add theirs here."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base, UtcDateTime, utcnow

__all__ = [
    "ApiToken",
    "Base",
    "RefreshToken",
    "RevocationEvent",
    "UsageEvent",
    "UsageHour",
    "UsageHourLatency",
    "User",
]


class User(Base):
    """A person who signs in; `email` is stored lower-cased."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class RefreshToken(Base):
    """One single-use refresh token; every token descended from one login shares a `family_id`."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[str] = mapped_column(String(40), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ApiToken(Base):
    """A user's long-lived token, kept only as a keyed hash and a display prefix."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user_id_created_at", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class RevocationEvent(Base):
    """A revocation, for instances that cannot hear Postgres NOTIFY (several workers on one SQLite file)."""

    __tablename__ = "revocation_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)


class UsageEvent(Base):
    """One proxied request or agent turn, as usage analytics counts it. Kept after its user is gone."""

    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_events_dataset_created_at", "dataset", "created_at"),
        Index("ix_usage_events_dataset_user_id_created_at", "dataset", "user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(
        String(32), primary_key=True
    )  # made by the gateway: replays are idempotent
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    dataset: Mapped[str] = mapped_column(String(100))
    request_id: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(40))
    token_id: Mapped[str | None] = mapped_column(String(40))
    agent_id: Mapped[str | None] = mapped_column(String(40))
    request_type: Mapped[str] = mapped_column(String(20))
    provider: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str | None] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(String(500))
    status: Mapped[int]
    is_error: Mapped[bool]
    is_stream: Mapped[bool]
    latency_ms: Mapped[float] = mapped_column(Float)
    ttfb_ms: Mapped[float | None] = mapped_column(Float)
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    total_tokens: Mapped[int] = mapped_column(default=0)
    ocr_pages: Mapped[int] = mapped_column(default=0)
    input_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    output_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    ocr_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    max_tokens: Mapped[int | None]
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    # The gateway's error code when it failed the request itself (`upstream_incomplete`: the answer broke off).
    error: Mapped[str | None] = mapped_column(String(40))


class UsageHour(Base):
    """The usage of one hour, per request type, provider, model and path: what long windows are summed from.

    Kept by the recorder in the transaction that writes the events. Empty provider or model is stored as "".
    """

    __tablename__ = "usage_hours"

    dataset: Mapped[str] = mapped_column(String(100), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    request_type: Mapped[str] = mapped_column(String(20), primary_key=True)
    provider: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    path: Mapped[str] = mapped_column(String(500), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    ocr_pages: Mapped[int] = mapped_column(BigInteger)
    input_cost_usd: Mapped[float] = mapped_column(Float)
    output_cost_usd: Mapped[float] = mapped_column(Float)
    ocr_cost_usd: Mapped[float] = mapped_column(Float)
    latency_sum_ms: Mapped[float] = mapped_column(Float)


class UsageHourLatency(Base):
    """How many requests of one hour (per type and provider) fell in each latency bucket, for the p95 of long
    windows; bucket b holds latencies up to 1.05**b ms."""

    __tablename__ = "usage_hour_latencies"

    dataset: Mapped[str] = mapped_column(String(100), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    request_type: Mapped[str] = mapped_column(String(20), primary_key=True)
    provider: Mapped[str] = mapped_column(String(40), primary_key=True)
    bucket: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    requests: Mapped[int] = mapped_column(BigInteger)


# The other domains keep their tables in their own modules; importing them here puts every table in
# Base.metadata, which the migrations are checked against.
from gateway.db import agent_models, asset_models, budget_models, log_models  # noqa: E402,F401


class LoginAttempts(Base):
    """Failed (or still running) logins of one throttle key: an (account, address) pair or an address, by hash.

    Times are unix seconds, not datetimes, so that the one conditional UPSERT that reserves an attempt does its
    arithmetic the same way on Postgres and SQLite.
    """

    __tablename__ = "login_attempts"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column()
    lock_seconds: Mapped[int] = mapped_column()  # the current lock's length; doubles with each lock
    locked_until: Mapped[float] = mapped_column(Float)
    last_attempt: Mapped[float] = mapped_column(Float, index=True)
