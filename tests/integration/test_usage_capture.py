"""Usage capture over real HTTP: every proxied request, through the official `openai` client, becomes one row.

Rows are read straight from the database, picked out by the unique `X-Request-ID` each request sends (or by a
dataset of the test's own), waiting for the recorder's next flush.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import ColumnElement, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import gateway.usage
from gateway.db.engine import Database
from gateway.db.models import UsageEvent
from gateway.settings import Settings
from tests.conftest import GatewayFactory, add_user
from tests.fakes.openai_upstream import USAGE, FakeOpenAI, chunk, completion
from tests.serving import LiveServer, free_port

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
PRICES = json.loads((Path(gateway.usage.__file__).parent / "prices.json").read_text())
WAIT_SECONDS = 5.0
SETTLE_SECONDS = 1.2  # more than two recorder flushes: long enough for a stray extra row to show up
INPUT, OUTPUT, TOTAL = USAGE["prompt_tokens"], USAGE["completion_tokens"], USAGE["total_tokens"]


# ----- helpers -----


def database_url(gateway_env: dict[str, str]) -> str:
    return Settings.from_env(gateway_env, env_file=None).database_url


def new_request_id() -> str:
    return f"usage-capture-{uuid.uuid4().hex}"


async def read_events(url: str, *where: ColumnElement[bool]) -> list[UsageEvent]:
    database = Database(url)
    database.open()
    try:
        async with database.session() as session:
            return list((await session.scalars(select(UsageEvent).where(*where))).all())
    finally:
        await database.close()


async def await_events(
    url: str, *where: ColumnElement[bool], count: int = 1, settle: bool = False
) -> list[UsageEvent]:
    """The matching rows once there are at least `count` (or whatever is there after WAIT_SECONDS)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        rows = await read_events(url, *where)
        if len(rows) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    if settle:
        await asyncio.sleep(SETTLE_SECONDS)
        rows = await read_events(url, *where)
    return rows


def events(url: str, *where: ColumnElement[bool], count: int = 1, settle: bool = False) -> list[UsageEvent]:
    return asyncio.run(await_events(url, *where, count=count, settle=settle))


def one_event(url: str, request_id: str) -> UsageEvent:
    rows = events(url, UsageEvent.request_id == request_id, settle=True)
    assert len(rows) == 1, f"expected one row for {request_id}, got {len(rows)}"
    return rows[0]


async def await_one_event(url: str, request_id: str) -> UsageEvent:
    rows = await await_events(url, UsageEvent.request_id == request_id, settle=True)
    assert len(rows) == 1, f"expected one row for {request_id}, got {len(rows)}"
    return rows[0]


def shipped_cost(model: str, tokens: int, side: str) -> float:
    """USD for `tokens` at the shipped per-million price, by hand: exact decimals, rounded to 1e-9."""
    per_million = Decimal(str(PRICES["models"][model][side]))
    return float((per_million * tokens / Decimal(1_000_000)).quantize(Decimal("1e-9")))


def sync_client(url: str, api_key: str, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, **options)


def async_client(url: str, api_key: str, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, **options)


def rid(request_id: str) -> dict[str, str]:
    return {"x-request-id": request_id}


def assert_chat_tokens_and_costs(row: UsageEvent, model: str = "gpt-4o-mini") -> None:
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (INPUT, OUTPUT, TOTAL)
    assert row.input_cost_usd == pytest.approx(shipped_cost(model, INPUT, "input"), abs=1e-12)
    assert row.output_cost_usd == pytest.approx(shipped_cost(model, OUTPUT, "output"), abs=1e-12)
    assert row.ocr_pages == 0 and row.ocr_cost_usd == 0


@pytest.fixture(scope="module")
def owner(gateway: LiveServer, gateway_env: dict[str, str]) -> dict[str, str]:
    """A user of the test's own with a chat API token: {user_id, token_id, token, jwt}."""
    login = {"email": f"usage-{uuid.uuid4().hex}@example.com", "password": "a long enough test password"}
    user_id = asyncio.run(
        add_user(database_url(gateway_env), email=login["email"], password=login["password"])
    )
    response = httpx.post(f"{gateway.url}/api/v1/auth/login", json=login)
    assert response.status_code == 200, response.text
    jwt = response.json()["access_token"]
    response = httpx.post(
        f"{gateway.url}/v1/api-tokens", json={"name": "usage"}, headers={"authorization": f"Bearer {jwt}"}
    )
    assert response.status_code == 201, response.text
    return {
        "user_id": user_id,
        "token_id": response.json()["id"],
        "token": response.json()["token"],
        "jwt": jwt,
    }


