"""Browser sessions over real HTTP: login, the two cookies, refresh rotation and reuse, logout, CSRF, signup,
throttling and disabled users, as a user of `/api/v1/auth/*` sees them (the attacks: test_session_attacks.py).

The login throttle's counts live in the database, which the gateways of one run share: a test that fails logins
does so for an email of its own, or from a loopback address of its own."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import Morsel, SimpleCookie

import httpx
import pytest

from gateway.settings import Settings
from tests.conftest import GatewayFactory, add_user
from tests.serving import GATEWAY, LiveServer, clean_env

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
SIGNUP = "/api/v1/auth/signup"
ME = "/api/v1/auth/me"
API_TOKENS = "/v1/api-tokens"
FOREIGN_ORIGIN = "https://evil.example"
PASSWORD = "correct horse battery staple"
ACCESS_TTL = 15 * 60
REFRESH_TTL = 30 * 24 * 3600
# A revoked credential is refused within a second on every instance: on Postgres the CLI's NOTIFY reaches
# the running gateway, on SQLite the gateway polls the revocation_events rows the CLI writes.
REVOCATION_BOUND_SECONDS = 1.0


# --- Set-Cookie parsing and sending cookies ourselves ------------------------------------------------------------


def set_cookies(response: httpx.Response) -> dict[str, Morsel[str]]:
    """The cookies a response sets, by name, each with its attributes (one Set-Cookie header each)."""
    cookies: dict[str, Morsel[str]] = {}
    for raw in response.headers.get_list("set-cookie"):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(raw)
        cookies.update(parsed)
    return cookies


def cookie_header(**cookies: str) -> dict[str, str]:
    """A Cookie request header, as a browser sends it (httpx keeps Secure cookies off plain http)."""
    return {"cookie": "; ".join(f"{name}={value}" for name, value in cookies.items())}


def is_cleared(morsel: Morsel[str]) -> bool:
    return morsel["max-age"] == "0" or "1970" in morsel["expires"]


@dataclass(frozen=True)
class Session:
    """What one login (or refresh) handed the browser."""

    access_token: str
    refresh: str
    csrf: str

    @classmethod
    def of(cls, response: httpx.Response) -> Session:
        assert response.status_code in (200, 201), response.text
        cookies = set_cookies(response)
        return cls(
            access_token=response.json()["access_token"],
            refresh=cookies["gw_refresh"].value,
            csrf=cookies["gw_csrf"].value,
        )

    def refresh_headers(self, origin: str) -> dict[str, str]:
        """The cookies a browser sends to the auth routes, plus a same-origin Origin header."""
        return {**cookie_header(gw_refresh=self.refresh, gw_csrf=self.csrf), "origin": origin}


# --- users, logins and the gateway's database ----------------------------------------------------------------------


def database_url(gateway_env: dict[str, str]) -> str:
    return Settings.from_env(gateway_env, env_file=None).database_url


def unique_email(label: str = "user") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}@example.com"


def new_user(gateway_env: dict[str, str]) -> dict[str, str]:
    """A fresh user in the gateway's database, as a login body."""
    email = unique_email()
    asyncio.run(add_user(database_url(gateway_env), email=email, password=PASSWORD))
    return {"email": email, "password": PASSWORD}


def login(server: LiveServer, body: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}{LOGIN}", json=body)


def log_in(server: LiveServer, body: dict[str, str]) -> Session:
    return Session.of(login(server, body))


def me(server: LiveServer, access_token: str) -> httpx.Response:
    return httpx.get(f"{server.url}{ME}", headers={"authorization": f"Bearer {access_token}"})


def refresh(server: LiveServer, session: Session) -> httpx.Response:
    return httpx.post(f"{server.url}{REFRESH}", headers=session.refresh_headers(server.url))


