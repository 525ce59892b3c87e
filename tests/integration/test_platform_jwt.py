"""An external identity provider's JWTs over HTTP: a JWKS (or one PEM key) verifies them, and forgeries get 401."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.settings import Settings
from tests.conftest import UPSTREAM_OPENAI_KEY, GatewayFactory, add_user
from tests.fakes.openai_upstream import FakeOpenAI
from tests.forgery import hs256_by_hand, public_pem, unsigned, with_bad_signature, with_payload
from tests.serving import LiveServer

ISSUER = "https://idp.test"
AUDIENCE = "gateway-api"
KID = "idp-key-1"
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


def claims(subject: str, **overrides: Any) -> dict[str, Any]:
    """Valid provider claims for `subject`; an override of None drops that claim."""
    now = int(time.time())
    values = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def signed(key: rsa.RSAPrivateKey, payload: dict[str, Any], *, kid: str | None = KID) -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def me(gateway: LiveServer, token: str) -> httpx.Response:
    return httpx.get(f"{gateway.url}/api/v1/auth/me", headers=bearer(token))


def chat(gateway: LiveServer, token: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT_BODY, headers=bearer(token))


def new_user(gateway_env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A new user in the gateways' database: (its id, its login body)."""
    login = {"email": f"idp-{uuid.uuid4().hex}@example.com", "password": "a long enough test password"}
    database_url = Settings.from_env(gateway_env, env_file=None).database_url
    return asyncio.run(add_user(database_url, email=login["email"], password=login["password"])), login


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def stranger_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """The provider's JWKS endpoint, publishing `rsa_key` under `KID`."""
    document = {
        "keys": [{**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": KID, "use": "sig"}]
    }

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(document)

    with LiveServer(Starlette(routes=[Route("/.well-known/jwks.json", endpoint)])) as server:
        yield f"{server.url}/.well-known/jwks.json"


@pytest.fixture(scope="module")
def idp_gateway(start_gateway: GatewayFactory, jwks_url: str) -> Iterator[LiveServer]:
    with start_gateway(
        PLATFORM_JWKS_URL=jwks_url, PLATFORM_JWT_ISSUER=ISSUER, PLATFORM_JWT_AUDIENCE=AUDIENCE
    ) as server:
        yield server


@pytest.fixture(scope="module")
def pem_gateway(start_gateway: GatewayFactory, rsa_key: rsa.RSAPrivateKey) -> Iterator[LiveServer]:
    with start_gateway(
        PLATFORM_JWT_PUBLIC_KEY=public_pem(rsa_key),
        PLATFORM_JWT_ISSUER=ISSUER,
        PLATFORM_JWT_AUDIENCE=AUDIENCE,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def user_id(gateway_env: dict[str, str]) -> str:
    return new_user(gateway_env)[0]


# Valid tokens.


def test_provider_token_identifies_the_user(
    idp_gateway: LiveServer, rsa_key: rsa.RSAPrivateKey, user_id: str
) -> None:
    response = me(idp_gateway, signed(rsa_key, claims(user_id)))

    assert response.status_code == 200, response.text
    assert response.json()["user"]["id"] == user_id


def test_provider_token_works_on_chat(
    idp_gateway: LiveServer, rsa_key: rsa.RSAPrivateKey, user_id: str, fake_openai: FakeOpenAI
) -> None:
    response = chat(idp_gateway, signed(rsa_key, claims(user_id)))

    assert response.status_code == 200, response.text
    assert fake_openai.recorder.last.headers["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"


def test_provider_token_may_create_api_tokens(
    idp_gateway: LiveServer, rsa_key: rsa.RSAPrivateKey, user_id: str
) -> None:
    response = httpx.post(
        f"{idp_gateway.url}/v1/api-tokens",
        json={"name": "from sso"},
        headers=bearer(signed(rsa_key, claims(user_id))),
    )

    assert response.status_code == 201, response.text


def test_provider_token_is_accepted_with_a_pem_key(
    pem_gateway: LiveServer, rsa_key: rsa.RSAPrivateKey, user_id: str
) -> None:
    response = me(pem_gateway, signed(rsa_key, claims(user_id), kid=None))

    assert response.status_code == 200, response.text
    assert response.json()["user"]["id"] == user_id


def test_pem_gateway_refuses_another_keys_token(
    pem_gateway: LiveServer, stranger_key: rsa.RSAPrivateKey, user_id: str
) -> None:
    assert me(pem_gateway, signed(stranger_key, claims(user_id))).status_code == 401


def test_pem_gateway_refuses_hs256_signed_with_the_pem(
    pem_gateway: LiveServer, rsa_key: rsa.RSAPrivateKey, user_id: str
) -> None:
    token = hs256_by_hand(claims(user_id), public_pem(rsa_key).encode(), kid=KID)

    assert me(pem_gateway, token).status_code == 401


def test_gateways_own_access_token_still_works(idp_gateway: LiveServer, gateway_env: dict[str, str]) -> None:
    user, login = new_user(gateway_env)
    response = httpx.post(f"{idp_gateway.url}/api/v1/auth/login", json=login)
    assert response.status_code == 200, response.text

    answer = me(idp_gateway, response.json()["access_token"])

    assert answer.status_code == 200, answer.text
    assert answer.json()["user"]["id"] == user


# Forgeries and tokens not meant for this gateway: 401 on every route.

Forge = Callable[[rsa.RSAPrivateKey, rsa.RSAPrivateKey, str], str]
FORGERIES: dict[str, Forge] = {
    "alg-none": lambda key, stranger, sub: unsigned(claims(sub), kid=KID),
    "hs256-with-the-public-pem": lambda key, stranger, sub: hs256_by_hand(
        claims(sub), public_pem(key).encode(), kid=KID
    ),
    "expired": lambda key, stranger, sub: signed(key, claims(sub, exp=int(time.time()) - 120)),
    "wrong-audience": lambda key, stranger, sub: signed(key, claims(sub, aud="another-api")),
    "no-audience": lambda key, stranger, sub: signed(key, claims(sub, aud=None)),
    "wrong-issuer": lambda key, stranger, sub: signed(key, claims(sub, iss="https://evil.test")),
    "platform-issuer": lambda key, stranger, sub: signed(key, claims(sub, iss="gateway", aud="gateway")),
    "tampered-payload": lambda key, stranger, sub: with_payload(
        signed(key, claims("usr_someone_else")), sub=sub
    ),
    "tampered-signature": lambda key, stranger, sub: with_bad_signature(signed(key, claims(sub))),
    "unknown-user": lambda key, stranger, sub: signed(key, claims("usr_" + uuid.uuid4().hex[:24])),
    "no-exp": lambda key, stranger, sub: signed(key, claims(sub, exp=None)),
    "no-sub": lambda key, stranger, sub: signed(key, claims(sub, sub=None)),
    "no-kid": lambda key, stranger, sub: signed(key, claims(sub), kid=None),
    "unknown-kid": lambda key, stranger, sub: signed(key, claims(sub), kid="not-published"),
    "stranger-key-with-known-kid": lambda key, stranger, sub: signed(stranger, claims(sub)),
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_forged_or_foreign_token_is_refused(
    idp_gateway: LiveServer,
    rsa_key: rsa.RSAPrivateKey,
    stranger_key: rsa.RSAPrivateKey,
    user_id: str,
    fake_openai: FakeOpenAI,
    forge: Forge,
) -> None:
    token = forge(rsa_key, stranger_key, user_id)

    responses = [me(idp_gateway, token), chat(idp_gateway, token)]

    assert [response.status_code for response in responses] == [401, 401]
    assert responses[0].headers["www-authenticate"] == "Bearer"
    assert responses[0].json()["error"]["type"] == "authentication_error"
    assert fake_openai.recorder.requests == []
