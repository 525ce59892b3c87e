"""The gateway's configuration: one frozen object read once from the environment (and `.env`).

Nothing else in the package reads `os.environ`; the object is passed down from the command line or the app factory.
A bad value raises `SettingsError`, whose message names the variable, so that start-up stops with a clear line.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com"
DEFAULT_MISTRAL_BASE_URL = "https://api.mistral.ai"
DEFAULT_MISTRAL_OCR_MODEL = "mistral-ocr-latest"
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
MIN_KEY_BYTES = 32
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
# The plain URL forms API.md accepts, and the async drivers they mean.
DATABASE_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class SettingsError(ValueError):
    """A configuration variable has a value the gateway cannot use."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting the gateway reads, already parsed and checked."""

    data_dir: Path = Path("data")
    database_url: str = ""
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str = DEFAULT_OPENAI_BASE_URL
    mistral_api_key: str | None = field(default=None, repr=False)
    mistral_base_url: str = DEFAULT_MISTRAL_BASE_URL
    mistral_ocr_model: str = DEFAULT_MISTRAL_OCR_MODEL
    api_auth_required: bool = False
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 300.0
    # Identity. Secrets left unset are generated once into the data directory (`gateway.keys`).
    platform_jwt_secret: bytes | None = field(default=None, repr=False)
    platform_jwks_url: str | None = None
    platform_jwt_public_key: str | None = None
    platform_jwt_issuer: str | None = None
    platform_jwt_audience: str | None = None
    token_hash_key: bytes | None = field(default=None, repr=False)
    cookie_secure: bool = True
    allow_signup: bool = False
    # Usage analytics.
    usage_api_key: str | None = field(default=None, repr=False)
    analytics_dataset: str = "ai_worker_requests"
    pricing_file: Path | None = None
    access_token_ttl_seconds: int = 15 * 60
    refresh_token_ttl_seconds: int = 30 * 24 * 3600

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", sqlite_url(self.data_dir / "gateway.db"))

    @property
    def is_embedded_database(self) -> bool:
        """True on the SQLite default, where `gateway serve` applies the migrations itself."""
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read the settings from `environ` (default: the process environment) over an optional `.env` file.

        Raises `SettingsError` naming the first variable with a bad value.
        """
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> Settings:
        """Parse the settings from a mapping of variable names to raw strings."""
        reader = _Reader(env)
        data_dir = Path(reader.text("DATA_DIR") or "data")
        database_url = reader.text("DATABASE_URL")
        return cls(
            data_dir=data_dir,
            database_url=parse_database_url(database_url) if database_url else "",
            openai_api_key=reader.text("OPENAI_API_KEY"),
            openai_base_url=reader.url("OPENAI_BASE_URL", "OPENAI_API_BASE", default=DEFAULT_OPENAI_BASE_URL),
            mistral_api_key=reader.text("MISTRAL_API_KEY"),
            mistral_base_url=reader.url(
                "MISTRAL_BASE_URL", "MISTRAL_API_BASE", default=DEFAULT_MISTRAL_BASE_URL
            ),
            mistral_ocr_model=reader.text("MISTRAL_OCR_MODEL") or DEFAULT_MISTRAL_OCR_MODEL,
            api_auth_required=reader.boolean("API_AUTH_REQUIRED", default=False),
            max_request_bytes=reader.positive_int("MAX_REQUEST_BYTES", default=DEFAULT_MAX_REQUEST_BYTES),
            upstream_connect_timeout=reader.seconds("UPSTREAM_CONNECT_TIMEOUT", default=10.0),
            upstream_read_timeout=reader.seconds("UPSTREAM_READ_TIMEOUT", default=300.0),
            platform_jwt_secret=reader.secret("PLATFORM_JWT_SECRET"),
            platform_jwks_url=reader.url("PLATFORM_JWKS_URL", default="") or None,
            platform_jwt_public_key=reader.text("PLATFORM_JWT_PUBLIC_KEY"),
            platform_jwt_issuer=reader.text("PLATFORM_JWT_ISSUER"),
            platform_jwt_audience=reader.text("PLATFORM_JWT_AUDIENCE"),
            token_hash_key=reader.key_bytes("TOKEN_HASH_KEY"),
            cookie_secure=reader.boolean("COOKIE_SECURE", default=True),
            allow_signup=reader.boolean("ALLOW_SIGNUP", default=False),
            usage_api_key=reader.text("USAGE_API_KEY"),
            analytics_dataset=reader.text("ANALYTICS_DATASET") or "ai_worker_requests",
            pricing_file=reader.existing_file("PRICING_FILE"),
            access_token_ttl_seconds=reader.positive_int("ACCESS_TOKEN_TTL_SECONDS", default=15 * 60),
            refresh_token_ttl_seconds=reader.positive_int(
                "REFRESH_TOKEN_TTL_SECONDS", default=30 * 24 * 3600
            ),
        )


def decode_key(text: str) -> bytes | None:
    """Key bytes from hex or base64 (standard or url-safe, padding optional); None when it is neither."""
    if re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text):
        return bytes.fromhex(text)
    try:
        return base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except binascii.Error:
        return None


def sqlite_url(path: Path) -> str:
    """The aiosqlite URL of a database file."""
    return f"sqlite+aiosqlite:///{path}"


def parse_database_url(url: str, *, variable: str = "DATABASE_URL") -> str:
    """Normalise a database URL to its async driver; raises `SettingsError` for an unsupported one."""
    scheme, sep, rest = url.partition("://")
    driver = DATABASE_SCHEMES.get(scheme.lower()) if sep else None
    if driver is None:
        raise SettingsError(
            variable,
            "expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB (or their +aiosqlite/+asyncpg forms)",
        )
    if driver.startswith("sqlite") and not rest.startswith("/"):
        raise SettingsError(
            variable, "a SQLite URL needs a path: sqlite:///relative.db or sqlite:////absolute.db"
        )
    if driver.startswith("postgresql") and not urlsplit(f"x://{rest}").hostname:
        raise SettingsError(variable, "a PostgreSQL URL needs a host")
    return f"{driver}://{rest}"


class _Reader:
    """Typed access to raw variables; every failure names its variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, *names: str) -> str | None:
        for name in names:
            value = self._env.get(name, "").strip()
            if value:
                return value
        return None

    def url(self, *names: str, default: str) -> str:
        for name in names:
            value = self.text(name)
            if value is None:
                continue
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError(name, f"expected an http:// or https:// URL, got {value!r}")
            return value.rstrip("/")
        return default

    def existing_file(self, name: str) -> Path | None:
        raw = self.text(name)
        if raw is None:
            return None
        if not Path(raw).is_file():
            raise SettingsError(name, f"no such file: {raw}")
        return Path(raw)

    def secret(self, name: str) -> bytes | None:
        """A shared secret of at least 32 bytes (HS256 keys shorter than the hash are weak)."""
        raw = self.text(name)
        if raw is None:
            return None
        if len(raw.encode()) < MIN_KEY_BYTES:
            raise SettingsError(name, f"expected at least {MIN_KEY_BYTES} bytes")
        return raw.encode()

    def key_bytes(self, name: str) -> bytes | None:
        """Random key material given as hex or base64 (standard or url-safe), at least 32 bytes of it."""
        raw = self.text(name)
        if raw is None:
            return None
        key = decode_key(raw)
        if key is None or len(key) < MIN_KEY_BYTES:
            raise SettingsError(name, f"expected {MIN_KEY_BYTES}+ bytes as hex or base64")
        return key

    def boolean(self, name: str, *, default: bool) -> bool:
        raw = self._env.get(name)
        if raw is None:
            return default
        word = raw.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise SettingsError(name, f"expected 1/true/yes/on or 0/false/no/off, got {raw!r}")

    def positive_int(self, name: str, *, default: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(name, f"expected a whole number, got {raw!r}") from None
        if value <= 0:
            raise SettingsError(name, f"expected a number above 0, got {raw!r}")
        return value

    def seconds(self, name: str, *, default: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(name, f"expected a number of seconds, got {raw!r}") from None
        if not 0 < value < float("inf"):
            raise SettingsError(name, f"expected a number of seconds above 0, got {raw!r}")
        return value
