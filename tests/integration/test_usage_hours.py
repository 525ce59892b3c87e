"""Long windows are summed from the hourly aggregates: the same totals as the raw events, p95 within a bucket."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select

from gateway.db.engine import Database
from gateway.db.models import UsageHour, UsageHourLatency
from gateway.settings import Settings
from gateway.usage.hours import BUCKET_GROWTH, hour_of, latency_bucket
from tests.conftest import GatewayFactory
from tests.integration.test_usage_routes import away_from_midnight, insert_rows, row


def nearest_rank_p95(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def test_a_long_window_matches_the_raw_events(
    start_gateway: GatewayFactory, gateway_env: dict[str, str]
) -> None:
    dataset = f"t_{uuid.uuid4().hex}"
    rng = random.Random(5)
    away_from_midnight()  # the oldest rows' day must stay inside the window asked below
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for _ in range(600):
        kind = rng.choice(["chat", "ocr"])
        input_tokens, output_tokens = rng.randint(0, 500), rng.randint(0, 200)
        rows.append(
            row(
                dataset,
                at=now - timedelta(seconds=rng.uniform(60, 71 * 3600)),
                request_type=kind,
                provider={"chat": "openai", "ocr": "mistral"}[kind],
                model=rng.choice(["gpt-4.1", "gpt-4o-mini", None]),
                status=rng.choice([200, 200, 200, 429]),
                latency_ms=rng.lognormvariate(4, 1),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                total_tokens=input_tokens + output_tokens,
                input_cost_usd=input_tokens * 1e-6,
                output_cost_usd=output_tokens * 4e-6,
                ocr_pages=rng.randint(0, 3) if kind == "ocr" else 0,
            )
        )
    with start_gateway(ANALYTICS_DATASET=dataset) as gateway:  # migrates the database first
        insert_rows(Settings.from_env(gateway_env, env_file=None).database_url, rows)
        body = httpx.get(f"{gateway.url}/v1/usage", params={"hours": 72}).json()
        daily = httpx.get(f"{gateway.url}/v1/usage/daily", params={"days": 4}).json()["daily"]

    totals = body["totals"]
    assert totals["requests"] == 600
    assert totals["errors"] == sum(r["status"] >= 400 for r in rows)
    assert totals["total_tokens"] == sum(r["total_tokens"] for r in rows)
    assert totals["ocr_pages"] == sum(r["ocr_pages"] for r in rows)
    assert math.isclose(
        totals["estimated_cost_usd"],
        sum(r["input_cost_usd"] + r["output_cost_usd"] for r in rows),
        rel_tol=1e-6,
    )
    assert math.isclose(totals["avg_latency_ms"], sum(r["latency_ms"] for r in rows) / 600, rel_tol=1e-3)
    exact = nearest_rank_p95([r["latency_ms"] for r in rows])
    assert exact <= totals["p95_latency_ms"] <= exact * 1.05 + 0.01  # the top of the bucket holding it

    by_type = {entry["type"]: entry["requests"] for entry in body["by_type"]}
    assert by_type == {kind: sum(r["request_type"] == kind for r in rows) for kind in ("chat", "ocr")}
    models = {entry["model"]: entry["requests"] for entry in body["top_models"]}
    assert models == {m: sum(r["model"] == m for r in rows) for m in ("gpt-4.1", "gpt-4o-mini")}
    assert sum(day["requests"] for day in daily) == 600
    for day in daily:
        assert day["requests"] == sum(r["created_at"].date().isoformat() == day["date"] for r in rows)


def test_the_writer_aggregates_each_batch_as_latency_bucket_and_hour_of_say(
    start_gateway: GatewayFactory, gateway_env: dict[str, str]
) -> None:
    """On Postgres the hours are summed by SQL, on SQLite in Python: both must put every event in the hour and the
    latency bucket that `hour_of` and `latency_bucket` give, bucket edges included, and a replayed batch must not
    count twice."""
    dataset = f"t_{uuid.uuid4().hex}"
    edges = [BUCKET_GROWTH**k for k in range(1, 200, 7)]
    latencies = [0.0, 0.5, 1.0, 1.0000001, 3.3, 250.0, 60_000.0]
    latencies += (
        edges + [math.nextafter(edge, 0) for edge in edges] + [math.nextafter(edge, 2e9) for edge in edges]
    )
    now = datetime.now(UTC)
    rows = [
        row(
            dataset,
            at=now - timedelta(minutes=37 * index),
            provider="openai" if index % 3 else None,
            model="gpt-4o-mini" if index % 2 else None,
            latency_ms=latency,
            status=500 if index % 5 == 0 else 200,
            input_tokens=index,
        )
        for index, latency in enumerate(latencies)
    ]
    with start_gateway(ANALYTICS_DATASET=dataset):  # migrates the database first
        url = Settings.from_env(gateway_env, env_file=None).database_url
        insert_rows(url, rows)
        insert_rows(url, rows)  # a replay of the same batch
        hours, buckets = read_aggregates(url, dataset)

    expected_buckets: Counter[tuple[datetime, str, int]] = Counter(
        (hour_of(r["created_at"]), r["provider"] or "", latency_bucket(r["latency_ms"])) for r in rows
    )
    assert buckets == expected_buckets
    expected_hours: dict[tuple[datetime, str, str], tuple[int, int, int]] = {}
    for r in rows:
        key = (hour_of(r["created_at"]), r["provider"] or "", r["model"] or "")
        requests, errors, tokens = expected_hours.get(key, (0, 0, 0))
        expected_hours[key] = (requests + 1, errors + (r["status"] >= 400), tokens + r["input_tokens"])
    assert hours == expected_hours


def read_aggregates(
    url: str, dataset: str
) -> tuple[dict[tuple[datetime, str, str], tuple[int, int, int]], Counter[tuple[datetime, str, int]]]:
    async def run() -> tuple[Any, Any]:
        database = Database(url)
        database.open()
        try:
            async with database.session() as session:
                hours = await session.execute(select(UsageHour).where(UsageHour.dataset == dataset))
                buckets = await session.execute(
                    select(UsageHourLatency).where(UsageHourLatency.dataset == dataset)
                )
                return (
                    {
                        (h.hour, h.provider, h.model): (h.requests, h.errors, h.input_tokens)
                        for h in hours.scalars()
                    },
                    Counter({(b.hour, b.provider, b.bucket): b.requests for b in buckets.scalars()}),
                )
        finally:
            await database.close()

    return asyncio.run(run())
