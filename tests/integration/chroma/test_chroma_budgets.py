"""A rate limit on the Chroma routes (issue 22): admissions past `requests_per_minute` refused in Chroma's error
format, as its clients read it, with the gateway's code and the limit named."""

from __future__ import annotations

import httpx

from tests.integration.chroma.conftest import new_user
from tests.serving import LiveServer


def test_chroma_requests_past_the_rate_limit_are_refused_in_chromas_format(
    chroma_gateway: LiveServer, gateway_env: dict[str, str]
) -> None:
    user = new_user(chroma_gateway, gateway_env, "limited")
    created = httpx.post(
        f"{chroma_gateway.url}/v1/api-tokens",
        json={"name": "chroma", "scopes": ["chroma"], "limits": {"requests_per_minute": 3}},
        headers=user.headers,
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    with httpx.Client(base_url=f"{chroma_gateway.url}/v1/chroma", timeout=10) as client:
        statuses = [
            client.get("/api/v2/heartbeat", headers={"authorization": f"Bearer {token}"}) for _ in range(5)
        ]
    assert [response.status_code for response in statuses] == [200, 200, 200, 429, 429]
    refused = statuses[-1]
    assert refused.json() == {
        "error": "RateLimitError",
        "message": refused.json()["message"],
        "code": "rate_limited",
        "param": "requests_per_minute",
    }
    assert 1 <= int(refused.headers["retry-after"]) <= 62
