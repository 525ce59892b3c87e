"""The gateway's configuration: one frozen object read once from the environment (and `.env`).

Nothing else in the package reads `os.environ`; the object is passed down from the command line or the app factory.
A bad value raises `SettingsError`, whose message names the variable, so that start-up stops with a clear line.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from gateway.tiers import Tier, parse_tiers

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com"
DEFAULT_MISTRAL_BASE_URL = "https://api.mistral.ai"
DEFAULT_MISTRAL_OCR_MODEL = "mistral-ocr-latest"
DEFAULT_CHROMA_AUTH_HEADER = "x-chroma-api-key"
DEFAULT_CHROMA_SEPARATOR = "__"
# A header name is an RFC 9110 token; the namespace separator is made of the characters Chroma allows in names
# that can never occur in a namespace (hex digits), which is what makes the namespacing injective.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
SEPARATOR = re.compile(r"^[._-]{1,8}$")
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# The edge's limits, nginx's defaults where it has one (large_client_header_buffers 4 8k: 32 KiB; 408s).
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_MAX_HEADERS = 100
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_UPSTREAM_MAX_CONNECTIONS = 1000
DEFAULT_UPSTREAM_POOL_TIMEOUT = 10.0
# Faults: how long a shutdown may take, how the usage journal is kept, how long a cut-off instance trusts its cache.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_USAGE_JOURNAL_FSYNC_MS = 1000
DEFAULT_USAGE_MAX_QUEUE = 100_000
DEFAULT_AUTH_CACHE_SECONDS = 30.0
VAULT_KEY_BYTES = 32
MIN_KEY_BYTES = 32
ED25519_SEED_BYTES = 32
DEFAULT_LOG_ORIGIN = "gateway/transparency"
DEFAULT_GOVERNANCE_MAX_MESSAGE_CHARS = 16_000
DEFAULT_BUDGET_MAX_TOKENS = 4096
DEFAULT_BUDGET_RESERVATION_SECONDS = 900.0  # longer than any stream the read timeout lets run (300 s)
LOG_FORMATS = ("text", "json")  # uvicorn's text lines, or one JSON object per line (gateway.logs)
# Further OpenAI-compatible agent providers: PROVIDER_<NAME>_BASE_URL (and _API_KEY, _STREAM_USAGE).
PROVIDER_VARIABLE = re.compile(r"PROVIDER_([A-Z0-9][A-Z0-9_]{0,38})_BASE_URL")
BUILT_IN_PROVIDERS = frozenset({"openai", "mistral", "workers-ai", "chroma"})  # chroma: an upstream's name
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
class ProviderSettings:
    """An OpenAI-compatible chat provider declared in configuration, for agents."""

    name: str  # PROVIDER_MY_LLM_BASE_URL declares "my-llm"
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    stream_usage: bool = True  # send stream_options.include_usage (some servers refuse unknown fields)


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
    chroma_base_url: str | None = None
    chroma_api_key: str | None = field(default=None, repr=False)
    chroma_auth_header: str = DEFAULT_CHROMA_AUTH_HEADER
    chroma_auth_scheme: str | None = None
    chroma_namespace_separator: str = DEFAULT_CHROMA_SEPARATOR
    api_auth_required: bool = False
    access_log: bool = True
    log_format: str = "text"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 300.0
    upstream_max_connections: int = DEFAULT_UPSTREAM_MAX_CONNECTIONS
    upstream_pool_timeout: float = DEFAULT_UPSTREAM_POOL_TIMEOUT
    # The edge: what the server refuses from clients before any app code runs (`gateway.serving`).
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_headers: int = DEFAULT_MAX_HEADERS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Forwarding: whose X-Forwarded-For is believed; whether the client's OpenAI org/project headers pass.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    openai_forward_org_headers: bool = True
    # Faults: draining on a signal, the usage journal, a credential cache cut off from the database, metrics.
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    usage_journal_fsync_ms: int = DEFAULT_USAGE_JOURNAL_FSYNC_MS
    usage_max_queue: int = DEFAULT_USAGE_MAX_QUEUE
    usage_required: bool = True
    auth_cache_seconds: float = DEFAULT_AUTH_CACHE_SECONDS
    metrics_api_key: str | None = field(default=None, repr=False)
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
    # The transparency log. An unset signing key is generated once into the data directory (`gateway.keys`).
    log_signing_key: bytes | None = field(default=None, repr=False)
    log_origin: str = DEFAULT_LOG_ORIGIN
    # Agents' assets. An unset vault key is generated once into the data directory (`gateway.keys`).
    vault_master_key: bytes | None = field(default=None, repr=False)
    vault_previous_master_keys: tuple[bytes, ...] = field(default=(), repr=False)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    files_dir: Path | None = None  # the local file storage; DATA_DIR/files when unset
    quota_tiers: tuple[Tier, ...] = field(default_factory=lambda: parse_tiers(None))
    # Agents: providers beyond openai and mistral, and the governance policy's configurable rules.
    workers_ai_base_url: str | None = None
    workers_ai_api_key: str | None = field(default=None, repr=False)
    extra_providers: tuple[ProviderSettings, ...] = ()
    governance_max_message_chars: int = DEFAULT_GOVERNANCE_MAX_MESSAGE_CHARS
    governance_blocked_patterns: tuple[str, ...] = ()
    # Budgets and rate limits (gateway.budgets): unpriced models under a USD limit, the output reserved for a
    # request that names no max_tokens, and how long a hold lives when its request never settles (a killed gateway).
    budget_unknown_model: str = "allow"
    budget_default_max_tokens: int = DEFAULT_BUDGET_MAX_TOKENS
    budget_reservation_seconds: float = DEFAULT_BUDGET_RESERVATION_SECONDS

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
            chroma_base_url=reader.url("CHROMA_BASE_URL", "CHROMA_API_BASE", default="") or None,
            chroma_api_key=reader.text("CHROMA_API_KEY"),
            chroma_auth_header=reader.header_name("CHROMA_AUTH_HEADER", default=DEFAULT_CHROMA_AUTH_HEADER),
            chroma_auth_scheme=reader.text("CHROMA_AUTH_SCHEME"),
            chroma_namespace_separator=reader.separator(
                "CHROMA_NAMESPACE_SEPARATOR", default=DEFAULT_CHROMA_SEPARATOR
            ),
            api_auth_required=reader.boolean("API_AUTH_REQUIRED", default=False),
            access_log=reader.boolean("ACCESS_LOG", default=True),
            log_format=reader.choice("LOG_FORMAT", LOG_FORMATS),
            max_request_bytes=reader.positive_int("MAX_REQUEST_BYTES", default=DEFAULT_MAX_REQUEST_BYTES),
            upstream_connect_timeout=reader.seconds("UPSTREAM_CONNECT_TIMEOUT", default=10.0),
            upstream_read_timeout=reader.seconds("UPSTREAM_READ_TIMEOUT", default=300.0),
            upstream_max_connections=reader.positive_int(
                "UPSTREAM_MAX_CONNECTIONS", default=DEFAULT_UPSTREAM_MAX_CONNECTIONS
            ),
            upstream_pool_timeout=reader.seconds(
                "UPSTREAM_POOL_TIMEOUT", default=DEFAULT_UPSTREAM_POOL_TIMEOUT
            ),
            max_header_bytes=reader.positive_int("MAX_HEADER_BYTES", default=DEFAULT_MAX_HEADER_BYTES),
            max_headers=reader.positive_int("MAX_HEADERS", default=DEFAULT_MAX_HEADERS),
            header_timeout=reader.seconds("HEADER_TIMEOUT", default=DEFAULT_HEADER_TIMEOUT),
            body_timeout=reader.seconds("BODY_TIMEOUT", default=DEFAULT_BODY_TIMEOUT),
            max_connections=reader.positive_int("MAX_CONNECTIONS", default=DEFAULT_MAX_CONNECTIONS),
            trusted_proxies=reader.networks("TRUSTED_PROXIES"),
            openai_forward_org_headers=reader.boolean("OPENAI_FORWARD_ORG_HEADERS", default=True),
            shutdown_timeout=reader.seconds("SHUTDOWN_TIMEOUT", default=DEFAULT_SHUTDOWN_TIMEOUT),
            usage_journal_fsync_ms=reader.positive_int(
                "USAGE_JOURNAL_FSYNC_MS", default=DEFAULT_USAGE_JOURNAL_FSYNC_MS
            ),
            usage_max_queue=reader.positive_int("USAGE_MAX_QUEUE", default=DEFAULT_USAGE_MAX_QUEUE),
            usage_required=reader.boolean("USAGE_REQUIRED", default=True),
            auth_cache_seconds=reader.seconds("AUTH_CACHE_SECONDS", default=DEFAULT_AUTH_CACHE_SECONDS),
            metrics_api_key=reader.text("METRICS_API_KEY"),
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
            log_signing_key=reader.ed25519_seed("LOG_SIGNING_KEY"),
            log_origin=reader.log_origin("LOG_ORIGIN"),
            access_token_ttl_seconds=reader.positive_int("ACCESS_TOKEN_TTL_SECONDS", default=15 * 60),
            workers_ai_base_url=reader.url("WORKERS_AI_BASE_URL", default="") or None,
            workers_ai_api_key=reader.text("WORKERS_AI_API_KEY"),
            extra_providers=reader.providers(),
            governance_max_message_chars=reader.positive_int(
                "GOVERNANCE_MAX_MESSAGE_CHARS", default=DEFAULT_GOVERNANCE_MAX_MESSAGE_CHARS
            ),
            governance_blocked_patterns=reader.patterns("GOVERNANCE_BLOCKED_PATTERNS"),
            refresh_token_ttl_seconds=reader.positive_int(
                "REFRESH_TOKEN_TTL_SECONDS", default=30 * 24 * 3600
            ),
            vault_master_key=reader.vault_key("VAULT_MASTER_KEY"),
            vault_previous_master_keys=reader.vault_keys("VAULT_PREVIOUS_MASTER_KEYS"),
            max_upload_bytes=reader.positive_int("MAX_UPLOAD_BYTES", default=DEFAULT_MAX_UPLOAD_BYTES),
            files_dir=Path(files_dir) if (files_dir := reader.text("FILES_DIR")) else None,
            quota_tiers=reader.quota_tiers("QUOTA_TIERS"),
            budget_unknown_model=reader.choice("BUDGET_UNKNOWN_MODEL", ("allow", "deny")),
            budget_default_max_tokens=reader.positive_int(
                "BUDGET_DEFAULT_MAX_TOKENS", default=DEFAULT_BUDGET_MAX_TOKENS
            ),
            budget_reservation_seconds=reader.seconds(
                "BUDGET_RESERVATION_SECONDS", default=DEFAULT_BUDGET_RESERVATION_SECONDS
            ),
        )

    @property
    def files_path(self) -> Path:
        """Where the local file storage keeps agents' files."""
        return self.files_dir or self.data_dir / "files"


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

    def header_name(self, name: str, *, default: str) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        if not HEADER_NAME.match(raw):
            raise SettingsError(name, f"expected an HTTP header name, got {raw!r}")
        return raw.lower()

    def separator(self, name: str, *, default: str) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        if not SEPARATOR.match(raw) or ".." in raw:
            raise SettingsError(name, f"expected 1 to 8 of the characters . _ - (and no '..'), got {raw!r}")
        return raw

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

    def vault_key(self, name: str) -> bytes | None:
        """An AES-256 key: exactly 32 bytes as 64 hex digits or base64 (standard or url-safe)."""
        raw = self.text(name)
        return None if raw is None else _vault_key(name, raw)

    def vault_keys(self, name: str) -> tuple[bytes, ...]:
        """Any number of AES-256 keys, separated by commas or whitespace."""
        raw = self.text(name) or ""
        return tuple(_vault_key(name, part) for part in re.split(r"[\s,]+", raw) if part)

    def quota_tiers(self, name: str) -> tuple[Tier, ...]:
        try:
            return parse_tiers(self.text(name))
        except ValueError as exc:
            raise SettingsError(name, str(exc)) from None

    def ed25519_seed(self, name: str) -> bytes | None:
        """An Ed25519 private key as its 32-byte seed, in base64 (standard or url-safe) or hex."""
        raw = self.text(name)
        if raw is None:
            return None
        seed = decode_key(raw)
        if seed is None or len(seed) != ED25519_SEED_BYTES:
            raise SettingsError(
                name, f"expected an Ed25519 seed: {ED25519_SEED_BYTES} bytes as base64 or hex"
            )
        return seed

    def log_origin(self, name: str) -> str:
        """A log's name, which is also its signing key's name: no spaces and no `+`."""
        raw = self.text(name)
        if raw is None:
            return DEFAULT_LOG_ORIGIN
        if "+" in raw or any(c.isspace() for c in raw):
            raise SettingsError(
                name, f"expected a name without spaces or '+' (like example.com/log), got {raw!r}"
            )
        return raw

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        """One of `choices` (any case); the first when unset."""
        raw = self.text(name)
        if raw is None:
            return choices[0]
        if raw.lower() not in choices:
            raise SettingsError(name, f"expected {' or '.join(choices)}, got {raw!r}")
        return raw.lower()

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

    def providers(self) -> tuple[ProviderSettings, ...]:
        """Every `PROVIDER_<NAME>_BASE_URL`, with its `_API_KEY` and `_STREAM_USAGE`, sorted by name."""
        found = []
        for variable in sorted(self._env):
            match = PROVIDER_VARIABLE.fullmatch(variable)
            if match is None or self.text(variable) is None:
                continue
            prefix = f"PROVIDER_{match.group(1)}"
            name = match.group(1).lower().replace("_", "-")
            if name in BUILT_IN_PROVIDERS:
                raise SettingsError(variable, f"{name!r} is built in; it has variables of its own")
            found.append(
                ProviderSettings(
                    name=name,
                    base_url=self.url(variable, default=""),
                    api_key=self.text(f"{prefix}_API_KEY"),
                    stream_usage=self.boolean(f"{prefix}_STREAM_USAGE", default=True),
                )
            )
        return tuple(found)

    def patterns(self, name: str) -> tuple[str, ...]:
        """A JSON array of regular expressions, each checked to compile."""
        raw = self.text(name)
        if raw is None:
            return ()
        try:
            value = json.loads(raw)
        except ValueError:
            raise SettingsError(name, "expected a JSON array of regular expressions") from None
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise SettingsError(name, "expected a JSON array of non-empty strings")
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise SettingsError(name, f"{pattern!r} is not a valid regular expression: {exc}") from None
        return tuple(value)

    def networks(self, name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """Addresses or networks, separated by commas or whitespace (`10.0.0.1, 192.168.0.0/16, ::1`)."""
        found = []
        for part in re.split(r"[\s,]+", self.text(name) or ""):
            if not part:
                continue
            try:
                found.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise SettingsError(name, f"expected IP addresses or networks, got {part!r}") from None
        return tuple(found)

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


def _vault_key(variable: str, raw: str) -> bytes:
    key = decode_key(raw)
    if key is None or len(key) != VAULT_KEY_BYTES:
        raise SettingsError(variable, f"expected {VAULT_KEY_BYTES} bytes as 64 hex digits or base64")
    return key
