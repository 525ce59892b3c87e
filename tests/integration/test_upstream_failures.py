"""What a client sees when the upstream is down, silent or abandoned, and what the upstream sees of it."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory
from tests.fakes.openai_upstream import FakeOpenAI
from tests.serving import LiveServer, free_port

MESSAGES = [{"role": "user", "content": "hi"}]
UPSTREAM_SEES_CLOSE_WITHIN = 1.0


def client_for(gateway: LiveServer, api_token: str, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_token, max_retries=0, **options)  # type: ignore[arg-type]


def test_refused_connection_is_502_upstream_unavailable(
    start_gateway: GatewayFactory, api_token: str
) -> None:
    with (
        start_gateway(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}") as gateway,
        client_for(gateway, api_token) as client,
        pytest.raises(openai.APIStatusError) as caught,
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["code"] == "upstream_unavailable"
    assert caught.value.response.headers["x-request-id"]


def test_upstream_that_accepts_but_never_answers_is_504_within_the_timeout(
    start_gateway: GatewayFactory, fake_openai: FakeOpenAI, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    with start_gateway(UPSTREAM_READ_TIMEOUT="1") as gateway:
        began = time.monotonic()
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            timeout=10,
            json={"model": "never-answer", "messages": MESSAGES},
        )
        elapsed = time.monotonic() - began

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert 0.9 <= elapsed < 3.0
    # The gateway gave up on the upstream connection too.
    assert fake_openai.recorder.wait_for("disconnected", timeout=UPSTREAM_SEES_CLOSE_WITHIN) is not None


def test_upstream_that_hangs_up_without_answering_is_502(start_gateway: GatewayFactory) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        async def accept_and_hang_up() -> None:
            loop = asyncio.get_running_loop()
            listener.setblocking(False)
            connection, _ = await loop.sock_accept(listener)
            await loop.sock_recv(connection, 65536)
            connection.close()

        with start_gateway(OPENAI_BASE_URL=f"http://127.0.0.1:{port}") as gateway:

            async def scenario() -> httpx.Response:
                hang_up = asyncio.create_task(accept_and_hang_up())
                async with httpx.AsyncClient() as client:
                    response = await client.post(
                        f"{gateway.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES}
                    )
                await hang_up
                return response

            response = asyncio.run(scenario())

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"


def test_client_leaving_mid_stream_closes_the_upstream_at_once(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with client_for(gateway, api_token) as client:
        stream = client.chat.completions.create(model="endless-stream", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        iterator = iter(stream)
        next(iterator)
        next(iterator)
        left_at = time.monotonic()
        stream.close()

    disconnected_at = fake_openai.recorder.wait_for("disconnected", timeout=5)
    assert disconnected_at is not None, "the upstream never saw the gateway hang up"
    assert disconnected_at - left_at < UPSTREAM_SEES_CLOSE_WITHIN


def test_client_leaving_before_the_first_byte_closes_the_upstream_at_once(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with client_for(gateway, api_token, timeout=0.5) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="never-answer", messages=MESSAGES)  # type: ignore[arg-type]
    left_at = time.monotonic()

    disconnected_at = fake_openai.recorder.wait_for("disconnected", timeout=5)
    assert disconnected_at is not None, "the upstream never saw the gateway hang up"
    assert disconnected_at - left_at < UPSTREAM_SEES_CLOSE_WITHIN


def test_gateway_keeps_serving_after_abandoned_requests(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    for _ in range(3):
        with client_for(gateway, api_token, timeout=0.2) as client, pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="never-answer", messages=MESSAGES)  # type: ignore[arg-type]

    with client_for(gateway, api_token) as client:
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
