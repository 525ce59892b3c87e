"""`GET /metrics`: Prometheus' text format, read with prometheus-client's own parser, whose counts match the
requests sent; behind METRICS_API_KEY when it is set; summed over the workers of `gateway serve --workers 2`."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory
from tests.fakes.openai_upstream import FakeOpenAI
from tests.serving import LiveServer, clean_env, free_port, serving

CHAT = "/v1/chat/completions"
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, **headers: str) -> Samples:
    """The scrape, parsed by prometheus-client: every sample by name and labels."""
    response = httpx.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_template_and_status(
    start_gateway: GatewayFactory, fake_openai: FakeOpenAI
) -> None:
    with start_gateway() as gateway, httpx.Client(base_url=gateway.url) as client:
        for _ in range(5):
            assert client.post(CHAT, json=CHAT_BODY).status_code == 200
        for index in range(3):
            assert client.get(f"/no/such/path/{index}").status_code == 404
        # A route with a parameter, refused before its endpoint: counted under its template.
        for _ in range(2):
            assert client.get(f"/v1/agents/{uuid.uuid4()}").status_code == 401
        assert client.get("/health").status_code == 200

        samples = scrape(gateway.url)
        deadline = time.monotonic() + 10  # the usage rows reach the database a flush later
        while value(scrape(gateway.url), "gateway_usage_rows_written_total") < 5:
            assert time.monotonic() < deadline
            time.sleep(0.2)

    assert value(samples, "gateway_requests_total", route=CHAT, status="200") == 5
    assert value(samples, "gateway_requests_total", route="unmatched", status="404") == 3
    assert value(samples, "gateway_requests_total", route="/v1/agents/{agent_id}", status="401") == 2
    assert value(samples, "gateway_requests_total", route="/health", status="200") == 1
    requests = {labels for name, labels in samples if name == "gateway_requests_total"}
    assert len(requests) == 4  # nothing else, the scrape itself included: it renders before it answers
    # Both latencies, once per chat completion: the upstream's wait for its headers, and what the gateway added.
    assert value(samples, "gateway_upstream_latency_seconds_count", upstream="openai") == 5
    assert value(samples, "gateway_added_latency_seconds_count", route=CHAT) == 5
    assert value(samples, "gateway_added_latency_seconds_bucket", route=CHAT, le="+Inf") == 5
    assert 0 < value(samples, "gateway_added_latency_seconds_sum", route=CHAT) < 1


def test_an_upstream_that_refuses_connections_is_counted_as_upstream_unavailable(
    start_gateway: GatewayFactory,
) -> None:
    with start_gateway(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}") as gateway:
        for _ in range(2):
            assert httpx.post(f"{gateway.url}{CHAT}", json=CHAT_BODY).status_code == 502
        samples = scrape(gateway.url)

    errors = value(samples, "gateway_upstream_errors_total", upstream="openai", kind="upstream_unavailable")
    assert errors == 2
    assert value(samples, "gateway_requests_total", route=CHAT, status="502") == 2
    assert value(samples, "gateway_upstream_latency_seconds_count", upstream="openai") == 0  # never answered


def test_metrics_api_key_is_required_as_a_bearer_token_when_set(start_gateway: GatewayFactory) -> None:
    key = "metrics-" + uuid.uuid4().hex
    with start_gateway(METRICS_API_KEY=key) as gateway:
        url = f"{gateway.url}/metrics"
        refused = [
            httpx.get(url),
            httpx.get(url, headers={"authorization": "Bearer wrong-" + key}),
            httpx.get(url, headers={"authorization": f"Basic {key}"}),
        ]
        samples = scrape(gateway.url, authorization=f"Bearer {key}")

    for response in refused:
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_credential"
        assert response.headers["www-authenticate"] == "Bearer"
        assert key not in response.text
    assert value(samples, "gateway_requests_total", route="/metrics", status="401") == 3


def test_two_workers_counts_are_summed_in_every_scrape(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    env = clean_env(
        OPENAI_BASE_URL=f"{fake_openai_server[1].url}/v1",
        OPENAI_API_KEY="sk-upstream",
        ACCESS_LOG="0",
        # Where `gateway serve` makes the workers' metrics folder, to see who served what.
        TMPDIR=str(tmp_path),
    )
    (tmp_path / "run").mkdir()
    with serving(tmp_path / "run", "--workers", "2", env=env) as url:
        deadline = time.monotonic() + 30  # the first worker answers: wait for the second's files too
        while len(served_by_worker(tmp_path)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sent = 0

        def chat(_: int) -> None:
            with httpx.Client() as client:  # a connection of its own: either worker may take it
                assert client.post(f"{url}{CHAT}", json=CHAT_BODY).status_code == 200

        with ThreadPoolExecutor(8) as pool:
            while sent < 400:
                list(pool.map(chat, range(40)))
                sent += 40
                served = served_by_worker(tmp_path)
                if len(served) == 2 and all(served.values()):
                    break
        assert len(served) == 2 and all(served.values()), served  # both workers answered some

        deadline = time.monotonic() + 5  # the other worker folds its tallies every second
        while value(scrape(url), "gateway_requests_total", route=CHAT, status="200") != sent:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for _ in range(6):  # whichever worker answers the scrape
            samples = scrape(url)
            assert value(samples, "gateway_requests_total", route=CHAT, status="200") == sent
            assert value(samples, "gateway_upstream_latency_seconds_count", upstream="openai") == sent
            assert value(samples, "gateway_added_latency_seconds_count", route=CHAT) == sent
        assert sum(served_by_worker(tmp_path).values()) == sent


def served_by_worker(tmp: Path) -> dict[str, float]:
    """Chat completions answered so far per worker, from its own counter file (folded once a second)."""
    served = {}
    for path in tmp.glob("gateway-metrics-*/counter_*.db"):
        families = MultiProcessCollector.merge([str(path)])
        served[path.stem] = sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "gateway_requests_total" and sample.labels.get("route") == CHAT
        )
    return served
