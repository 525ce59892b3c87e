"""What an upstream is told of the client's way in, and which of an upstream's origin policies reach the client.

The tests' client connects from 127.0.0.1: with `TRUSTED_PROXIES=127.0.0.1` it plays the proxy in front of the
gateway, otherwise it is any client on the internet writing whatever forwarding headers it likes.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import GatewayFactory
from tests.fakes.mistral_ocr import FakeMistral
from tests.fakes.openai_upstream import UPSTREAM_REQUEST_ID, FakeOpenAI, completion
from tests.fakes.recording import Recorder
from tests.serving import LiveServer

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}
SPOOFED = [
    ("forwarded", "for=198.51.100.1;proto=https;host=admin.internal"),
    ("x-real-ip", "198.51.100.1"),
    ("x-forwarded-for", "198.51.100.1"),
    ("x-forwarded-for", "198.51.100.2"),
    ("x-forwarded-host", "admin.internal"),
    ("x-forwarded-port", "8443"),
    ("x-forwarded-prefix", "/internal"),
    ("x-forwarded-server", "trusted-edge"),
    ("x-forwarded-proto", "https"),
    ("X-Forwarded-Ssl", "on"),
]
# Only these two forwarding headers ever reach an upstream, both written by the gateway.
GATEWAY_FORWARDING = {"x-forwarded-for", "x-forwarded-proto"}


def forwarding_seen(headers: dict[str, str]) -> set[str]:
    return {name for name in headers if name.startswith("x-forwarded-") or name in ("forwarded", "x-real-ip")}


def sdk(gateway: LiveServer, api_token: str, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_token, max_retries=0, **options)  # type: ignore[arg-type]


# What api.openai.com's edge answers with besides the completion: a cookie, HTTP/3 advertised, HTTPS pinned.
UPSTREAM_ORIGIN_HEADERS = {
    "set-cookie": "__cf_bm=tracker; Path=/; HttpOnly",
    "alt-svc": 'h3=":443"; ma=86400',
    "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    "x-request-id": UPSTREAM_REQUEST_ID,
    "openai-processing-ms": "12",
}


class UpstreamWithOriginPolicies:
    """An OpenAI-like upstream that answers every completion with `UPSTREAM_ORIGIN_HEADERS`."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat_completions, methods=["POST"])])

    async def chat_completions(self, request: Request) -> JSONResponse:
        body = (await self.recorder.record(request)).json()
        return JSONResponse(completion(body["model"]), headers=UPSTREAM_ORIGIN_HEADERS)


@pytest.fixture(scope="module")
def trusting_gateway(start_gateway: GatewayFactory) -> Iterator[LiveServer]:
    with start_gateway(TRUSTED_PROXIES="127.0.0.1") as gateway:
        yield gateway


def test_an_untrusted_client_forwarding_headers_never_reach_the_upstream(
    gateway: LiveServer, fake_openai: FakeOpenAI
) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=SPOOFED)

    assert response.status_code == 200
    seen = fake_openai.recorder.last.headers
    assert forwarding_seen(seen) == GATEWAY_FORWARDING
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert "admin.internal" not in str(fake_openai.recorder.last.raw_headers)


def test_a_peer_outside_trusted_proxies_is_not_believed(
    start_gateway: GatewayFactory, fake_openai: FakeOpenAI
) -> None:
    with start_gateway(TRUSTED_PROXIES="10.0.0.0/8, ::1") as gateway:
        httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=SPOOFED)

    seen = fake_openai.recorder.last.headers
    assert forwarding_seen(seen) == GATEWAY_FORWARDING
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"


def test_a_trusted_proxy_chain_is_extended_with_the_peer_and_its_proto_kept(
    trusting_gateway: LiveServer, fake_openai: FakeOpenAI
) -> None:
    response = httpx.post(f"{trusting_gateway.url}/v1/chat/completions", json=CHAT, headers=SPOOFED)

    assert response.status_code == 200
    seen = fake_openai.recorder.last.headers
    assert seen["x-forwarded-for"] == "198.51.100.1, 198.51.100.2, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    # Even a trusted proxy's other claims are not passed on: the upstream's own host and path are the gateway's.
    assert forwarding_seen(seen) == GATEWAY_FORWARDING


def test_a_trusted_proxy_without_a_chain_is_named_itself(
    trusting_gateway: LiveServer, fake_openai: FakeOpenAI
) -> None:
    httpx.post(
        f"{trusting_gateway.url}/v1/chat/completions", json=CHAT, headers={"x-forwarded-proto": "gopher"}
    )

    seen = fake_openai.recorder.last.headers
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"  # not a scheme a proxy in front could have been reached by


def test_the_upstream_cookies_alt_svc_and_hsts_do_not_reach_the_client(start_gateway: GatewayFactory) -> None:
    upstream = UpstreamWithOriginPolicies()
    with LiveServer(upstream.app) as server, start_gateway(OPENAI_BASE_URL=server.url) as gateway:
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)

    assert response.status_code == 200
    assert response.json()["usage"]["total_tokens"] == 18
    for name in ("set-cookie", "alt-svc", "strict-transport-security"):
        assert name not in response.headers, name
    assert response.headers["openai-processing-ms"] == "12"
    assert response.headers["x-upstream-request-id"] == UPSTREAM_REQUEST_ID


def test_organization_and_project_reach_openai_by_default(
    gateway: LiveServer, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with sdk(gateway, api_token, organization="org-team", project="proj_alpha") as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    seen = fake_openai.recorder.last.headers
    assert seen["openai-organization"] == "org-team"
    assert seen["openai-project"] == "proj_alpha"


def test_organization_and_project_stay_behind_when_the_operator_says_so(
    start_gateway: GatewayFactory, fake_openai: FakeOpenAI, api_token: str
) -> None:
    with (
        start_gateway(OPENAI_FORWARD_ORG_HEADERS="0") as gateway,
        sdk(gateway, api_token, organization="org-team", project="proj_alpha") as client,
    ):
        completed = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]

    assert completed.choices[0].message.content == "Hello, world"
    seen = fake_openai.recorder.last.headers
    assert "openai-organization" not in seen
    assert "openai-project" not in seen


def test_organization_and_project_never_reach_mistral(gateway: LiveServer, fake_mistral: FakeMistral) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/ocr",
        json={"url": "https://example.com/scan.png"},
        headers={
            "openai-organization": "org-team",
            "openai-project": "proj_alpha",
            "x-forwarded-for": "1.2.3.4",
        },
    )

    assert response.status_code == 200
    seen = fake_mistral.recorder.last.headers
    assert "openai-organization" not in seen
    assert "openai-project" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"
