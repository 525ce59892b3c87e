"""What a client sees when the upstream is down, silent, busy or abandoned, and what the upstream sees of it; the
agents' completions and the Chroma lookups fail as the proxy does (one error map)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory
from tests.fakes.breaking_upstream import BreakingUpstream
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.agents_support import new_user, turn_frames
from tests.serving import LiveServer, free_port

MESSAGES = [{"role": "user", "content": "hi"}]
# Far below what the gateway would take without watching its client (UPSTREAM_READ_TIMEOUT=30, or never on an
# endless stream), with room for a loaded host.
UPSTREAM_SEES_CLOSE_WITHIN = 3.0


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
    assert 0.9 <= elapsed < 10.0  # the timeout given (1 s) applies, not the default 30 s
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
    # `never-answer` never answers: the client leaves before the first byte whenever it gives up; 2 s lets the
    # gateway send the request on first, however busy the host.
    with client_for(gateway, api_token, timeout=2.0) as client, pytest.raises(openai.APITimeoutError):
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


# ----- a full pool -----


def test_a_full_pool_answers_503_upstream_busy_after_the_pool_timeout_and_serves_again_once_free(
    start_gateway: GatewayFactory, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with (
        start_gateway(UPSTREAM_MAX_CONNECTIONS="1", UPSTREAM_POOL_TIMEOUT="0.5") as gateway,
        client_for(gateway, api_token) as client,
    ):
        # The pool's one connection carries this stream until the fake is released.
        stream = client.chat.completions.create(model="gated-stream", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        chunks = iter(stream)
        next(chunks)
        began = time.monotonic()
        busy = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={"authorization": f"Bearer {api_token}"},
            timeout=10,
        )
        waited = time.monotonic() - began
        fake_openai.release()
        rest = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices]
        after = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    assert busy.status_code == 503
    assert busy.json()["error"]["code"] == "upstream_busy"
    assert 0.4 <= waited < 5
    assert rest[-1] == "part4 "  # the stream that held the connection was not disturbed
    assert after.choices[0].message.content


# ----- the agents' completions and the Chroma lookups share the proxy's error map -----


@contextmanager
def silent_listener() -> Iterator[str]:
    """A port whose connections are accepted by the kernel and then never answered (nobody calls accept)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def chroma_get(gateway: LiveServer, api_token: str, path: str) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}/v1/chroma/api/v2/tenants/default_tenant/databases/{path}",
        headers={"authorization": f"Bearer {api_token}"},
        timeout=15,
    )


@pytest.mark.parametrize(
    "path",
    ["default_database/collections", f"mine/collections/{uuid.uuid4()}/count"],
    ids=["default-database-lookup", "ownership-lookup"],
)
def test_a_chroma_lookup_that_times_out_is_504_and_a_refused_one_502(
    start_gateway: GatewayFactory, api_token: str, path: str
) -> None:
    with (
        silent_listener() as silent,
        start_gateway(CHROMA_BASE_URL=silent, CHROMA_API_KEY="k", UPSTREAM_READ_TIMEOUT="1") as gateway,
    ):
        began = time.monotonic()
        timed_out = chroma_get(gateway, api_token, path)
        elapsed = time.monotonic() - began
    with start_gateway(CHROMA_BASE_URL=f"http://127.0.0.1:{free_port()}", CHROMA_API_KEY="k") as gateway:
        refused = chroma_get(gateway, api_token, path)

    # In Chroma's error format (`error` the name its client maps), with the gateway's own code beside it.
    assert (timed_out.status_code, timed_out.json()["code"]) == (504, "upstream_timeout")
    assert timed_out.json()["error"] == "InternalError"
    assert 0.9 <= elapsed < 5
    assert (refused.status_code, refused.json()["code"]) == (502, "upstream_unavailable")


def agent_turn_against(
    start_gateway: GatewayFactory, gateway_env: dict[str, str], provider_url: str, *, model: str = "m"
) -> list[dict[str, Any]]:
    """The frames of one agent chat turn, the agent's provider (workers-ai) at `provider_url`."""
    settings = {
        "WORKERS_AI_BASE_URL": f"{provider_url}/ai/v1",
        "WORKERS_AI_API_KEY": "k",
        "UPSTREAM_READ_TIMEOUT": "1",
    }
    with start_gateway(**settings) as gateway:
        user = new_user(gateway_env, gateway.url)
        agent = user.running_agent(model=model)

        async def turn() -> list[dict[str, Any]]:
            async with user.chat(agent["id"]) as chat:
                return await turn_frames(chat, "hello?")

        return asyncio.run(turn())


def test_an_agent_turn_with_an_unreachable_provider_is_upstream_unavailable_and_a_silent_one_upstream_timeout(
    start_gateway: GatewayFactory, gateway_env: dict[str, str]
) -> None:
    refused = agent_turn_against(start_gateway, gateway_env, f"http://127.0.0.1:{free_port()}")[-1]
    with silent_listener() as silent:
        timed_out = agent_turn_against(start_gateway, gateway_env, silent)[-1]

    assert (refused["type"], refused["code"]) == ("error", "upstream_unavailable")
    assert (timed_out["type"], timed_out["code"]) == ("error", "upstream_timeout")


def test_an_agent_reply_that_breaks_off_is_an_upstream_incomplete_error_frame(
    start_gateway: GatewayFactory, gateway_env: dict[str, str]
) -> None:
    with BreakingUpstream() as provider:
        frames = agent_turn_against(start_gateway, gateway_env, provider.url, model="chunked-rst")

    assert [frame["type"] for frame in frames] == [
        "governance",
        "stream_start",
        *["stream_chunk"] * 2,
        "error",
    ]
    assert frames[-1]["code"] == "upstream_incomplete"
