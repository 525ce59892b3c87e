"""An upstream answer that breaks off after it started never reaches the client as a finished one.

Every way a body can break off (FIN, RST, silence past UPSTREAM_READ_TIMEOUT) under every framing (chunked,
Content-Length, delimited by the connection's end), through the official `openai` SDK: the SDK raises rather than
returning a finished completion, and the request's usage row (read from the database, on SQLite and Postgres) is
an error, 502 `upstream_incomplete`, with the tokens seen before the break.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import select

from gateway.db.engine import Database
from gateway.db.models import UsageEvent
from gateway.settings import Settings
from tests.conftest import GatewayFactory
from tests.fakes.breaking_upstream import DELTAS, BreakingUpstream
from tests.fakes.openai_upstream import USAGE
from tests.serving import LiveServer

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
READ_TIMEOUT = "1"
ROW_WAIT_SECONDS = 10.0
# What the client may see when the gateway aborts its connection mid-body.
BROKEN_OFF = (openai.APIError, httpx.TransportError)

# framing x end. A body delimited by the connection's end that ends with a FIN is complete by definition (HTTP/1.1
# cannot tell it from a break), so that pair is not here.
BREAKS = [
    "chunked-fin",
    "chunked-rst",
    "chunked-silent",
    "length-fin",
    "length-rst",
    "length-silent",
    "close-rst",
    "close-silent",
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[BreakingUpstream]:
    with BreakingUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def breaking_gateway(start_gateway: GatewayFactory, upstream: BreakingUpstream) -> Iterator[LiveServer]:
    with start_gateway(OPENAI_BASE_URL=upstream.url, UPSTREAM_READ_TIMEOUT=READ_TIMEOUT) as server:
        yield server


def client_for(gateway: LiveServer, api_token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_token, max_retries=0, timeout=20)


def usage_row(gateway_env: dict[str, str], request_id: str) -> UsageEvent:
    """The request's one usage row, once the recorder has written it."""

    async def read() -> list[UsageEvent]:
        database = Database(Settings.from_env(gateway_env, env_file=None).database_url)
        database.open()
        try:
            async with database.session() as session:
                query = select(UsageEvent).where(UsageEvent.request_id == request_id)
                return list((await session.scalars(query)).all())
        finally:
            await database.close()

    deadline = time.monotonic() + ROW_WAIT_SECONDS
    while not (rows := asyncio.run(read())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(rows) == 1, f"expected one usage row for {request_id}, got {len(rows)}"
    return rows[0]


def new_request_id() -> str:
    return f"incomplete-{uuid.uuid4().hex}"


def assert_incomplete(row: UsageEvent, *, tokens: bool) -> None:
    assert (row.status, row.error, row.is_error) == (502, "upstream_incomplete", True)
    expected = (
        (USAGE["prompt_tokens"], USAGE["completion_tokens"], USAGE["total_tokens"]) if tokens else (0, 0, 0)
    )
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == expected
    assert row.is_stream is True


@pytest.mark.parametrize("model", BREAKS)
def test_a_stream_that_breaks_off_raises_in_the_sdk_and_its_row_is_an_error_with_the_tokens_seen(
    breaking_gateway: LiveServer, gateway_env: dict[str, str], api_token: str, model: str
) -> None:
    request_id = new_request_id()
    contents: list[str] = []
    with client_for(breaking_gateway, api_token) as client, pytest.raises(BROKEN_OFF):
        stream = client.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, extra_headers={"x-request-id": request_id}
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                contents.append(chunk.choices[0].delta.content)

    assert contents == DELTAS  # what came before the break reached the client, as it came
    assert_incomplete(usage_row(gateway_env, request_id), tokens=True)


def test_a_stream_without_its_usage_chunk_breaking_off_is_an_error_without_tokens(
    breaking_gateway: LiveServer, gateway_env: dict[str, str], api_token: str
) -> None:
    request_id = new_request_id()
    with client_for(breaking_gateway, api_token) as client, pytest.raises(BROKEN_OFF):
        stream = client.chat.completions.create(
            model="chunked-fin-nousage",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-request-id": request_id},
        )
        for _ in stream:
            pass

    assert_incomplete(usage_row(gateway_env, request_id), tokens=False)


async def test_the_async_sdk_raises_too(
    breaking_gateway: LiveServer, gateway_env: dict[str, str], api_token: str
) -> None:
    request_id = new_request_id()
    client = openai.AsyncOpenAI(base_url=f"{breaking_gateway.url}/v1", api_key=api_token, max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="close-silent", messages=MESSAGES, stream=True, extra_headers={"x-request-id": request_id}
        )
        with pytest.raises(BROKEN_OFF):
            async for _ in stream:
                pass

    row = await asyncio.to_thread(usage_row, gateway_env, request_id)
    assert_incomplete(row, tokens=True)


@pytest.mark.parametrize("model", ["length-fin-json", "chunked-rst-json", "close-silent-json"])
def test_a_completion_cut_in_the_middle_raises_in_the_sdk_and_its_row_is_an_error(
    breaking_gateway: LiveServer, gateway_env: dict[str, str], api_token: str, model: str
) -> None:
    request_id = new_request_id()
    with client_for(breaking_gateway, api_token) as client, pytest.raises(BROKEN_OFF):
        client.chat.completions.create(
            model=model, messages=MESSAGES, extra_headers={"x-request-id": request_id}
        )

    row = usage_row(gateway_env, request_id)
    assert (row.status, row.error, row.is_error, row.is_stream) == (502, "upstream_incomplete", True, False)


def test_a_silent_upstream_is_hung_up_on_after_the_read_timeout(
    breaking_gateway: LiveServer, upstream: BreakingUpstream, api_token: str
) -> None:
    before = upstream.closed_by_gateway
    began = time.monotonic()
    with client_for(breaking_gateway, api_token) as client, pytest.raises(BROKEN_OFF):
        for _ in client.chat.completions.create(model="chunked-silent", messages=MESSAGES, stream=True):
            pass

    assert time.monotonic() - began < 10  # the read timeout is 1 s; the upstream holds on for 15
    deadline = time.monotonic() + 5
    while upstream.closed_by_gateway == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.closed_by_gateway == before + 1


def test_a_chroma_answer_that_breaks_off_after_it_started_aborts_the_client_connection(
    start_gateway: GatewayFactory, upstream: BreakingUpstream, api_token: str
) -> None:
    """Chroma's routes take Starlette's own error layers (their paths have parameters): those too let the
    connection be aborted rather than ending the message cleanly."""
    upstream.without_body = "chunked-rst-json"
    with (
        start_gateway(CHROMA_BASE_URL=upstream.url, CHROMA_API_KEY="k") as gateway,
        pytest.raises(BROKEN_OFF),
    ):
        # Passed through as it comes (no lookup, no rewrite): the answer starts before it breaks off.
        httpx.get(
            f"{gateway.url}/v1/chroma/api/v2/tenants/default_tenant/databases/mine/collections_count",
            headers={"authorization": f"Bearer {api_token}"},
            timeout=10,
        )