# ----- chat completions -----


def test_sync_completion_is_one_row_with_tokens_costs_and_parameters(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with sync_client(gateway.url, owner["token"]) as client:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_completion_tokens=64,
            temperature=0.25,
            top_p=0.5,
            extra_headers=rid(request_id),
        )

    row = one_event(database_url(gateway_env), request_id)
    assert (row.request_type, row.provider, row.model) == ("chat", "openai", "gpt-4o-mini")
    assert (row.method, row.path, row.status) == ("POST", "/v1/chat/completions", 200)
    assert row.is_error is False and row.is_stream is False and row.error is None
    assert row.dataset == "ai_worker_requests"
    assert_chat_tokens_and_costs(row)
    # gpt-4o-mini ships at $0.15 / $0.60 per million tokens
    assert row.input_cost_usd == pytest.approx(0.00000165, abs=1e-12)
    assert row.output_cost_usd == pytest.approx(0.0000042, abs=1e-12)
    assert row.latency_ms > 0
    assert row.ttfb_ms is not None and 0 < row.ttfb_ms <= row.latency_ms
    assert (row.max_tokens, row.temperature, row.top_p) == (64, 0.25, 0.5)
    assert (row.user_id, row.token_id, row.agent_id) == (owner["user_id"], owner["token_id"], None)
    assert row.created_at.tzinfo is not None


async def test_async_stream_is_one_row_with_the_usage_chunk_tokens(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    async with async_client(gateway.url, owner["token"]) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            max_tokens=32,
            temperature=1,
            top_p=0.75,
            extra_headers=rid(request_id),
        )
        chunks = [c async for c in stream]
    assert any(c.usage is not None for c in chunks)

    row = await await_one_event(database_url(gateway_env), request_id)
    assert (row.request_type, row.provider, row.model, row.status) == ("chat", "openai", "gpt-4o-mini", 200)
    assert row.is_stream is True and row.is_error is False
    assert_chat_tokens_and_costs(row)
    assert row.latency_ms > 0
    assert row.ttfb_ms is not None and 0 < row.ttfb_ms <= row.latency_ms
    assert (row.max_tokens, row.temperature, row.top_p) == (32, 1.0, 0.75)
    assert (row.user_id, row.token_id) == (owner["user_id"], owner["token_id"])


def test_sync_stream_is_one_row(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with sync_client(gateway.url, owner["token"]) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers=rid(request_id),
        )
        list(stream)

    row = one_event(database_url(gateway_env), request_id)
    assert row.is_stream is True and row.status == 200
    assert_chat_tokens_and_costs(row)
    assert (row.max_tokens, row.temperature, row.top_p) == (None, None, None)


