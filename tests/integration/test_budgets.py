"""Budgets and rate limits over real HTTP (issue 22): caps that hold under concurrency on one instance and on two
sharing one database, reservations settled to what was used (streams cut, upstreams failing), limits set by
POST, PATCH and the CLI and honoured everywhere within a second, and what a user sees of them.

The fake upstream bills what its `usage` says (11 prompt and 7 completion tokens); the prices here make its
models' cost exact. A request of `ASK` reserves its worst case: 10 prompt tokens (the 6 bytes of "user" and "hi",
plus 4 per message) and its 100 max tokens.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.db.engine import Database
from gateway.db.models import UsageEvent
from gateway.settings import Settings
from tests.conftest import GatewayFactory, add_user
from tests.serving import GATEWAY, LiveServer, clean_env, free_port, gateway_process

PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens: 1,000 and 2,000 nano-USD a token
PRICED_MODELS = ("gpt-4o-mini", "slow-stream", "endless-stream", "usage-then-endless", "never-answer")
ASK = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 100
WORST_TOKENS = 10 + MAX_TOKENS
WORST_USD = (10 * 1_000 + MAX_TOKENS * 2_000) / 1e9  # 0.00021
ACTUAL_TOKENS = 18
ACTUAL_USD = (11 * 1_000 + 7 * 2_000) / 1e9  # 0.000025
CAP_FOR_FIVE_USD = 5.5 * WORST_USD
CAP_FOR_FIVE_TOKENS = 5 * WORST_TOKENS + WORST_TOKENS // 2
SETTLE_SECONDS = 10.0


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def price_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prices") / "prices.json"
    path.write_text(
        json.dumps({"ocr": {"per_page": 0.001}, "models": {model: PRICE for model in PRICED_MODELS}})
    )
    return path


@pytest.fixture(scope="module")
def priced(start_gateway: GatewayFactory, price_file: Path) -> Iterator[LiveServer]:
    # With a usage key set, a user's own session reads their own usage (and limits) at /v1/usage.
    with start_gateway(PRICING_FILE=str(price_file), USAGE_API_KEY="usage-operator-key") as server:
        yield server


@pytest.fixture(scope="module")
def database_url(gateway_env: dict[str, str]) -> str:
    return Settings.from_env(gateway_env, env_file=None).database_url


def sign_in(gateway: LiveServer, database_url: str) -> tuple[str, str]:
    """A new user: (email, platform JWT)."""
    login = {
        "email": f"budget-{uuid.uuid4().hex[:10]}@example.com",
        "password": "correct horse battery staple",
    }
    asyncio.run(add_user(database_url, **login))
    response = httpx.post(f"{gateway.url}/api/v1/auth/login", json=login)
    assert response.status_code == 200, response.text
    return login["email"], response.json()["access_token"]


def new_token(gateway: LiveServer, access: str, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "limited"} if limits is None else {"name": "limited", "limits": limits}
    response = httpx.post(f"{gateway.url}/v1/api-tokens", json=body, headers=bearer(access))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def record_of(gateway: LiveServer, access: str, token_id: str) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/v1/api-tokens", headers=bearer(access))
    assert response.status_code == 200, response.text
    found: dict[str, Any] = next(record for record in response.json()["data"] if record["id"] == token_id)
    return found


def settled(
    gateway: LiveServer, access: str, token_id: str, *, within: float = SETTLE_SECONDS
) -> dict[str, Any]:
    """The token's limits once nothing is reserved any more (fails if something stays reserved)."""
    deadline = time.monotonic() + within
    while True:
        limits: dict[str, Any] = record_of(gateway, access, token_id)["limits"]
        if all(view["reserved"] == 0 for view in limits.values()):
            return limits
        assert time.monotonic() < deadline, f"still reserved after {within} s: {limits}"
        time.sleep(0.1)


async def recorded(database_url: str, token_id: str, *, rows: int) -> tuple[list[int], float]:
    """The statuses of the token's usage rows, and their total cost, once there are `rows` of them."""
    database = Database(database_url)
    database.open()
    try:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            async with database.session() as session:
                found = (
                    await session.execute(
                        select(
                            UsageEvent.status, UsageEvent.input_cost_usd + UsageEvent.output_cost_usd
                        ).where(UsageEvent.token_id == token_id)
                    )
                ).all()
            if len(found) >= rows or time.monotonic() > deadline:
                return [status for status, _ in found], sum(cost for _, cost in found)
            await asyncio.sleep(0.2)
    finally:
        await database.close()


