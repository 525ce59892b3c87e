"""Platform JWTs: the gateway's own HS256 access tokens and an external identity provider's signed tokens.

Algorithms are pinned per source: HS256 with the platform secret, asymmetric algorithms with the provider's keys.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

logger = logging.getLogger("gateway.auth.jwt")

PLATFORM_ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
JWKS_TIMEOUT_SECONDS = 5.0
REGISTERED_CLAIMS = frozenset({"sub", "iss", "aud", "iat", "exp", "nbf", "jti"})
# The only algorithms an external provider may use, and the public key type each one needs.
ASYMMETRIC_KEY_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), (RSAPublicKey,)),
    **dict.fromkeys(("ES256", "ES384", "ES512"), (EllipticCurvePublicKey,)),
    "EdDSA": (Ed25519PublicKey, Ed448PublicKey),
}
JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class InvalidTokenError(ValueError):
    """The token is malformed, badly signed, expired, or not meant for this gateway."""

    def __init__(self, message: str = "The token is invalid.") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Claims:
    """The verified claims of a token; `raw` holds every claim, read-only."""

    subject: str
    issuer: str | None
    expires_at: int
    issued_at: int | None
    token_id: str | None
    raw: Mapping[str, Any]

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Claims:
        subject, issuer, token_id = payload.get("sub"), payload.get("iss"), payload.get("jti")
        if not isinstance(subject, str) or not subject:
            raise InvalidTokenError()
        issued_at = payload.get("iat")
        return cls(
            subject=subject,
            issuer=issuer if isinstance(issuer, str) else None,
            expires_at=int(payload["exp"]),
            issued_at=int(issued_at) if issued_at is not None else None,
            token_id=token_id if isinstance(token_id, str) else None,
            raw=MappingProxyType(payload),
        )


def looks_like_jwt(token: str) -> bool:
    """True when `token` has the shape of a compact JWS: three base64url segments joined by dots."""
    return JWT_SHAPE.fullmatch(token) is not None


@contextmanager
def _token_errors() -> Iterator[None]:
    """pyjwt's errors as ours: the one place a foreign error becomes an `InvalidTokenError`."""
    try:
        yield
    except InvalidTokenError:
        raise
    except jwt.ExpiredSignatureError:
        raise InvalidTokenError("The token has expired.") from None
    except jwt.PyJWKClientConnectionError as exc:
        logger.warning("JWKS fetch failed: %s", exc)
        raise InvalidTokenError() from exc
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidTokenError() from exc