async def test_async_completion_is_one_row(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    async with async_client(gateway.url, owner["token"]) as client:
        await client.chat.completions.create(
            model="gpt-4.1",
            messages=MESSAGES,
            extra_headers=rid(request_id),
        )

    row = await await_one_event(database_url(gateway_env), request_id)
    assert (row.model, row.status, row.is_stream) == ("gpt-4.1", 200, False)
    assert_chat_tokens_and_costs(row, model="gpt-4.1")
    # gpt-4.1 ships at $2 / $8 per million tokens
    assert row.input_cost_usd + row.output_cost_usd == pytest.approx((11 * 2 + 7 * 8) / 1e6, abs=1e-12)


def test_max_completion_tokens_wins_over_max_tokens(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with sync_client(gateway.url, owner["token"]) as client:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_completion_tokens=100,
            max_tokens=50,
            extra_headers=rid(request_id),
        )

    assert one_event(database_url(gateway_env), request_id).max_tokens == 100


def test_anonymous_request_has_no_user_or_token(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    request_id = new_request_id()
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers=rid(request_id),
    )
    assert response.status_code == 200

    row = one_event(database_url(gateway_env), request_id)
    assert (row.user_id, row.token_id, row.agent_id) == (None, None, None)
    assert row.status == 200
    assert_chat_tokens_and_costs(row)


def test_platform_jwt_request_is_attributed_to_its_user(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with sync_client(gateway.url, owner["jwt"]) as client:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers=rid(request_id),
        )

    row = one_event(database_url(gateway_env), request_id)
    assert (row.user_id, row.token_id) == (owner["user_id"], None)


# ----- many at once -----


def test_concurrent_requests_give_exactly_one_row_each(
    start_gateway: GatewayFactory, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    requests = 200
    dataset = f"t_{uuid.uuid4().hex}"

    async def one(client: openai.AsyncOpenAI, index: int) -> None:
        if index % 2:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
            )
            async for _ in stream:
                pass
        else:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    async def load(url: str) -> None:
        async with async_client(url, owner["token"]) as client:
            await asyncio.gather(*(one(client, index) for index in range(requests)))

    with start_gateway(ANALYTICS_DATASET=dataset) as server:
        asyncio.run(load(server.url))
        rows = events(database_url(gateway_env), UsageEvent.dataset == dataset, count=requests, settle=True)

    assert len(rows) == requests
    assert len({row.request_id for row in rows}) == requests
    assert all(row.status == 200 and not row.is_error for row in rows)
    assert sum(row.is_stream for row in rows) == requests // 2
    assert sum(row.input_tokens for row in rows) == requests * INPUT
    assert sum(row.output_tokens for row in rows) == requests * OUTPUT
    assert sum(row.total_tokens for row in rows) == requests * TOTAL


# ----- cut short -----


def test_client_leaving_mid_stream_is_recorded_as_499(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with sync_client(gateway.url, owner["token"]) as client:
        stream = client.chat.completions.create(
            model="endless-stream",
            messages=MESSAGES,
            stream=True,
            extra_headers=rid(request_id),
        )
        iterator = iter(stream)
        next(iterator)
        next(iterator)
        stream.close()

    row = one_event(database_url(gateway_env), request_id)
    assert (row.status, row.is_error, row.is_stream) == (499, True, True)
    assert (row.model, row.provider) == ("endless-stream", "openai")
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (0, 0, 0)
    assert row.input_cost_usd == row.output_cost_usd == 0
    assert row.ttfb_ms is not None and row.latency_ms >= row.ttfb_ms
    assert (row.user_id, row.token_id) == (owner["user_id"], owner["token_id"])


async def test_abandoned_slow_stream_is_499_and_a_finished_one_has_its_usage(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    abandoned, finished = new_request_id(), new_request_id()
    async with async_client(gateway.url, owner["token"]) as client:
        stream = await client.chat.completions.create(
            model="slow-stream",
            messages=MESSAGES,
            stream=True,
            extra_headers=rid(abandoned),
        )
        await anext(aiter(stream))
        await stream.close()
        stream = await client.chat.completions.create(
            model="slow-stream",
            messages=MESSAGES,
            stream=True,
            extra_headers=rid(finished),
        )
        assert [c async for c in stream]

    url = database_url(gateway_env)
    cut = await await_one_event(url, abandoned)
    assert (cut.status, cut.is_error, cut.total_tokens) == (499, True, 0)
    whole = await await_one_event(url, finished)
    assert (whole.status, whole.is_error) == (200, False)
    assert (whole.input_tokens, whole.output_tokens, whole.total_tokens) == (INPUT, OUTPUT, TOTAL)
    assert whole.input_cost_usd == whole.output_cost_usd == 0  # an unknown model counts at zero cost
    assert whole.latency_ms >= 1000  # five deltas 0.3 s apart went by before the row was made


def test_client_leaving_before_the_first_byte_is_499_without_ttfb(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with (
        sync_client(gateway.url, owner["token"], timeout=0.5) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(
            model="never-answer",
            messages=MESSAGES,
            extra_headers=rid(request_id),
        )

    row = one_event(database_url(gateway_env), request_id)
    assert (row.status, row.is_error, row.ttfb_ms, row.total_tokens) == (499, True, None, 0)


# ----- errors -----


def test_upstream_error_is_recorded_with_its_status(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with sync_client(gateway.url, owner["token"]) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="rate-limited",
            messages=MESSAGES,
            extra_headers=rid(request_id),
        )

    row = one_event(database_url(gateway_env), request_id)
    assert (row.status, row.is_error, row.model, row.provider) == (429, True, "rate-limited", "openai")
    assert row.error is None  # the upstream's own answer, passed through: not an error of the gateway's
    assert (row.total_tokens, row.input_cost_usd, row.output_cost_usd) == (0, 0, 0)
    assert (row.user_id, row.token_id) == (owner["user_id"], owner["token_id"])


def test_refused_upstream_is_recorded_as_502(
    start_gateway: GatewayFactory, gateway_env: dict[str, str], owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with start_gateway(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1") as server:
        with (
            sync_client(server.url, owner["token"]) as client,
            pytest.raises(openai.InternalServerError) as raised,
        ):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                extra_headers=rid(request_id),
            )
        assert raised.value.status_code == 502
        row = one_event(database_url(gateway_env), request_id)

    assert (row.status, row.is_error, row.model, row.provider) == (502, True, "gpt-4o-mini", "openai")
    assert row.error == "upstream_unavailable"
    assert row.is_stream is True
    assert (row.total_tokens, row.ttfb_ms) == (0, None)


def test_invalid_json_is_recorded_as_400(gateway: LiveServer, gateway_env: dict[str, str]) -> None:
    request_id = new_request_id()
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": [',
        headers={**rid(request_id), "content-type": "application/json"},
    )
    assert response.status_code == 400

    row = one_event(database_url(gateway_env), request_id)
    assert (row.status, row.is_error, row.request_type, row.provider) == (400, True, "chat", "openai")
    assert row.error == response.json()["error"]["code"]
    assert (row.model, row.total_tokens, row.is_stream) == (None, 0, False)


def test_a_body_over_the_limit_is_recorded_as_413_with_its_parameters_unread(
    start_gateway: GatewayFactory, gateway_env: dict[str, str]
) -> None:
    request_id = new_request_id()
    with start_gateway(MAX_REQUEST_BYTES="2000") as gateway:
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            content=iter([b'{"model": "gpt-4o-mini", "pad": "', b"x" * 1500, b"x" * 1500, b'"}']),
            headers={**rid(request_id), "content-type": "application/json"},
        )
        row = one_event(database_url(gateway_env), request_id)

    assert response.status_code == 413
    assert (row.status, row.error, row.request_type) == (413, "payload_too_large", "chat")
    assert (row.model, row.is_stream) == (None, False)


# ----- OCR -----


def test_ocr_is_recorded_with_its_pages_and_page_cost(
    gateway: LiveServer, gateway_env: dict[str, str], fake_mistral: object, owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    response = httpx.post(
        f"{gateway.url}/v1/ocr",
        json={"url": "https://example.com/scan.pdf"},
        headers={**rid(request_id), "authorization": f"Bearer {owner['token']}"},
    )
    assert response.status_code == 200

    row = one_event(database_url(gateway_env), request_id)
    assert (row.request_type, row.provider, row.path, row.status) == ("ocr", "mistral", "/v1/ocr", 200)
    assert row.model == "mistral-ocr-latest"
    assert row.ocr_pages == 2
    page_price = Decimal(str(PRICES["ocr"]["per_page"]))
    assert row.ocr_cost_usd == pytest.approx(float(2 * page_price), abs=1e-12)
    assert row.ocr_cost_usd == pytest.approx(0.002, abs=1e-12)
    assert (row.total_tokens, row.input_cost_usd, row.output_cost_usd) == (0, 0, 0)
    assert (row.user_id, row.token_id) == (owner["user_id"], owner["token_id"])


# ----- an upstream of the test's own: compressed bodies, usage before a cut -----


def _gzip_pieces(events_: list[bytes]) -> Iterator[bytes]:
    """One gzip stream, flushed after each event, then cut at odd places so events straddle reads."""
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    data = b"".join(compressor.compress(e) + compressor.flush(zlib.Z_SYNC_FLUSH) for e in events_)
    data += compressor.flush()
    step = 7
    for start in range(0, len(data), step):
        yield data[start : start + step]


def own_upstream() -> Starlette:
    """An OpenAI-like upstream that answers gzip-compressed (an SSE stream or a JSON completion), except for
    the model `usage-then-endless` (a plain stream whose usage chunk comes first, then deltas until the end)
    and `huge-usage` (a completion reporting more tokens than a usage column holds)."""

    async def completions(request: Request) -> Response:
        body = await request.json()
        model = body["model"]
        if model == "usage-then-endless":

            async def endless() -> AsyncIterator[bytes]:
                yield chunk(model, None, usage=USAGE)
                while True:
                    yield chunk(model, "tick")
                    await asyncio.sleep(0.05)

            return StreamingResponse(endless(), media_type="text/event-stream")
        if model == "huge-usage":
            huge = {"prompt_tokens": 2**40, "completion_tokens": 2**40, "total_tokens": 2**41}
            return JSONResponse({**completion(model), "usage": huge})
        if not body.get("stream"):
            return Response(
                gzip.compress(json.dumps(completion(model)).encode()),
                media_type="application/json",
                headers={"content-encoding": "gzip"},
            )
        sse = [chunk(model, "Hel"), chunk(model, "lo"), chunk(model, None, usage=USAGE), b"data: [DONE]\n\n"]

        async def pieces() -> AsyncIterator[bytes]:
            for piece in _gzip_pieces(sse):
                yield piece
                await asyncio.sleep(0)

        return StreamingResponse(
            pieces(), media_type="text/event-stream", headers={"content-encoding": "gzip"}
        )

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


@pytest.fixture(scope="module")
def own_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    with (
        LiveServer(own_upstream()) as upstream,
        start_gateway(OPENAI_BASE_URL=f"{upstream.url}/v1") as server,
    ):
        yield server


def test_gzip_compressed_stream_still_yields_its_tokens(
    own_gateway: LiveServer, gateway_env: dict[str, str], owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with sync_client(own_gateway.url, owner["token"]) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers=rid(request_id),
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"

    row = one_event(database_url(gateway_env), request_id)
    assert (row.status, row.is_stream) == (200, True)
    assert_chat_tokens_and_costs(row)


def test_gzip_compressed_json_still_yields_its_tokens(
    own_gateway: LiveServer, gateway_env: dict[str, str], owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with sync_client(own_gateway.url, owner["token"]) as client:
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers=rid(request_id),
        )
    assert answer.usage is not None and answer.usage.total_tokens == TOTAL

    row = one_event(database_url(gateway_env), request_id)
    assert (row.status, row.is_stream) == (200, False)
    assert_chat_tokens_and_costs(row)


def test_client_leaving_after_the_usage_chunk_keeps_the_tokens_seen(
    own_gateway: LiveServer, gateway_env: dict[str, str], owner: dict[str, str]
) -> None:
    request_id = new_request_id()
    with sync_client(own_gateway.url, owner["token"]) as client:
        stream = client.chat.completions.create(
            model="usage-then-endless",
            messages=MESSAGES,
            stream=True,
            extra_headers=rid(request_id),
        )
        iterator = iter(stream)
        assert next(iterator).usage is not None
        next(iterator)
        stream.close()

    row = one_event(database_url(gateway_env), request_id)
    assert (row.status, row.is_error) == (499, True)
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (INPUT, OUTPUT, TOTAL)


@pytest.mark.parametrize("max_tokens", [2**31, 2**63 + 5])
def test_an_out_of_range_max_tokens_neither_loses_its_row_nor_later_ones(
    gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI, max_tokens: int
) -> None:
    odd, after = new_request_id(), new_request_id()
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": max_tokens}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=rid(odd)).status_code == 200
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=rid(after)).status_code == 200

    url = database_url(gateway_env)
    assert one_event(url, after).status == 200
    row = one_event(url, odd)
    assert (row.status, row.max_tokens) == (200, None)
    assert_chat_tokens_and_costs(row)


def test_counts_too_large_for_their_columns_are_capped_and_lose_no_row(
    own_gateway: LiveServer, gateway_env: dict[str, str], owner: dict[str, str]
) -> None:
    huge, after = new_request_id(), new_request_id()
    with sync_client(own_gateway.url, owner["token"]) as client:
        client.chat.completions.create(model="huge-usage", messages=MESSAGES, extra_headers=rid(huge))
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=rid(after))

    url = database_url(gateway_env)
    assert_chat_tokens_and_costs(one_event(url, after))
    row = one_event(url, huge)
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (2**31 - 1, 2**31 - 1, 2**31 - 1)


def test_a_pricing_file_replaces_the_shipped_prices(
    start_gateway: GatewayFactory, gateway_env: dict[str, str], tmp_path: Path, api_token: str
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {
                "currency": "USD",
                "ocr": {"per_page": 0.5},
                "models": {"house-model": {"input": 1000, "output": 2000}},
            }
        )
    )
    request_id = new_request_id()
    with start_gateway(PRICING_FILE=str(prices)) as gateway, sync_client(gateway.url, api_token) as client:
        client.chat.completions.create(model="house-model", messages=MESSAGES, extra_headers=rid(request_id))

    row = one_event(database_url(gateway_env), request_id)
    assert row.input_cost_usd == pytest.approx(USAGE["prompt_tokens"] * 1000 / 1e6)
    assert row.output_cost_usd == pytest.approx(USAGE["completion_tokens"] * 2000 / 1e6)
