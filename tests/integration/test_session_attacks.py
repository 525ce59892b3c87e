"""The session routes under attack, over real HTTP on SQLite and Postgres: password guessing in parallel, lockouts
aimed at a victim, logouts that must end the session, login CSRF and CSRF tokens carried across sessions."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import GatewayFactory
from tests.forgery import hs256_by_hand
from tests.integration.test_sessions import (
    API_TOKENS,
    FOREIGN_ORIGIN,
    LOGIN,
    LOGOUT,
    REFRESH,
    REVOCATION_BOUND_SECONDS,
    SIGNUP,
    Session,
    bound_client,
    cookie_header,
    log_in,
    me,
    new_user,
    refresh,
    unique_email,
)
from tests.serving import LiveServer

ACCOUNT_LIMIT = 5  # failed logins per (account, address) before it is locked (API.md)
ADDRESS_LIMIT = 50  # failed logins per address, over every account (API.md)
PARALLEL_GUESSES = 40
# Each test takes loopback addresses of its own, so that one test's failures never lock another's address.
_addresses = (f"127.0.{b}.{c}" for b, c in itertools.product(range(1, 250), range(2, 250)))


def fresh_address() -> str:
    return next(_addresses)


@pytest.fixture(scope="module")
def signup_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    with start_gateway(ALLOW_SIGNUP="1") as server:
        yield server


def login_from(server: LiveServer, address: str, body: dict[str, str]) -> httpx.Response:
    with bound_client(address) as client:
        return client.post(f"{server.url}{LOGIN}", json=body)


async def guess_in_parallel(server: LiveServer, address: str, email: str, count: int) -> list[int]:
    transport = httpx.AsyncHTTPTransport(local_address=address, limits=httpx.Limits(max_connections=count))
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post(f"{server.url}{LOGIN}", json={"email": email, "password": f"guess {n}"})
                for n in range(count)
            )
        )
    return [response.status_code for response in responses]


def wait_until_refused(server: LiveServer, access_token: str) -> int:
    """The status of the access token once refused, within the revocation bound."""
    started = time.monotonic()
    while (status := me(server, access_token).status_code) == 200:
        assert time.monotonic() - started < REVOCATION_BOUND_SECONDS, "still accepted after a second"
        time.sleep(0.05)
    return status


# --- throttling -----------------------------------------------------------------------------------------------------


def test_parallel_wrong_passwords_reach_the_password_check_at_most_the_limit_times(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    user = new_user(gateway_env)

    statuses = asyncio.run(guess_in_parallel(gateway, fresh_address(), user["email"], PARALLEL_GUESSES))

    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) <= ACCOUNT_LIMIT, statuses
    assert statuses.count(429) >= PARALLEL_GUESSES - ACCOUNT_LIMIT


def test_parallel_attempts_under_the_limit_all_reach_the_password_check(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    """A user who double-clicks, or a script retrying, is not locked out below the limit: an attempt that was
    counted a moment after another must not be taken for a locked one (the unlocked state once carried the last
    attempt's time, so an attempt whose clock read earlier was refused)."""
    user = new_user(gateway_env)
    for _ in range(5):
        statuses = asyncio.run(guess_in_parallel(gateway, fresh_address(), user["email"], ACCOUNT_LIMIT - 1))

        assert statuses == [401] * (ACCOUNT_LIMIT - 1)


def test_many_users_behind_one_address_log_in_at_once(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    """An office behind one NAT address: the address's counter takes their logins side by side."""
    users = [new_user(gateway_env) for _ in range(8)]
    address = fresh_address()

    for _ in range(3):
        assert asyncio.run(log_in_in_parallel(gateway, address, users)) == [200] * len(users)


async def log_in_in_parallel(server: LiveServer, address: str, users: list[dict[str, str]]) -> list[int]:
    transport = httpx.AsyncHTTPTransport(
        local_address=address, limits=httpx.Limits(max_connections=len(users))
    )
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        responses = await asyncio.gather(*(client.post(f"{server.url}{LOGIN}", json=user) for user in users))
    return [response.status_code for response in responses]


def test_parallel_logins_do_not_hold_the_database_while_their_passwords_are_checked(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    """Argon2 takes a CPU's fraction of a second per check, and parallel checks queue for the CPUs: a login that
    kept its database connection while it waited held the pool (15 connections, 5 s to get one on Postgres) from
    every other request, and a few dozen logins from two addresses, below both limits, were answered 503."""
    user = new_user(gateway_env)
    attackers = [fresh_address(), fresh_address()]

    async def guesses_and_a_token_list() -> tuple[list[int], int]:
        guessing = [
            asyncio.create_task(
                log_in_in_parallel(
                    gateway,
                    address,
                    [{"email": unique_email("nobody"), "password": "a guess"} for _ in range(30)],
                )
            )
            for address in attackers
        ]
        await asyncio.sleep(1)
        async with httpx.AsyncClient(timeout=60) as client:
            token = (await client.post(f"{gateway.url}{LOGIN}", json=user)).json()["access_token"]
            listed = await client.get(
                f"{gateway.url}{API_TOKENS}", headers={"authorization": f"Bearer {token}"}
            )
        return [
            status for statuses in await asyncio.gather(*guessing) for status in statuses
        ], listed.status_code

    statuses, listed = asyncio.run(guesses_and_a_token_list())

    assert set(statuses) <= {401, 429}, statuses
    assert listed == 200


def test_a_locked_pair_answers_429_with_retry_after_even_to_the_right_password(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    user = new_user(gateway_env)
    attacker = fresh_address()
    for attempt in range(ACCOUNT_LIMIT):
        assert login_from(gateway, attacker, {**user, "password": f"guess {attempt}"}).status_code == 401

    response = login_from(gateway, attacker, user)

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_attempts"
    assert int(response.headers["retry-after"]) > 0
    assert "set-cookie" not in response.headers


def test_the_victims_password_works_from_another_address_while_the_attacker_is_locked(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    victim = new_user(gateway_env)
    attacker = fresh_address()
    asyncio.run(guess_in_parallel(gateway, attacker, victim["email"], PARALLEL_GUESSES))
    assert login_from(gateway, attacker, {**victim, "password": "one more"}).status_code == 429

    assert login_from(gateway, fresh_address(), victim).status_code == 200


def test_another_account_from_the_attackers_address_is_not_locked_by_the_pair_lock(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    victim, other = new_user(gateway_env), new_user(gateway_env)
    attacker = fresh_address()
    asyncio.run(guess_in_parallel(gateway, attacker, victim["email"], PARALLEL_GUESSES))
    assert login_from(gateway, attacker, {**victim, "password": "one more"}).status_code == 429

    assert login_from(gateway, attacker, other).status_code == 200


def test_failures_over_many_accounts_lock_the_address_at_its_higher_limit(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    user = new_user(gateway_env)
    address = fresh_address()
    for _ in range(ADDRESS_LIMIT):
        nobody = {"email": unique_email("nobody"), "password": "a guess"}
        assert login_from(gateway, address, nobody).status_code == 401

    response = login_from(gateway, address, user)

    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert login_from(gateway, fresh_address(), user).status_code == 200  # elsewhere, the user logs in


def test_a_successful_login_forgets_the_pairs_failures(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    user = new_user(gateway_env)
    address = fresh_address()
    for attempt in range(ACCOUNT_LIMIT - 1):
        assert login_from(gateway, address, {**user, "password": f"typo {attempt}"}).status_code == 401
    assert login_from(gateway, address, user).status_code == 200

    for attempt in range(ACCOUNT_LIMIT - 1):
        assert login_from(gateway, address, {**user, "password": f"typo {attempt}"}).status_code == 401
    assert login_from(gateway, address, user).status_code == 200


# --- logout by any credential ----------------------------------------------------------------------------------------


def test_logout_with_only_a_bearer_token_ends_its_access_and_refresh_tokens(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    session = log_in(gateway, new_user(gateway_env))
    assert me(gateway, session.access_token).status_code == 200  # known, and so cached

    response = httpx.post(
        f"{gateway.url}{LOGOUT}", headers={"authorization": f"Bearer {session.access_token}"}
    )

    assert response.status_code == 204
    assert wait_until_refused(gateway, session.access_token) == 401
    assert refresh(gateway, session).status_code == 401


def test_logout_with_only_the_session_cookie_ends_its_access_and_refresh_tokens(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    session = log_in(gateway, new_user(gateway_env))
    assert me(gateway, session.access_token).status_code == 200

    response = httpx.post(
        f"{gateway.url}{LOGOUT}",
        headers={**cookie_header(gw_session=session.access_token), "origin": gateway.url},
    )

    assert response.status_code == 204
    assert wait_until_refused(gateway, session.access_token) == 401
    assert refresh(gateway, session).status_code == 401


PLATFORM_SECRET = "a platform secret for the expired-token test, 32+ bytes"


@pytest.fixture(scope="module")
def secret_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    """A gateway whose platform secret the test knows, so that it can make a token of its own that has expired."""
    with start_gateway(PLATFORM_JWT_SECRET=PLATFORM_SECRET) as server:
        yield server


def expired(access_token: str, secret: str) -> str:
    """`access_token` re-signed with `secret`, an hour past its expiry (its session claim kept)."""
    payload = json.loads(base64.urlsafe_b64decode(access_token.split(".")[1] + "=="))
    now = int(time.time())
    return hs256_by_hand({**payload, "iat": now - 7200, "exp": now - 3600}, secret.encode())


def test_logout_with_an_expired_access_token_still_ends_its_session(
    secret_gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    """A client whose access token has lapsed (its refresh cookie gone, or an API client keeping only the Bearer
    token) can still end the login it names; a token not signed by the gateway ends nothing."""
    ended, kept = (log_in(secret_gateway, new_user(gateway_env)) for _ in range(2))
    assert (
        me(secret_gateway, expired(ended.access_token, PLATFORM_SECRET)).status_code == 401
    )  # lapsed indeed

    for session, secret in ((kept, "not the platform secret, but as long as it"), (ended, PLATFORM_SECRET)):
        response = httpx.post(
            f"{secret_gateway.url}{LOGOUT}",
            headers={"authorization": f"Bearer {expired(session.access_token, secret)}"},
        )
        assert response.status_code in (204, 401), response.text

    assert refresh(secret_gateway, ended).status_code == 401
    assert wait_until_refused(secret_gateway, ended.access_token) == 401
    assert refresh(secret_gateway, kept).status_code == 200


def test_logout_with_the_session_cookie_and_the_csrf_header_ends_the_session(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    session = log_in(gateway, new_user(gateway_env))

    response = httpx.post(
        f"{gateway.url}{LOGOUT}",
        headers={**cookie_header(gw_session=session.access_token), "x-csrf-token": session.csrf},
    )

    assert response.status_code == 204
    assert wait_until_refused(gateway, session.access_token) == 401


def test_logout_by_cookie_with_another_sessions_csrf_token_is_403_and_ends_nothing(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    victim = log_in(gateway, new_user(gateway_env))
    attacker = log_in(gateway, new_user(gateway_env))

    response = httpx.post(
        f"{gateway.url}{LOGOUT}",
        headers={
            **cookie_header(gw_session=victim.access_token, gw_csrf=attacker.csrf),
            "x-csrf-token": attacker.csrf,
        },
    )

    assert response.status_code == 403
    assert me(gateway, victim.access_token).status_code == 200


# --- JSON only, same site only ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [LOGIN, SIGNUP, REFRESH, LOGOUT])
def test_a_text_plain_body_is_415(signup_gateway: LiveServer, path: str) -> None:
    # What a cross-site HTML form can send without a preflight.
    body = json.dumps({"email": unique_email("form"), "password": "correct horse battery staple"})

    response = httpx.post(f"{signup_gateway.url}{path}", content=body, headers={"content-type": "text/plain"})

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("path", [LOGIN, SIGNUP])
def test_a_form_encoded_login_or_signup_is_415(signup_gateway: LiveServer, path: str) -> None:
    response = httpx.post(
        f"{signup_gateway.url}{path}", data={"email": unique_email("form"), "password": "whatever it is"}
    )

    assert response.status_code == 415


@pytest.mark.parametrize("origin", [FOREIGN_ORIGIN, "null"])
@pytest.mark.parametrize("path", [LOGIN, SIGNUP])
def test_login_and_signup_from_another_origin_are_403(
    signup_gateway: LiveServer, gateway_env: dict[str, str], path: str, origin: str
) -> None:
    body = new_user(gateway_env) if path == LOGIN else {"email": unique_email(), "password": "long enough pw"}

    response = httpx.post(f"{signup_gateway.url}{path}", json=body, headers={"origin": origin})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("path", [REFRESH, LOGOUT])
def test_refresh_and_logout_from_another_origin_are_403_even_with_the_csrf_header(
    gateway: LiveServer, gateway_env: dict[str, str], path: str
) -> None:
    session = log_in(gateway, new_user(gateway_env))

    response = httpx.post(
        f"{gateway.url}{path}",
        headers={
            **cookie_header(
                gw_session=session.access_token, gw_refresh=session.refresh, gw_csrf=session.csrf
            ),
            "x-csrf-token": session.csrf,
            "origin": FOREIGN_ORIGIN,
        },
    )

    assert response.status_code == 403
    assert me(gateway, session.access_token).status_code == 200


@pytest.mark.parametrize("origin", [None, "same", "https"])
def test_a_login_from_the_gateways_own_origin_or_without_one_is_allowed(
    gateway: LiveServer, gateway_env: dict[str, str], origin: str | None
) -> None:
    """ "https": the page served over TLS by a proxy in front, which forwards plain HTTP to the gateway."""
    own = {"same": gateway.url, "https": gateway.url.replace("http://", "https://", 1)}
    headers = {} if origin is None else {"origin": own[origin]}

    response = httpx.post(f"{gateway.url}{LOGIN}", json=new_user(gateway_env), headers=headers)

    assert response.status_code == 200, response.text


# --- the CSRF token belongs to its session ---------------------------------------------------------------------------


def test_a_csrf_token_copied_from_another_session_is_refused_on_a_cookie_authenticated_change(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    victim = log_in(gateway, new_user(gateway_env))
    attacker = log_in(gateway, new_user(gateway_env))  # the attacker's own login: a valid pair of its own

    response = httpx.post(
        f"{gateway.url}{API_TOKENS}",
        json={"name": "planted"},
        headers={
            **cookie_header(gw_session=victim.access_token, gw_csrf=attacker.csrf),
            "x-csrf-token": attacker.csrf,
        },
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"


def test_the_sessions_own_csrf_token_is_accepted_without_the_cookie_pair(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    session = log_in(gateway, new_user(gateway_env))

    response = httpx.post(
        f"{gateway.url}{API_TOKENS}",
        json={"name": "own"},
        headers={**cookie_header(gw_session=session.access_token), "x-csrf-token": session.csrf},
    )

    assert response.status_code == 201, response.text


def test_a_refresh_keeps_the_sessions_csrf_token_valid(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    session = log_in(gateway, new_user(gateway_env))
    renewed = Session.of(refresh(gateway, session))

    response = httpx.post(
        f"{gateway.url}{API_TOKENS}",
        json={"name": "after refresh"},
        headers={**cookie_header(gw_session=renewed.access_token), "x-csrf-token": renewed.csrf},
    )

    assert response.status_code == 201, response.text


# --- behind a trusted proxy --------------------------------------------------------------------------------------

PROXY = "127.0.0.1"  # the TRUSTED_PROXIES of `proxied_gateway`: every client arrives through it


@pytest.fixture(scope="module")
def proxied_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    with start_gateway(TRUSTED_PROXIES=PROXY) as server:
        yield server


def login_through_proxy(server: LiveServer, client: str, body: dict[str, str], *, peer: str = PROXY) -> int:
    """A login from `peer` claiming (X-Forwarded-For, as a proxy appends it) to come from `client`."""
    with bound_client(peer) as http:
        response = http.post(f"{server.url}{LOGIN}", json=body, headers={"x-forwarded-for": client})
        return response.status_code


def test_behind_a_trusted_proxy_the_throttle_counts_the_client_not_the_proxy(
    proxied_gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    """Keyed by the proxy's address, the throttle would lock every user behind it at once (and a victim's account
    from everywhere); keyed by the address the proxy names, only the guesser's pair is locked."""
    victim = new_user(gateway_env)
    for attempt in range(ACCOUNT_LIMIT):
        status = login_through_proxy(
            proxied_gateway, "203.0.113.7", {**victim, "password": f"guess {attempt}"}
        )
        assert status == 401

    assert login_through_proxy(proxied_gateway, "203.0.113.7", victim) == 429
    assert login_through_proxy(proxied_gateway, "198.51.100.8", victim) == 200


def test_an_ipv6_client_is_counted_by_its_64_prefix(
    proxied_gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    """One IPv6 subscriber holds a /64 (2^64 addresses): counted per address, each new one bought a fresh
    allowance against the same account, and the per-address limit held no one."""
    victim = new_user(gateway_env)
    prefix = f"2001:db8:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"
    for attempt in range(ACCOUNT_LIMIT):
        body = {**victim, "password": f"guess {attempt}"}
        assert login_through_proxy(proxied_gateway, f"{prefix}::{attempt + 1:x}", body) == 401

    assert login_through_proxy(proxied_gateway, f"{prefix}:ffff:ffff:ffff:ffff", victim) == 429
    assert login_through_proxy(proxied_gateway, f"2001:db8:ffff:{uuid.uuid4().hex[:4]}::1", victim) == 200


def test_a_client_that_is_not_a_trusted_proxy_cannot_choose_its_address(
    proxied_gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    """A forged X-Forwarded-For from a peer that is not a trusted proxy is ignored: each new forged address does
    not buy a fresh allowance."""
    victim = new_user(gateway_env)
    guesser = fresh_address()
    for attempt in range(ACCOUNT_LIMIT):
        body = {**victim, "password": f"guess {attempt}"}
        assert login_through_proxy(proxied_gateway, f"192.0.2.{attempt}", body, peer=guesser) == 401

    assert login_through_proxy(proxied_gateway, "192.0.2.200", victim, peer=guesser) == 429
