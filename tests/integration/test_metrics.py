"""`GET /metrics`: Prometheus' text format, read with prometheus-client's own parser, whose counts match the
requests sent; behind METRICS_API_KEY when it is set; summed over the workers of `gateway serve --workers 2`; the
usage gauges and counts, the credential cache's and the revocation feed's through a database outage, and the rows
USAGE_REQUIRED=0 lets through unrecorded counted as dropped."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from gateway.db.migrate import upgrade
from tests.conftest import GatewayFactory, PostgresServer
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_usage_durability import gateway_process_env, plain_url
from tests.serving import LiveServer, clean_env, free_port, serving
from tests.tcp_proxy import TcpProxy

CHAT = "/v1/chat/completions"
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
SMALL_QUEUE = 20
# Every family point 7 of issue 18 lists, present in every scrape (the labelled ones once they have a sample).
SERVICE_FAMILIES = (
    "gateway_usage_queue_depth",
    "gateway_usage_journal_bytes",
    "gateway_usage_rows_written_total",
    "gateway_usage_rows_dropped_total",
    "gateway_credential_cache_hits_total",
    "gateway_credential_cache_misses_total",
    "gateway_revocation_feed_lag_seconds",
    "gateway_database_connections_in_use",
)
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


def revocation_feed_lag(url: str) -> float:
    """The seconds since the gateway's last confirmed read of the revocation feed began, as it answers: its
    credential cache is trusted only while this is under `FEED_CURRENT_SECONDS`."""
    return value(scrape(url), "gateway_revocation_feed_lag_seconds")


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
    assert 0 < value(samples, "gateway_added_latency_seconds_sum", route=CHAT) < 5  # a second each at most


def test_each_credential_lookup_is_a_cache_hit_or_a_miss(
    start_gateway: GatewayFactory, fake_openai: FakeOpenAI, api_token: str
) -> None:
    sent = 12
    with start_gateway() as gateway, httpx.Client(base_url=gateway.url) as client:
        # Until the revocation feed's first read every lookup misses, and that read clears the cache (it starts
        # unconfirmed): on a loaded host its connect can lose the race to the first requests several times over.
        wait_for(gateway.url, lambda s: value(s, "gateway_revocation_feed_lag_seconds") < 0.5)
        for _ in range(sent):
            response = client.post(CHAT, json=CHAT_BODY, headers={"authorization": f"Bearer {api_token}"})
            assert response.status_code == 200
        samples = scrape(gateway.url)

    hits = value(samples, "gateway_credential_cache_hits_total")
    misses = value(samples, "gateway_credential_cache_misses_total")
    assert hits + misses == sent  # one lookup a request
    assert misses >= 1 and hits >= sent - 3  # looked up once, then cached (again if the feed was late)


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


def wait_for(url: str, check: Callable[[Samples], bool], *, within: float = 15.0) -> Samples:
    """The first scrape for which `check` holds (the services are sampled once a second); fails past `within`."""
    deadline = time.monotonic() + within
    while True:
        samples = scrape(url)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, {
            name: v for (name, _), v in samples.items() if "bucket" not in name
        }
        time.sleep(0.2)


@contextmanager
def database_behind_a_proxy(
    postgres_server: PostgresServer, data_dir: Path
) -> Iterator[tuple[str, TcpProxy]]:
    """A migrated database of the test's own, a TCP forwarder to it that the test cuts or partitions, and the
    gateway's DATA_DIR made."""
    database_url = postgres_server.create_database()
    asyncio.run(upgrade(database_url))
    data_dir.mkdir()
    target = make_url(database_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        yield database_url, proxy


def outage_gateway_env(
    tmp_path: Path, database_url: str, proxy: TcpProxy, fake_openai_url: str, **variables: str
) -> dict[str, str]:
    """A `gateway serve` on `database_url` through `proxy`, in front of the fake OpenAI."""
    via_proxy = plain_url(database_url, host="127.0.0.1", port=proxy.port)
    env = gateway_process_env(tmp_path / "data", via_proxy, fake_openai_url)
    return {**env, "ACCESS_LOG": "0", **variables}


def settled(url: str, *, rows_written: int, within: float = 15.0) -> Samples:
    """The first scrape with `rows_written` rows in the database, none waiting in the journal, no database
    connection held (once the background work's moment, a budgets sweep or a flush, is over) and the revocation
    feed current."""
    return wait_for(
        url,
        lambda s: (
            value(s, "gateway_usage_rows_written_total") == rows_written
            and value(s, "gateway_usage_journal_bytes") == 0
            and value(s, "gateway_database_connections_in_use") == 0
            and value(s, "gateway_revocation_feed_lag_seconds") < 1.5
        ),
        within=within,
    )


def test_a_database_outage_shows_in_the_journal_the_feed_lag_and_the_rows_written(
    tmp_path: Path, postgres_server: PostgresServer, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    with database_behind_a_proxy(postgres_server, tmp_path / "data") as (database_url, proxy):
        env = outage_gateway_env(tmp_path, database_url, proxy, fake_openai_server[1].url)
        with serving(tmp_path, env=env) as url, httpx.Client(base_url=url) as client:
            assert client.post(CHAT, json=CHAT_BODY).status_code == 200
            before = settled(url, rows_written=1)
            assert all(any(name == family for name, _ in before) for family in SERVICE_FAMILIES), before
            assert value(before, "gateway_usage_queue_depth") == 0

            proxy.cut()
            for _ in range(10):
                assert client.post(CHAT, json=CHAT_BODY).status_code == 200
            # The rows wait in the journal; the feed cannot confirm the credential cache current.
            during = wait_for(url, lambda s: value(s, "gateway_revocation_feed_lag_seconds") > 3)
            assert value(during, "gateway_usage_journal_bytes") > 0
            assert value(during, "gateway_usage_rows_written_total") == 1
            assert value(during, "gateway_usage_rows_dropped_total") == 0

            proxy.restore()
            after = settled(url, rows_written=11, within=20)
    assert value(after, "gateway_usage_queue_depth") == 0
    assert value(after, "gateway_usage_rows_dropped_total") == 0
    assert value(after, "gateway_requests_total", route=CHAT, status="200") == 11


def test_database_connections_in_use_count_those_a_partition_holds(
    tmp_path: Path, postgres_server: PostgresServer, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    with database_behind_a_proxy(postgres_server, tmp_path / "data") as (database_url, proxy):
        env = outage_gateway_env(tmp_path, database_url, proxy, fake_openai_server[1].url)
        with serving(tmp_path, env=env) as url, httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/v1/usage").status_code == 200
            # The budgets' sweep and the usage flush hold one a moment: a sample may catch it; none stays held.
            wait_for(url, lambda s: value(s, "gateway_database_connections_in_use") == 0, within=5)
            proxy.partition()  # packets dropped: a read waits for its statement timeout, its connection out
            with ThreadPoolExecutor(2) as pool:
                reads = [pool.submit(client.get, "/v1/usage") for _ in range(2)]
                held = wait_for(url, lambda s: value(s, "gateway_database_connections_in_use") >= 1)
                proxy.heal()
                statuses = [read.result().status_code for read in reads]
            wait_for(url, lambda s: value(s, "gateway_database_connections_in_use") == 0, within=30)
    assert value(held, "gateway_database_connections_in_use") >= 1
    assert set(statuses) <= {200, 503}, statuses


def test_rows_usage_required_0_lets_through_unrecorded_are_counted_as_dropped(
    tmp_path: Path, postgres_server: PostgresServer, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    with database_behind_a_proxy(postgres_server, tmp_path / "data") as (database_url, proxy):
        # A file where the journal's folder should be: the rows can be kept only in memory, up to USAGE_MAX_QUEUE.
        (tmp_path / "data" / "usage-journal").write_text("not a folder")
        env = outage_gateway_env(
            tmp_path,
            database_url,
            proxy,
            fake_openai_server[1].url,
            USAGE_MAX_QUEUE=str(SMALL_QUEUE),
            USAGE_REQUIRED="0",
        )
        with serving(tmp_path, env=env) as url, httpx.Client(base_url=url) as client:
            assert client.post(CHAT, json=CHAT_BODY).status_code == 200
            wait_for(url, lambda s: value(s, "gateway_usage_rows_written_total") == 1)

            proxy.cut()
            for _ in range(SMALL_QUEUE + 5):
                assert client.post(CHAT, json=CHAT_BODY).status_code == 200
            during = scrape(url)  # the request path's own counts: exact in the scrape that follows it
            assert value(during, "gateway_usage_rows_dropped_total") == 5
            assert value(during, "gateway_usage_queue_depth") == SMALL_QUEUE
            assert value(during, "gateway_usage_journal_bytes") == 0

            proxy.restore()
            after = wait_for(url, lambda s: value(s, "gateway_usage_rows_written_total") == 1 + SMALL_QUEUE)
    assert value(after, "gateway_usage_queue_depth") == 0
    assert value(after, "gateway_usage_rows_dropped_total") == 5
    answered = value(after, "gateway_requests_total", route=CHAT, status="200")
    written = value(after, "gateway_usage_rows_written_total")
    dropped = value(after, "gateway_usage_rows_dropped_total")
    assert answered == written + dropped == SMALL_QUEUE + 6
    assert not math.isinf(value(after, "gateway_revocation_feed_lag_seconds"))


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
