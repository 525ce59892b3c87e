"""Platform JWTs: round trips, and the forgeries each verifier must refuse (none, algorithm confusion, tampering)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.auth.jwt import ExternalTokens, InvalidTokenError, PlatformTokens, TokenVerifier, looks_like_jwt
from tests.forgery import PrivateKey, hs256_by_hand, public_pem, unsigned, with_bad_signature, with_payload
from tests.serving import LiveServer, free_port

SECRET = b"platform-secret-of-at-least-32-bytes!!"
OTHER_SECRET = b"another-secret-of-at-least-32-bytes!!!"
ISSUER = "https://idp.example"
AUDIENCE = "gateway-api"
SAFE_MESSAGES = {"The token is invalid.", "The token has expired."}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"sub": "user-1", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def provider_token(key: PrivateKey, alg: str = "RS256", kid: str | None = "rsa-1", **overrides: Any) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


async def assert_rejected(verify: Any, token: str, message: str = "The token is invalid.") -> None:
    with pytest.raises(InvalidTokenError) as info:
        result = verify(token)
        if asyncio.iscoroutine(result):
            await result
    assert str(info.value) == message
    assert token not in str(info.value)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def stranger_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@dataclass
class FakeJWKS:
    """An identity provider's JWKS endpoint that counts its requests."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0

    async def endpoint(self, request: Request) -> JSONResponse:
        self.requests += 1
        return JSONResponse({"keys": self.keys})


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[tuple[FakeJWKS, LiveServer]]:
    fake = FakeJWKS()
    with LiveServer(Starlette(routes=[Route("/jwks.json", fake.endpoint)])) as server:
        yield fake, server


@pytest.fixture
def jwks(
    jwks_server: tuple[FakeJWKS, LiveServer], rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> FakeJWKS:
    fake = jwks_server[0]
    fake.keys = [
        {
            **RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True),
            "kid": "rsa-1",
            "alg": "RS256",
            "use": "sig",
        },
        {
            **ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True),
            "kid": "ec-1",
            "alg": "ES256",
            "use": "sig",
        },
    ]
    fake.requests = 0
    return fake