def chat_body(model: str = "gpt-4o-mini", *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": ASK, "max_tokens": MAX_TOKENS, "stream": stream}


async def race(urls: list[str], token: str, count: int, body: dict[str, Any]) -> list[httpx.Response]:
    """`count` requests at once, spread over `urls`, each read to its end."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(index: int) -> httpx.Response:
            url = f"{urls[index % len(urls)]}/v1/chat/completions"
            response = await client.post(url, json=body, headers=bearer(token))
            await response.aread()
            return response

        return list(await asyncio.gather(*(one(index) for index in range(count))))


async def held_race(urls: list[str], token: str, count: int) -> list[httpx.Response]:
    """`count` streams at once, spread over `urls`: each admitted one is held open (past its usage chunk) until
    every request has its answer, so that none settles while others are still being admitted."""
    body = chat_body("usage-then-endless", stream=True)
    answered = 0
    everyone = asyncio.Event()
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(index: int) -> httpx.Response:
            nonlocal answered
            url = f"{urls[index % len(urls)]}/v1/chat/completions"
            async with client.stream("POST", url, json=body, headers=bearer(token)) as response:
                answered += 1
                if answered == count:
                    everyone.set()
                if response.status_code != 200:
                    await response.aread()
                    return response
                chunks = response.aiter_bytes()  # held: a generator let go would close the stream
                while b"tick" not in await anext(chunks):
                    pass  # until the usage chunk went by
                await asyncio.wait_for(everyone.wait(), 30)
                return response  # the client goes: settled to the usage seen

        return list(await asyncio.gather(*(one(index) for index in range(count))))


def outcome(responses: list[httpx.Response]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for response in responses:
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
    return counts


def assert_refused(response: httpx.Response, code: str, limit: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, limit), error
    assert int(response.headers["retry-after"]) >= 1
    assert limit in error["message"]


def test_fifty_concurrent_requests_against_a_cap_that_fits_five(
    priced: LiveServer, database_url: str
) -> None:
    _, access = sign_in(priced, database_url)
    token = new_token(priced, access, {"usd_per_period": CAP_FOR_FIVE_USD, "period": "day"})
    responses = asyncio.run(held_race([priced.url], token["token"], 50))
    assert outcome(responses) == {200: 5, 429: 45}
    for response in responses:
        if response.status_code == 429:
            assert_refused(response, "budget_exceeded", "usd_per_period")
            assert "resets at" in response.json()["error"]["message"]
    usd = settled(priced, access, token["id"])["usd_per_period"]
    assert usd["spent"] == pytest.approx(5 * ACTUAL_USD)
    assert usd["spent"] <= CAP_FOR_FIVE_USD
    # The usage capture recorded the same: fifty rows, five of them billed (streams the client left: 499), together
    # within the cap.
    statuses, cost = asyncio.run(recorded(database_url, token["id"], rows=50))
    assert sorted(statuses) == [429] * 45 + [499] * 5
    assert cost == pytest.approx(usd["spent"])
    assert usd["remaining"] == pytest.approx(CAP_FOR_FIVE_USD - 5 * ACTUAL_USD)
    assert usd["period"] == "day" and usd["resets_at"].endswith("T00:00:00Z")


def test_two_instances_sharing_the_database_hold_the_same_cap(
    priced: LiveServer, start_gateway: GatewayFactory, price_file: Path, database_url: str
) -> None:
    _, access = sign_in(priced, database_url)
    token = new_token(priced, access, {"tokens_per_period": CAP_FOR_FIVE_TOKENS})
    with start_gateway(PRICING_FILE=str(price_file)) as other:
        responses = asyncio.run(held_race([priced.url, other.url], token["token"], 50))
        assert outcome(responses) == {200: 5, 429: 45}
        assert {
            response.json()["error"]["param"] for response in responses if response.status_code == 429
        } == {"tokens_per_period"}
        tokens = settled(other, access, token["id"])["tokens_per_period"]
    assert tokens["spent"] == 5 * ACTUAL_TOKENS <= CAP_FOR_FIVE_TOKENS
    assert tokens["period"] == "month"


def test_a_hundred_and_twenty_requests_against_a_hundred_a_minute(
    priced: LiveServer, start_gateway: GatewayFactory, price_file: Path, database_url: str
) -> None:
    _, access = sign_in(priced, database_url)
    alone = new_token(priced, access, {"requests_per_minute": 100})
    responses = asyncio.run(race([priced.url], alone["token"], 120, chat_body()))
    assert outcome(responses) == {200: 100, 429: 20}
    for response in responses:
        if response.status_code == 429:
            assert_refused(response, "rate_limited", "requests_per_minute")
            assert int(response.headers["retry-after"]) <= 62
    view = record_of(priced, access, alone["id"])["limits"]["requests_per_minute"]
    assert (view["spent"], view["remaining"]) == (100, 0)
    # Across two instances, each leasing admissions from the database as it goes.
    shared = new_token(priced, access, {"requests_per_minute": 100})
    with start_gateway(PRICING_FILE=str(price_file)) as other:
        responses = asyncio.run(race([priced.url, other.url], shared["token"], 120, chat_body()))
    assert outcome(responses) == {200: 100, 429: 20}


def test_a_stream_cut_by_the_client_settles_to_the_tokens_seen(priced: LiveServer, database_url: str) -> None:
    _, access = sign_in(priced, database_url)
    token = new_token(priced, access, {"usd_per_period": 1.0, "tokens_per_period": 100_000})
    body = chat_body("usage-then-endless", stream=True)
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", f"{priced.url}/v1/chat/completions", json=body, headers=bearer(token["token"])
        ) as r,
    ):
        assert r.status_code == 200
        seen = b""
        for piece in r.iter_bytes():
            seen += piece
            if seen.count(b"tick") >= 3:
                during = record_of(priced, access, token["id"])["limits"]
                assert during["tokens_per_period"]["reserved"] == WORST_TOKENS, during
                break  # the client goes away mid-stream; the usage chunk came first
    limits = settled(priced, access, token["id"])
    assert limits["tokens_per_period"]["spent"] == ACTUAL_TOKENS
    assert limits["usd_per_period"]["spent"] == pytest.approx(ACTUAL_USD)


def test_an_upstream_failure_releases_its_reservation(
    start_gateway: GatewayFactory, price_file: Path, database_url: str
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    with start_gateway(PRICING_FILE=str(price_file), OPENAI_BASE_URL=nowhere) as broken:
        _, access = sign_in(broken, database_url)
        token = new_token(broken, access, {"usd_per_period": CAP_FOR_FIVE_USD, "tokens_per_period": 1000})
        for _ in range(8):  # more than fit at once: each failure gives its room back
            response = httpx.post(
                f"{broken.url}/v1/chat/completions", json=chat_body(), headers=bearer(token["token"])
            )
            assert response.status_code == 502, response.text
        limits = settled(broken, access, token["id"])
    assert limits["usd_per_period"]["spent"] == 0
    assert limits["tokens_per_period"]["spent"] == 0
    assert limits["usd_per_period"]["remaining"] == pytest.approx(CAP_FOR_FIVE_USD)


def test_a_gateway_killed_mid_request_holds_nothing_past_the_reservations_expiry(
    priced: LiveServer, gateway_env: dict[str, str], price_file: Path, database_url: str, tmp_path: Path
) -> None:
    _, access = sign_in(priced, database_url)
    token = new_token(priced, access, {"usd_per_period": CAP_FOR_FIVE_USD})
    env = clean_env(**gateway_env, PRICING_FILE=str(price_file), BUDGET_RESERVATION_SECONDS="3")
    body = chat_body("usage-then-endless", stream=True)
    with gateway_process(tmp_path, env) as doomed, httpx.Client(timeout=10) as client:
        requested_at = time.monotonic()  # the hold is taken after this: it expires 3 s after it, no sooner
        with client.stream(
            "POST", f"{doomed.url}/v1/chat/completions", json=body, headers=bearer(token["token"])
        ) as response:
            assert response.status_code == 200
            chunks = response.iter_bytes()
            while b"tick" not in next(chunks):
                pass
            held = record_of(priced, access, token["id"])["limits"]["usd_per_period"]
            assert held["reserved"] == pytest.approx(WORST_USD)
            doomed.process.send_signal(signal.SIGKILL)
            doomed.process.wait(10)
    # Nobody settles it: the hold expires 3 s after it was taken, and a sweep (every 1 to 1.5 s) releases it.
    usd = settled(priced, access, token["id"], within=3 + 5)["usd_per_period"]
    assert (
        time.monotonic() - requested_at >= 3 - 0.05
    )  # held until its expiry (the gateway's clock is the wall's)
    assert (usd["spent"], usd["remaining"]) == (0, pytest.approx(CAP_FOR_FIVE_USD))


def test_ocr_reserves_a_page_and_settles_to_the_pages_processed(
    priced: LiveServer, database_url: str
) -> None:
    _, access = sign_in(priced, database_url)
    token = new_token(priced, access, {"usd_per_period": 0.0025})  # two and a half pages at 0.001 USD

    def ocr() -> httpx.Response:
        body = {"url": "https://example.com/scan.pdf"}
        return httpx.post(f"{priced.url}/v1/ocr", json=body, headers=bearer(token["token"]), timeout=10)

    assert ocr().status_code == 200  # one page reserved; the fake processed two
    assert settled(priced, access, token["id"])["usd_per_period"]["spent"] == pytest.approx(0.002)
    assert_refused(ocr(), "budget_exceeded", "usd_per_period")  # 0.002 spent: less than a page left


def test_limits_are_shown_and_bad_ones_refused_naming_the_field(
    priced: LiveServer, database_url: str
) -> None:
    _, access = sign_in(priced, database_url)
    plain = new_token(priced, access)
    assert plain["limits"] == {}
    rolling = new_token(priced, access, {"usd_per_period": 2.5, "rolling_days": 7, "requests_per_minute": 30})
    usd = rolling["limits"]["usd_per_period"]
    assert usd == {
        "limit": 2.5,
        "period": "rolling",
        "rolling_days": 7,
        "spent": 0,
        "reserved": 0,
        "remaining": 2.5,
        "resets_at": usd["resets_at"],
    }
    assert usd["resets_at"].endswith("T00:00:00Z")
    assert rolling["limits"]["requests_per_minute"]["limit"] == 30
    bad = {
        "limits.usd_per_period": {"usd_per_period": -1},
        "limits.tokens_per_period": {"tokens_per_period": 1.5},
        "limits.requests_per_minute": {"requests_per_minute": True},
        "limits.period": {"period": "week"},
        "limits.rolling_days": {"rolling_days": 0},
        "limits.bogus": {"bogus": 1},
        "limits": ["usd_per_period"],
    }
    for field, limits in bad.items():
        for method, url in (
            ("POST", f"{priced.url}/v1/api-tokens"),
            ("PATCH", f"{priced.url}/v1/api-tokens/{plain['id']}"),
        ):
            response = httpx.request(method, url, json={"limits": limits}, headers=bearer(access))
            assert response.status_code == 400, (method, field, response.text)
            assert response.json()["error"]["param"] == field
    missing = httpx.patch(
        f"{priced.url}/v1/api-tokens/tok_{'0' * 24}", json={"limits": {}}, headers=bearer(access)
    )
    assert missing.status_code == 404


def test_patch_reaches_every_instance_within_a_second(
    priced: LiveServer, start_gateway: GatewayFactory, price_file: Path, database_url: str
) -> None:
    _, access = sign_in(priced, database_url)
    token = new_token(priced, access)
    with start_gateway(PRICING_FILE=str(price_file)) as other:
        instances = (priced, other)
        for instance in instances:  # both cache the principal, without limits
            assert chat(instance, token["token"]).status_code == 200
        patched = httpx.patch(
            f"{priced.url}/v1/api-tokens/{token['id']}",
            json={"limits": {"usd_per_period": 0.0001}},  # less than one request's worst case
            headers=bearer(access),
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["limits"]["usd_per_period"]["limit"] == 0.0001
        for instance in instances:
            assert_refused(
                within_a_second(instance, token["token"], 429), "budget_exceeded", "usd_per_period"
            )
        removed = httpx.patch(
            f"{other.url}/v1/api-tokens/{token['id']}",
            json={"limits": {"usd_per_period": None}},
            headers=bearer(access),
        )
        assert removed.json()["limits"] == {}
        for instance in instances:
            within_a_second(instance, token["token"], 200)


def test_the_cli_sets_a_users_limits_on_every_instance_within_a_second(
    priced: LiveServer,
    start_gateway: GatewayFactory,
    price_file: Path,
    gateway_env: dict[str, str],
    database_url: str,
) -> None:
    email, access = sign_in(priced, database_url)
    token = new_token(priced, access)
    with start_gateway(PRICING_FILE=str(price_file)) as other:
        instances = (priced, other)
        for instance in instances:
            assert chat(instance, token["token"]).status_code == 200
            assert chat(instance, access).status_code == 200
        run_cli(gateway_env, "users", "limits", "--email", email, "--requests-per-minute", "1")
        # One admission a minute for the user, whatever the credential: the next one is refused everywhere.
        for instance in instances:
            response = within_a_second(instance, token["token"], 429)
            assert_refused(response, "rate_limited", "requests_per_minute")
        shown = run_cli(gateway_env, "users", "limits", "--email", email)
        assert "requests_per_minute" in shown
        run_cli(gateway_env, "users", "limits", "--email", email, "--clear")
        for instance in instances:
            within_a_second(instance, access, 200)


def test_unknown_models_are_admitted_or_refused_as_configured(
    start_gateway: GatewayFactory, price_file: Path, database_url: str
) -> None:
    with start_gateway(PRICING_FILE=str(price_file), BUDGET_UNKNOWN_MODEL="deny") as strict:
        _, access = sign_in(strict, database_url)
        token = new_token(strict, access, {"usd_per_period": 1.0})
        unpriced = {**chat_body(), "model": "a-model-without-a-price"}
        response = httpx.post(
            f"{strict.url}/v1/chat/completions", json=unpriced, headers=bearer(token["token"])
        )
        assert response.status_code == 403, response.text
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
            "model_not_priced",
            "model",
        )
        tokens_only = new_token(strict, access, {"tokens_per_period": 1000})
        response = httpx.post(
            f"{strict.url}/v1/chat/completions", json=unpriced, headers=bearer(tokens_only["token"])
        )
        assert response.status_code == 200, response.text
    with start_gateway(PRICING_FILE=str(price_file)) as lenient:
        response = httpx.post(
            f"{lenient.url}/v1/chat/completions", json=unpriced, headers=bearer(token["token"])
        )
        assert response.status_code == 200, response.text
        assert settled(lenient, access, token["id"])["usd_per_period"]["spent"] == 0


def test_usage_shows_the_users_limits_and_their_tokens(
    priced: LiveServer, gateway_env: dict[str, str], database_url: str
) -> None:
    email, access = sign_in(priced, database_url)
    token = new_token(priced, access, {"tokens_per_period": 1000})
    run_cli(gateway_env, "users", "limits", "--email", email, "--usd", "2", "--period", "day")
    assert within_a_second(priced, token["token"], 200).status_code == 200  # the user's limit known by then

    def usage_limits() -> dict[str, Any]:
        response = httpx.get(f"{priced.url}/v1/usage", headers=bearer(access))
        assert response.status_code == 200, response.text
        limits: dict[str, Any] = response.json()["limits"]
        return limits

    deadline = time.monotonic() + SETTLE_SECONDS
    while (limits := usage_limits())["user"]["usd_per_period"]["spent"] == 0:
        assert time.monotonic() < deadline, limits
        time.sleep(0.1)
    user_usd = limits["user"]["usd_per_period"]
    assert (user_usd["limit"], user_usd["period"]) == (2, "day")
    assert user_usd["spent"] == pytest.approx(ACTUAL_USD)
    assert user_usd["remaining"] == pytest.approx(2 - ACTUAL_USD)
    assert limits["tokens"] == {token["id"]: record_of(priced, access, token["id"])["limits"]}
    assert limits["tokens"][token["id"]]["tokens_per_period"]["spent"] == ACTUAL_TOKENS


def test_refusals_are_counted_by_limit_kind(priced: LiveServer, database_url: str) -> None:
    _, access = sign_in(priced, database_url)
    token = new_token(priced, access, {"usd_per_period": 0.0001})
    for _ in range(3):
        assert_refused(chat(priced, token["token"]), "budget_exceeded", "usd_per_period")
    metrics = httpx.get(f"{priced.url}/metrics").text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith('gateway_budget_refusals_total{limit="usd_per_period"}')
    ]
    assert counted and float(counted[0].split()[-1]) >= 3


def chat(gateway: LiveServer, credential: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=chat_body(), headers=bearer(credential))


def within_a_second(gateway: LiveServer, credential: str, status: int) -> httpx.Response:
    """The first answer of `status` to a chat request, asked again and again; fails when a request *sent* more
    than a second and a half after the change still got another (a slow answer to an earlier one does not)."""
    deadline = time.monotonic() + 1.5
    while True:
        sent = time.monotonic()
        response = chat(gateway, credential)
        if response.status_code == status:
            return response
        assert sent < deadline, f"still {response.status_code}, not {status}: {response.text}"
        time.sleep(0.05)


def run_cli(gateway_env: dict[str, str], *args: str) -> str:
    settings = {key: value for key, value in gateway_env.items() if key in ("DATA_DIR", "DATABASE_URL")}
    done = subprocess.run(
        [GATEWAY, *args], env=clean_env(**settings), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