def bound_client(address: str) -> httpx.Client:
    """A client whose requests come from another loopback address (another client IP for the throttle)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


@pytest.fixture
def user(gateway_env: dict[str, str], gateway: LiveServer) -> dict[str, str]:
    return new_user(gateway_env)


@pytest.fixture
def session(gateway: LiveServer, user: dict[str, str]) -> Session:
    return log_in(gateway, user)


@pytest.fixture(scope="module")
def signup_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    with start_gateway(ALLOW_SIGNUP="1") as server:
        yield server


# --- login ---------------------------------------------------------------------------------------------------------


def test_login_answers_the_user_an_access_token_and_its_lifetime(
    gateway: LiveServer, user: dict[str, str]
) -> None:
    response = login(gateway, user)

    assert response.status_code == 200
    body = response.json()
    assert body["user"]["email"] == user["email"]
    assert body["user"]["id"].startswith("usr_")
    assert "password_hash" not in body["user"]
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert body["expires_in"] == ACCESS_TTL


def test_login_sets_an_httponly_lax_session_cookie_on_every_path_for_fifteen_minutes(
    gateway: LiveServer, user: dict[str, str]
) -> None:
    response = login(gateway, user)

    cookie = set_cookies(response)["gw_session"]
    assert cookie.value == response.json()["access_token"]
    assert cookie["httponly"] is True
    assert cookie["samesite"].lower() == "lax"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == str(ACCESS_TTL)


def test_login_sets_an_httponly_strict_refresh_cookie_for_the_auth_routes_for_thirty_days(
    gateway: LiveServer, user: dict[str, str]
) -> None:
    response = login(gateway, user)

    cookie = set_cookies(response)["gw_refresh"]
    assert cookie.value
    assert cookie.value != response.json()["access_token"]
    assert cookie["httponly"] is True
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/api/v1/auth"
    assert cookie["max-age"] == str(REFRESH_TTL)


def test_login_cookies_are_secure_by_default(gateway: LiveServer, user: dict[str, str]) -> None:
    cookies = set_cookies(login(gateway, user))

    assert cookies["gw_session"]["secure"] is True
    assert cookies["gw_refresh"]["secure"] is True


def test_login_cookies_are_not_secure_with_cookie_secure_off(
    start_gateway: GatewayFactory, gateway_env: dict[str, str]
) -> None:
    user = new_user(gateway_env)
    with start_gateway(COOKIE_SECURE="0") as plain:
        cookies = set_cookies(login(plain, user))

    assert cookies["gw_session"]["secure"] == ""
    assert cookies["gw_refresh"]["secure"] == ""
    assert cookies["gw_session"]["httponly"] is True


def test_wrong_password_and_unknown_email_answer_the_same_401(
    gateway: LiveServer, user: dict[str, str]
) -> None:
    wrong_password = login(gateway, {"email": user["email"], "password": "not the password"})
    unknown_email = login(gateway, {"email": unique_email("nobody"), "password": PASSWORD})

    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json()
    assert "set-cookie" not in wrong_password.headers


def test_wrong_password_and_unknown_email_take_about_the_same_time(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    user = new_user(gateway_env)
    log_in(gateway, user)  # warm up: connections, caches
    wrong: list[float] = []
    unknown: list[float] = []
    addresses = (f"127.0.0.{n}" for n in range(10, 250))
    for attempt in range(5):
        for times, body in (
            (wrong, {"email": user["email"], "password": f"wrong password {attempt}"}),
            (unknown, {"email": unique_email("nobody"), "password": PASSWORD}),
        ):
            # Each attempt from its own loopback address, so the per-IP throttle never steps in.
            with bound_client(next(addresses)) as client:
                started = time.perf_counter()
                response = client.post(f"{gateway.url}{LOGIN}", json=body)
                times.append(time.perf_counter() - started)
            assert response.status_code == 401, response.text

    # The fastest of each: a loaded host only ever adds time, and the two paths do the same work (argon2 against
    # the user's hash or a dummy one); a path that skipped the check would be several times faster still.
    ratio = min(wrong) / min(unknown)
    assert 0.5 <= ratio <= 2, (wrong, unknown)


def test_five_failed_logins_make_the_sixth_429_with_retry_after_even_with_the_right_password(
    gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    user = new_user(gateway_env)
    for attempt in range(5):
        assert login(gateway, {**user, "password": f"guess {attempt}"}).status_code == 401

    response = login(gateway, user)

    assert response.status_code == 429
    assert response.headers["retry-after"].isdigit()
    assert int(response.headers["retry-after"]) > 0
    assert "set-cookie" not in response.headers


def test_login_with_a_body_that_is_not_json_is_400_invalid_json(gateway: LiveServer) -> None:
    response = httpx.post(
        f"{gateway.url}{LOGIN}", content=b"email=a@example.com", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_login_without_a_password_is_400(gateway: LiveServer, user: dict[str, str]) -> None:
    response = login(gateway, {"email": user["email"]})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- using the access token ----------------------------------------------------------------------------------------


def test_the_access_token_works_as_a_bearer_token_on_me(
    gateway: LiveServer, user: dict[str, str], session: Session
) -> None:
    response = me(gateway, session.access_token)

    assert response.status_code == 200
    assert response.json()["user"]["email"] == user["email"]


def test_the_access_token_works_as_the_session_cookie_on_me(
    gateway: LiveServer, user: dict[str, str], session: Session
) -> None:
    response = httpx.get(f"{gateway.url}{ME}", headers=cookie_header(gw_session=session.access_token))

    assert response.status_code == 200
    assert response.json()["user"]["email"] == user["email"]


def test_me_without_a_credential_is_401(gateway: LiveServer) -> None:
    response = httpx.get(f"{gateway.url}{ME}")

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


# --- refresh -------------------------------------------------------------------------------------------------------


def test_refresh_with_the_csrf_header_answers_a_new_access_token_and_renews_both_cookies(
    gateway: LiveServer, user: dict[str, str], session: Session
) -> None:
    response = httpx.post(
        f"{gateway.url}{REFRESH}",
        headers={
            **cookie_header(gw_refresh=session.refresh, gw_csrf=session.csrf),
            "x-csrf-token": session.csrf,
        },
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["email"] == user["email"]
    assert body["access_token"] != session.access_token
    assert body["expires_in"] == ACCESS_TTL
    cookies = set_cookies(response)
    assert cookies["gw_session"].value == body["access_token"]
    assert cookies["gw_session"]["max-age"] == str(ACCESS_TTL)
    assert cookies["gw_refresh"].value not in ("", session.refresh)
    assert cookies["gw_refresh"]["path"] == "/api/v1/auth"
    assert cookies["gw_refresh"]["max-age"] == str(REFRESH_TTL)
    assert me(gateway, body["access_token"]).status_code == 200


def test_refresh_from_the_gateways_own_origin_is_accepted(gateway: LiveServer, session: Session) -> None:
    response = httpx.post(
        f"{gateway.url}{REFRESH}",
        headers={**cookie_header(gw_refresh=session.refresh), "origin": gateway.url},
    )

    assert response.status_code == 200, response.text


def test_refresh_without_the_cookie_is_401(gateway: LiveServer) -> None:
    response = httpx.post(f"{gateway.url}{REFRESH}", headers={"origin": gateway.url})

    assert response.status_code == 401


def test_refresh_from_a_foreign_origin_without_the_csrf_header_is_403(
    gateway: LiveServer, session: Session
) -> None:
    response = httpx.post(
        f"{gateway.url}{REFRESH}",
        headers={**cookie_header(gw_refresh=session.refresh, gw_csrf=session.csrf), "origin": FOREIGN_ORIGIN},
    )

    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    assert refresh(gateway, session).status_code == 200  # the refused attempt did not spend the token


def test_a_refresh_token_used_twice_is_refused(gateway: LiveServer, session: Session) -> None:
    assert refresh(gateway, session).status_code == 200

    response = refresh(gateway, session)

    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_reusing_a_refresh_token_kills_the_token_its_rotation_issued(
    gateway: LiveServer, session: Session
) -> None:
    successor = Session.of(refresh(gateway, session))
    assert refresh(gateway, session).status_code == 401

    assert refresh(gateway, successor).status_code == 401


def test_reusing_a_refresh_token_kills_the_access_tokens_of_that_login(
    gateway: LiveServer, session: Session
) -> None:
    successor = Session.of(refresh(gateway, session))
    assert me(gateway, session.access_token).status_code == 200  # both known (and cached) before the reuse
    assert me(gateway, successor.access_token).status_code == 200

    assert refresh(gateway, session).status_code == 401

    assert me(gateway, session.access_token).status_code == 401
    assert me(gateway, successor.access_token).status_code == 401


def test_reusing_a_refresh_token_leaves_the_users_other_logins_alone(
    gateway: LiveServer, user: dict[str, str], session: Session
) -> None:
    other = log_in(gateway, user)
    refresh(gateway, session)
    assert refresh(gateway, session).status_code == 401

    assert me(gateway, other.access_token).status_code == 200
    assert refresh(gateway, other).status_code == 200


# --- logout --------------------------------------------------------------------------------------------------------


def logout(server: LiveServer, session: Session) -> httpx.Response:
    return httpx.post(
        f"{server.url}{LOGOUT}",
        headers={
            **cookie_header(
                gw_session=session.access_token, gw_refresh=session.refresh, gw_csrf=session.csrf
            ),
            "origin": server.url,
        },
    )


def test_logout_answers_204_and_clears_both_cookies(gateway: LiveServer, session: Session) -> None:
    response = logout(gateway, session)

    assert response.status_code == 204
    cookies = set_cookies(response)
    assert is_cleared(cookies["gw_session"])
    assert cookies["gw_session"]["path"] == "/"
    assert is_cleared(cookies["gw_refresh"])
    assert cookies["gw_refresh"]["path"] == "/api/v1/auth"  # a clearing cookie only clears its own path


def test_logout_ends_the_sessions_access_token(gateway: LiveServer, session: Session) -> None:
    assert me(gateway, session.access_token).status_code == 200

    assert logout(gateway, session).status_code == 204

    assert me(gateway, session.access_token).status_code == 401


def test_logout_ends_the_sessions_refresh_token(gateway: LiveServer, session: Session) -> None:
    assert logout(gateway, session).status_code == 204

    assert refresh(gateway, session).status_code == 401


def test_logout_from_a_foreign_origin_is_403_and_the_session_lives_on(
    gateway: LiveServer, session: Session
) -> None:
    response = httpx.post(
        f"{gateway.url}{LOGOUT}",
        headers={
            **cookie_header(gw_session=session.access_token, gw_refresh=session.refresh),
            "origin": FOREIGN_ORIGIN,
        },
    )

    assert response.status_code == 403
    assert me(gateway, session.access_token).status_code == 200


# --- CSRF on cookie-authenticated changes ---------------------------------------------------------------------------


def create_token(server: LiveServer, name: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}{API_TOKENS}", json={"name": name}, headers=headers)


def token_names(server: LiveServer, session: Session) -> list[str]:
    response = httpx.get(
        f"{server.url}{API_TOKENS}", headers={"authorization": f"Bearer {session.access_token}"}
    )
    assert response.status_code == 200, response.text
    return [record["name"] for record in response.json()["data"]]


def test_a_cookie_authenticated_change_from_a_foreign_origin_is_403_and_changes_nothing(
    gateway: LiveServer, session: Session
) -> None:
    response = create_token(
        gateway, "cross-site", {**cookie_header(gw_session=session.access_token), "origin": FOREIGN_ORIGIN}
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    assert "cross-site" not in token_names(gateway, session)


def test_a_cookie_authenticated_change_without_origin_or_csrf_header_is_403(
    gateway: LiveServer, session: Session
) -> None:
    response = create_token(gateway, "no-origin", cookie_header(gw_session=session.access_token))

    assert response.status_code == 403
    assert "no-origin" not in token_names(gateway, session)


def test_a_cookie_authenticated_change_from_the_gateways_own_origin_is_allowed(
    gateway: LiveServer, session: Session
) -> None:
    response = create_token(
        gateway, "same-origin", {**cookie_header(gw_session=session.access_token), "origin": gateway.url}
    )

    assert response.status_code == 201, response.text
    assert "same-origin" in token_names(gateway, session)


def test_a_cookie_authenticated_change_with_the_double_submit_header_is_allowed(
    gateway: LiveServer, session: Session
) -> None:
    headers = {
        **cookie_header(gw_session=session.access_token, gw_csrf=session.csrf),
        "x-csrf-token": session.csrf,
    }

    response = create_token(gateway, "double-submit", headers)

    assert response.status_code == 201, response.text


def test_a_double_submit_header_that_does_not_match_the_cookie_is_403(
    gateway: LiveServer, session: Session
) -> None:
    headers = {
        **cookie_header(gw_session=session.access_token, gw_csrf=session.csrf),
        "x-csrf-token": "forged",
    }

    response = create_token(gateway, "forged", headers)

    assert response.status_code == 403


def test_a_bearer_authenticated_change_is_not_subject_to_csrf(gateway: LiveServer, session: Session) -> None:
    headers = {"authorization": f"Bearer {session.access_token}", "origin": FOREIGN_ORIGIN}

    response = create_token(gateway, "bearer", headers)

    assert response.status_code == 201, response.text


# --- signup --------------------------------------------------------------------------------------------------------


def test_signup_is_404_when_it_is_not_enabled(gateway: LiveServer) -> None:
    response = httpx.post(f"{gateway.url}{SIGNUP}", json={"email": unique_email(), "password": PASSWORD})

    assert response.status_code == 404


def test_signup_when_enabled_creates_the_user_with_a_session(signup_gateway: LiveServer) -> None:
    email = unique_email("signup")

    response = httpx.post(f"{signup_gateway.url}{SIGNUP}", json={"email": email, "password": PASSWORD})

    assert response.status_code == 201, response.text
    assert response.json()["user"]["email"] == email
    assert {"gw_session", "gw_refresh"} <= set(set_cookies(response))
    assert me(signup_gateway, response.json()["access_token"]).json()["user"]["email"] == email
    assert login(signup_gateway, {"email": email, "password": PASSWORD}).status_code == 200


def test_signup_with_a_taken_email_is_409(signup_gateway: LiveServer, gateway_env: dict[str, str]) -> None:
    taken = new_user(gateway_env)

    response = httpx.post(
        f"{signup_gateway.url}{SIGNUP}",
        json={"email": taken["email"].upper(), "password": "another password"},
    )

    assert response.status_code == 409
    assert "set-cookie" not in response.headers


def test_signup_with_a_short_password_is_400(signup_gateway: LiveServer) -> None:
    response = httpx.post(
        f"{signup_gateway.url}{SIGNUP}", json={"email": unique_email(), "password": "short"}
    )

    assert response.status_code == 400
    assert "set-cookie" not in response.headers


# --- disabled users ------------------------------------------------------------------------------------------------


def disable(gateway_env: dict[str, str], email: str) -> None:
    """`gateway users disable --email E`, as the operator runs it."""
    result = subprocess.run(
        [GATEWAY, "users", "disable", "--email", email],
        env=clean_env(DATABASE_URL=database_url(gateway_env), DATA_DIR=gateway_env["DATA_DIR"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_a_disabled_user_cannot_log_in(
    gateway: LiveServer, gateway_env: dict[str, str], user: dict[str, str]
) -> None:
    disable(gateway_env, user["email"])

    response = login(gateway, user)

    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_a_disabled_users_access_token_stops_working(
    gateway: LiveServer, gateway_env: dict[str, str], user: dict[str, str], session: Session
) -> None:
    assert me(gateway, session.access_token).status_code == 200  # known, and so cached

    disable(gateway_env, user["email"])
    disabled_at = time.monotonic()
    while (status := me(gateway, session.access_token).status_code) == 200:
        assert time.monotonic() - disabled_at < REVOCATION_BOUND_SECONDS, "still accepted after a second"
        time.sleep(0.05)

    assert status == 401


def test_a_disabled_users_refresh_token_is_refused(
    gateway: LiveServer, gateway_env: dict[str, str], user: dict[str, str], session: Session
) -> None:
    disable(gateway_env, user["email"])

    response = refresh(gateway, session)

    assert response.status_code == 401
    assert "set-cookie" not in response.headers