class PlatformTokens:
    """Issues and verifies the gateway's own access tokens (HS256 with the platform secret)."""

    def __init__(
        self, secret: bytes, *, issuer: str = "gateway", audience: str = "gateway", leeway_seconds: int = 30
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the platform JWT secret needs at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self._checks: dict[str, Any] = {
            "issuer": issuer,
            "audience": audience,
            "leeway": leeway_seconds,
            "options": {"require": ["exp", "iat", "sub", "iss", "aud"]},
        }

    def issue(self, subject: str, *, ttl_seconds: int, extra: Mapping[str, Any] | None = None) -> str:
        """A signed token for `subject` valid for `ttl_seconds`; `extra` may not override registered claims."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be above 0")
        extra = extra or {}
        if REGISTERED_CLAIMS & extra.keys():
            raise ValueError(f"extra claims may not set {sorted(REGISTERED_CLAIMS & extra.keys())}")
        now = int(time.time())
        payload = {**extra, "sub": subject, "iss": self.issuer, "aud": self.audience}
        payload.update(iat=now, exp=now + ttl_seconds, jti=secrets.token_urlsafe(16))
        return jwt.encode(payload, self._secret, algorithm=PLATFORM_ALGORITHM)

    def verify(self, token: str, *, expired_ok: bool = False) -> Claims:
        """The claims of a token this gateway issued. Raises `InvalidTokenError`. `expired_ok` takes one past its
        `exp` too (still signed here, for this audience): ending the session a token names needs no live token."""
        checks = self._checks
        if expired_ok:
            checks = {**checks, "options": {**checks["options"], "verify_exp": False}}
        with _token_errors():
            payload = jwt.decode(token, self._secret, algorithms=[PLATFORM_ALGORITHM], **checks)
            return Claims.from_payload(payload)


class ExternalTokens:
    """Verifies an identity provider's tokens with its JWKS (cached) or one PEM public key; asymmetric only."""

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        public_key_pem: str | None = None,
        issuer: str | None,
        audience: str | None,
        algorithms: Sequence[str] = ("RS256", "ES256", "EdDSA"),
        jwks_cache_seconds: float = 300,
        leeway_seconds: int = 30,
    ) -> None:
        if (jwks_url is None) == (public_key_pem is None):
            raise ValueError("give exactly one of jwks_url and public_key_pem")
        if not algorithms or not set(algorithms) <= ASYMMETRIC_KEY_TYPES.keys():
            raise ValueError(f"algorithms must be among {sorted(ASYMMETRIC_KEY_TYPES)}")
        self.issuer = issuer
        self._checks: dict[str, Any] = {
            "issuer": issuer,
            "audience": audience,
            "leeway": leeway_seconds,
            "options": {
                "require": ["exp", "sub"],
                "verify_iss": issuer is not None,
                "verify_aud": audience is not None,
            },
        }
        self._algorithms = tuple(algorithms)
        self._key: Any = None
        self._jwks: jwt.PyJWKClient | None = None
        if public_key_pem is not None:
            self._key = load_pem_public_key(public_key_pem.encode())
            # Only the algorithms this key can verify: a PEM never doubles as an HMAC secret.
            self._algorithms = tuple(a for a in self._algorithms if _fits(a, self._key))
            if not self._algorithms:
                raise ValueError("the public key fits none of the allowed algorithms")
        else:
            assert jwks_url is not None
            # The key set is cached for jwks_cache_seconds; no per-key cache, so a key the provider
            # removes stops being accepted when the cached set expires.
            self._jwks = jwt.PyJWKClient(
                jwks_url, cache_jwk_set=True, lifespan=jwks_cache_seconds, timeout=JWKS_TIMEOUT_SECONDS
            )

    async def verify(self, token: str) -> Claims:
        """The claims of a provider's token. Raises `InvalidTokenError` (also when the JWKS is unreachable).

        The header's algorithm must be allowed and fit the key; the JWKS fetch (when its cache misses)
        blocks, so it runs in a thread.
        """
        with _token_errors():
            header = jwt.get_unverified_header(token)
            algorithm, kid = header.get("alg"), header.get("kid")
            if algorithm not in self._algorithms:
                raise InvalidTokenError()
            if self._jwks is None:
                key = self._key
            elif isinstance(kid, str) and kid:
                key = await asyncio.to_thread(self._jwks.get_signing_key, kid)
            else:
                raise InvalidTokenError()
            if not _fits(algorithm, key.key if isinstance(key, jwt.PyJWK) else key):
                raise InvalidTokenError()
            payload = jwt.decode(token, key, algorithms=list(self._algorithms), **self._checks)
            return Claims.from_payload(payload)


def _fits(algorithm: str, key: object) -> bool:
    """True when `algorithm` is asymmetric and `key` is the public key type it verifies with."""
    return isinstance(key, ASYMMETRIC_KEY_TYPES.get(algorithm, ()))


class TokenVerifier:
    """Routes a token by its (unverified) issuer: the platform's own, else the external provider's."""

    def __init__(self, platform: PlatformTokens, external: ExternalTokens | None) -> None:
        if external is not None and external.issuer == platform.issuer:
            raise ValueError("the external issuer must differ from the platform issuer")
        self.platform = platform
        self.external = external

    async def verify(self, token: str) -> Claims:
        """The claims of a platform or provider token. Raises `InvalidTokenError`.

        The issuer only picks the verifier; each verifier pins its own algorithms and keys.
        """
        with _token_errors():
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        if issuer == self.platform.issuer:
            return self.platform.verify(token)
        if self.external is None:
            raise InvalidTokenError()
        return await self.external.verify(token)
