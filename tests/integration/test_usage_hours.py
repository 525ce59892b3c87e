"""Long windows are summed from the hourly aggregates: the same totals as the raw events, p95 within a bucket."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from gateway.settings import Settings
from tests.conftest import GatewayFactory
from tests.integration.test_usage_routes import insert_rows, row


def nearest_rank_p95(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def test_a_long_window_matches_the_raw_events(
    start_gateway: GatewayFactory, gateway_env: dict[str, str]
) -> None:
    dataset = f"t_{uuid.uuid4().hex}"
    rng = random.Random(5)
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
