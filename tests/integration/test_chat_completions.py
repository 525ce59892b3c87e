"""`POST /v1/chat/completions` through the gateway, as the official `openai` client sees it."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_OPENAI_KEY
from tests.fakes.openai_upstream import DELTAS, UPSTREAM_REQUEST_ID, USAGE, FakeOpenAI
from tests.serving import LiveServer

MESSAGES = [{"role": "user", "content": "Say hello"}]


def sync_client(gateway: LiveServer, api_token: str, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_token, max_retries=0, **options)  # type: ignore[arg-type]


def async_client(gateway: LiveServer, api_token: str, **options: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=api_token, max_retries=0, **options)  # type: ignore[arg-type]


def test_sync_client_gets_the_upstream_completion(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with sync_client(gateway, api_token) as client:
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    assert completion.choices[0].message.content == "".join(DELTAS)
    assert completion.usage is not None and completion.usage.total_tokens == USAGE["total_tokens"]
    assert fake_openai.recorder.last.path == "/v1/chat/completions"  # the base URL's /v1 was not doubled


async def test_async_client_gets_the_upstream_completion(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    async with async_client(gateway, api_token) as client:
        completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    assert completion.choices[0].message.content == "".join(DELTAS)
    assert completion.usage is not None and completion.usage.prompt_tokens == USAGE["prompt_tokens"]


def test_sync_stream_arrives_whole_with_the_usage_chunk(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with sync_client(gateway, api_token) as client:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(DELTAS)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].total_tokens == USAGE["total_tokens"]


async def test_async_stream_arrives_whole(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    async with async_client(gateway, api_token) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert text == "".join(DELTAS)


async def test_stream_is_forwarded_before_the_upstream_finishes(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    async with async_client(gateway, api_token) as client:
        stream = await client.chat.completions.create(model="gated-stream", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        first = await anext(aiter(stream))
        first_arrived_at = time.monotonic()
        last_already_sent = "last_chunk_sent" in fake_openai.recorder.moments
        fake_openai.release()  # the rest only now: a gateway that buffered the stream would wait for it
        rest = [c async for c in stream]

    assert first.choices[0].delta.content == "part0 "
    assert not last_already_sent, "the gateway held the stream back until the upstream had sent everything"
    last_sent_at = fake_openai.recorder.moments["last_chunk_sent"]
    assert first_arrived_at < last_sent_at
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices).endswith("part4 ")


def test_streams_force_include_usage_and_keep_other_stream_options(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with sync_client(gateway, api_token) as client:
        list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": False, "include_obfuscation": False},
            )
        )

    assert fake_openai.recorder.last.json()["stream_options"] == {
        "include_usage": True,
        "include_obfuscation": False,
    }


def test_stream_without_stream_options_gets_include_usage(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with sync_client(gateway, api_token) as client:
        list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))  # type: ignore[arg-type]

    assert fake_openai.recorder.last.json()["stream_options"] == {"include_usage": True}


def test_non_streamed_body_reaches_the_upstream_byte_for_byte(
    gateway: LiveServer, fake_openai: FakeOpenAI
) -> None:
    body = b'{"model":  "gpt-4o-mini", "messages": [{"role": "user", "content": "caf\\u00e9"}], "temperature": 0.5}'
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 200
    assert fake_openai.recorder.last.body == body


def test_upstream_key_replaces_the_client_credential(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with sync_client(gateway, api_token) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        body_text = raw.http_response.text

    seen = fake_openai.recorder.last
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"
    assert all(api_token not in value for _, value in seen.raw_headers)
    assert [name for name, _ in seen.raw_headers].count("authorization") == 1
    assert all(UPSTREAM_OPENAI_KEY not in value for value in raw.headers.values())
    assert UPSTREAM_OPENAI_KEY not in body_text


def test_cookies_and_usage_keys_do_not_reach_the_upstream(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={
            "authorization": f"Bearer {api_token}",
            "cookie": "gw_session=secret-session",
            "x-usage-key": "usage-secret",
        },
    )

    assert response.status_code == 200

    seen = fake_openai.recorder.last.headers
    assert "cookie" not in seen and "x-usage-key" not in seen


def test_organization_and_project_headers_are_forwarded(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with sync_client(gateway, api_token, organization="org-team", project="proj_alpha") as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    seen = fake_openai.recorder.last.headers
    assert seen["openai-organization"] == "org-team"
    assert seen["openai-project"] == "proj_alpha"


def test_hop_by_hop_headers_stay_behind(gateway: LiveServer, fake_openai: FakeOpenAI) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={
            "connection": "keep-alive, x-private-hop",
            "x-private-hop": "1",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "proxy-authorization": "Basic c2VjcmV0",
            "x-kept": "yes",
        },
    )

    assert response.status_code == 200
    seen = fake_openai.recorder.last.headers
    for name in ("x-private-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen, name
    assert (
        seen.get("connection", "keep-alive") == "keep-alive"
    )  # the gateway's own connection, not the client's
    assert seen["x-kept"] == "yes"


def test_the_upstream_sees_the_client_headers_and_only_the_proxy_own_additions(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    client_headers = {
        "accept": "application/json",
        "user-agent": "my-app/1.0",
        "x-custom": "kept",
        "expect": "100-continue",
        "authorization": f"Bearer {api_token}",
    }
    httpx.post(
        f"{gateway.url}/v1/chat/completions", content=b'{"model": "gpt-4o-mini"}', headers=client_headers
    )

    seen = fake_openai.recorder.last
    added_by_httpx = {"accept-encoding", "content-length"}
    added_by_the_gateway = {"host", "authorization", "x-forwarded-for", "x-forwarded-proto", "x-request-id"}
    expected = {"accept", "user-agent", "x-custom"} | added_by_httpx | added_by_the_gateway
    assert set(seen.headers) == expected  # no content-type, user-agent or accept of the proxy's own
    assert seen.headers["user-agent"] == "my-app/1.0"


def test_forwarded_headers_name_the_client(gateway: LiveServer, fake_openai: FakeOpenAI) -> None:
    httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"x-forwarded-for": "203.0.113.9"},
    )

    seen = fake_openai.recorder.last.headers
    # No TRUSTED_PROXIES: the client's own chain is not believed (tests/integration/test_forwarding_headers.py).
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"


def test_response_carries_the_gateway_request_id_and_no_upstream_cookies(
    gateway: LiveServer, fake_openai: FakeOpenAI
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"x-request-id": "client-chosen-id"},
    )

    assert response.headers["x-request-id"] == "client-chosen-id"
    assert response.headers["x-upstream-request-id"] == UPSTREAM_REQUEST_ID
    assert "set-cookie" not in response.headers
    assert fake_openai.recorder.last.headers["x-request-id"] == "client-chosen-id"


def test_upstream_errors_pass_through_unchanged(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with sync_client(gateway, api_token) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="rate-limited", messages=MESSAGES)  # type: ignore[arg-type]

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_with_allow(gateway: LiveServer, method: str) -> None:
    response = httpx.request(method, f"{gateway.url}/v1/chat/completions")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("body", [b"", b"{not json", b'{"model": "x"', b"\xff\xfe"])
def test_bad_json_is_400_invalid_json(gateway: LiveServer, fake_openai: FakeOpenAI, body: bytes) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert fake_openai.recorder.requests == []


def test_json_that_is_not_an_object_is_400(gateway: LiveServer, fake_openai: FakeOpenAI) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"[1, 2]")

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_stream_options_that_are_not_an_object_are_400(gateway: LiveServer, fake_openai: FakeOpenAI) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES, "stream": True, "stream_options": "yes"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream_options"


def test_body_over_the_limit_is_413(start_gateway, fake_openai: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    with start_gateway(MAX_REQUEST_BYTES="2000") as gateway:
        declared = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x" * 3000}]},
        )
        streamed = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            content=iter([b'{"model": "m", "pad": "', b"x" * 1500, b"x" * 1500, b'"}']),
        )
        within = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES})

    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
    assert within.status_code == 200
    assert len(fake_openai.recorder.requests) == 1


def test_error_bodies_never_leak_a_traceback(gateway: LiveServer) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{")

    assert "Traceback" not in response.text
    assert set(json.loads(response.text)["error"]) == {"message", "type", "code", "param"}