@pytest.fixture
def external(jwks_server: tuple[FakeJWKS, LiveServer], jwks: FakeJWKS) -> ExternalTokens:
    """A fresh verifier (and so an empty key cache) against the fake JWKS."""
    return ExternalTokens(jwks_url=f"{jwks_server[1].url}/jwks.json", issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture
def platform() -> PlatformTokens:
    return PlatformTokens(SECRET)


@pytest.fixture
def verifier(platform: PlatformTokens, external: ExternalTokens) -> TokenVerifier:
    return TokenVerifier(platform, external)


# The platform's own tokens.


def test_platform_round_trip(platform: PlatformTokens) -> None:
    token = platform.issue("user-1", ttl_seconds=900, extra={"scope": "chat"})

    verified = platform.verify(token)

    assert (verified.subject, verified.issuer, verified.raw["aud"], verified.raw["scope"]) == (
        "user-1",
        "gateway",
        "gateway",
        "chat",
    )
    assert verified.expires_at - verified.issued_at == 900  # type: ignore[operator]
    assert (
        verified.token_id
        and verified.token_id != platform.verify(platform.issue("u", ttl_seconds=9)).token_id
    )
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_platform_refuses_short_secrets_and_extra_claims_overriding_registered_ones() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PlatformTokens(b"short")
    with pytest.raises(ValueError, match="sub"):
        PlatformTokens(SECRET).issue("user-1", ttl_seconds=60, extra={"sub": "admin"})


async def test_platform_rejects_another_secret_expiry_missing_claims_and_tampering(
    platform: PlatformTokens,
) -> None:
    now = int(time.time())
    own = claims(iss="gateway", aud="gateway")
    token = platform.issue("user-1", ttl_seconds=60)

    await assert_rejected(platform.verify, jwt.encode(own, OTHER_SECRET, algorithm="HS256"))
    await assert_rejected(
        platform.verify, jwt.encode({**own, "exp": now - 31}, SECRET), "The token has expired."
    )
    assert platform.verify(jwt.encode({**own, "exp": now - 10}, SECRET)).subject == "user-1"  # within leeway
    for missing in ("exp", "iat", "sub", "iss", "aud"):
        await assert_rejected(
            platform.verify, jwt.encode({k: v for k, v in own.items() if k != missing}, SECRET)
        )
    await assert_rejected(platform.verify, jwt.encode({**own, "aud": "other"}, SECRET))
    await assert_rejected(platform.verify, jwt.encode({**own, "iss": "other"}, SECRET))
    await assert_rejected(platform.verify, with_payload(token, sub="admin"))
    await assert_rejected(platform.verify, with_bad_signature(token))
    await assert_rejected(platform.verify, "not.a.jwt")


@pytest.mark.parametrize("signature", ["", "c2lnbmF0dXJl"])
async def test_alg_none_is_rejected_everywhere(
    signature: str, platform: PlatformTokens, external: ExternalTokens, verifier: TokenVerifier, rsa_key: Any
) -> None:
    pem = ExternalTokens(public_key_pem=public_pem(rsa_key), issuer=ISSUER, audience=AUDIENCE)
    for iss in ("gateway", ISSUER):
        token = unsigned(claims(iss=iss), signature, kid="rsa-1")
        for verify in (platform.verify, external.verify, pem.verify, verifier.verify):
            await assert_rejected(verify, token)


# Algorithm confusion.


async def test_hs256_signed_with_the_provider_public_key_is_rejected(
    rsa_key: rsa.RSAPrivateKey, external: ExternalTokens, verifier: TokenVerifier
) -> None:
    pem = public_pem(rsa_key)
    token = hs256_by_hand(claims(), pem.encode(), kid="rsa-1")
    pem_mode = ExternalTokens(public_key_pem=pem, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"])

    for verify in (pem_mode.verify, external.verify, verifier.verify):
        await assert_rejected(verify, token)
    with pytest.raises(jwt.InvalidKeyError):  # and pyjwt itself refuses a PEM as an HMAC secret
        jwt.decode(token, pem, algorithms=["HS256"])


async def test_a_provider_signed_token_claiming_the_platform_issuer_is_rejected(
    rsa_key: rsa.RSAPrivateKey, verifier: TokenVerifier
) -> None:
    await assert_rejected(verifier.verify, provider_token(rsa_key, iss="gateway", aud="gateway"))


async def test_a_header_algorithm_not_matching_the_jwks_key_is_rejected(
    ec_key: ec.EllipticCurvePrivateKey, external: ExternalTokens
) -> None:
    # An ES256 signature presented under the RSA key's kid.
    await assert_rejected(external.verify, provider_token(ec_key, "ES256", kid="rsa-1"))


async def test_pem_mode_accepts_only_algorithms_of_its_key_type(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> None:
    for key, alg in ((rsa_key, "RS256"), (ec_key, "ES256"), (ed_key, "EdDSA")):
        tokens = ExternalTokens(public_key_pem=public_pem(key), issuer=ISSUER, audience=AUDIENCE)
        assert (await tokens.verify(provider_token(key, alg, kid=None))).subject == "user-1"
    rsa_only = ExternalTokens(public_key_pem=public_pem(rsa_key), issuer=ISSUER, audience=AUDIENCE)
    await assert_rejected(rsa_only.verify, provider_token(ec_key, "ES256"))
    with pytest.raises(ValueError, match="fits none"):
        ExternalTokens(
            public_key_pem=public_pem(ec_key), issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"]
        )


def test_external_configuration_is_checked(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = public_pem(rsa_key)
    with pytest.raises(ValueError, match="exactly one"):
        ExternalTokens(issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="exactly one"):
        ExternalTokens(jwks_url="https://idp.example/jwks", public_key_pem=pem, issuer=None, audience=None)
    for algorithms in (["HS256"], ["none"], ["RS256", "HS512"], []):
        with pytest.raises(ValueError, match="algorithms"):
            ExternalTokens(public_key_pem=pem, issuer=None, audience=None, algorithms=algorithms)
    external = ExternalTokens(public_key_pem=pem, issuer="gateway", audience=None)
    with pytest.raises(ValueError, match="issuer"):
        TokenVerifier(PlatformTokens(SECRET), external)


# The provider's tokens through its JWKS.


async def test_jwks_round_trip_fetches_the_key_set_once(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, external: ExternalTokens, jwks: FakeJWKS
) -> None:
    first = await external.verify(provider_token(rsa_key, jti="t-1"))
    second = await external.verify(provider_token(rsa_key))
    third = await external.verify(provider_token(ec_key, "ES256", kid="ec-1"))

    assert (first.subject, first.issuer, first.token_id, second.token_id, third.subject) == (
        "user-1",
        ISSUER,
        "t-1",
        None,
        "user-1",
    )
    assert jwks.requests == 1


async def test_jwks_rejects_bad_provider_tokens(
    rsa_key: rsa.RSAPrivateKey, stranger_rsa_key: rsa.RSAPrivateKey, external: ExternalTokens
) -> None:
    now = int(time.time())
    token = provider_token(rsa_key)

    await assert_rejected(external.verify, provider_token(stranger_rsa_key))  # known kid, foreign key
    await assert_rejected(external.verify, provider_token(rsa_key, exp=now - 31), "The token has expired.")
    await assert_rejected(external.verify, provider_token(rsa_key, exp=None))
    await assert_rejected(external.verify, provider_token(rsa_key, sub=None))
    await assert_rejected(external.verify, provider_token(rsa_key, aud="someone-else"))
    await assert_rejected(external.verify, provider_token(rsa_key, iss="https://evil.example"))
    await assert_rejected(external.verify, with_payload(token, sub="admin"))
    await assert_rejected(external.verify, with_bad_signature(token))
    await assert_rejected(external.verify, provider_token(rsa_key, kid=None))


async def test_unknown_kids_are_rejected_without_hammering_the_jwks(
    stranger_rsa_key: rsa.RSAPrivateKey, external: ExternalTokens, jwks: FakeJWKS
) -> None:
    for kid in ("rsa-2", "rsa-3", "rsa-4"):
        await assert_rejected(external.verify, provider_token(stranger_rsa_key, kid=kid))

    assert jwks.requests == 1


async def test_a_key_removed_from_the_jwks_is_refused_once_the_cached_set_expires(
    rsa_key: rsa.RSAPrivateKey, jwks_server: tuple[FakeJWKS, LiveServer], jwks: FakeJWKS
) -> None:
    url = f"{jwks_server[1].url}/jwks.json"
    external = ExternalTokens(jwks_url=url, issuer=ISSUER, audience=AUDIENCE, jwks_cache_seconds=0.2)
    assert (await external.verify(provider_token(rsa_key))).subject == "user-1"

    jwks.keys = [key for key in jwks.keys if key["kid"] != "rsa-1"]
    await asyncio.sleep(0.3)

    await assert_rejected(external.verify, provider_token(rsa_key))
    assert jwks.requests == 2


async def test_an_unreachable_jwks_rejects_the_token(rsa_key: rsa.RSAPrivateKey) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks.json"
    external = ExternalTokens(jwks_url=url, issuer=ISSUER, audience=AUDIENCE)

    await assert_rejected(external.verify, provider_token(rsa_key))


# Routing between the two.


async def test_verifier_routes_by_issuer(
    platform: PlatformTokens, rsa_key: rsa.RSAPrivateKey, verifier: TokenVerifier
) -> None:
    assert (await verifier.verify(platform.issue("user-7", ttl_seconds=60))).issuer == "gateway"
    assert (await verifier.verify(provider_token(rsa_key))).issuer == ISSUER
    await assert_rejected(verifier.verify, hs256_by_hand(claims(iss="gateway", aud="gateway"), OTHER_SECRET))
    await assert_rejected(TokenVerifier(platform, None).verify, provider_token(rsa_key))
    await assert_rejected(verifier.verify, "gw_not-a-jwt")


def test_looks_like_jwt(platform: PlatformTokens) -> None:
    assert looks_like_jwt(platform.issue("user-1", ttl_seconds=60))
    assert looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
    for token in (
        "gw_abcDEF123-_",
        "ak_abcDEF123-_",
        "",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a!.b.c",
        "a.b.c\n",
        "a b.c.d",
    ):
        assert not looks_like_jwt(token), token
