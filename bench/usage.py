"""`make bench-usage`: seed one million usage events into a fresh Postgres database and time each usage route.

The events spread over 30 days, 50 users, a dozen models, paths, types and providers. The gateway runs as users
start it (`gateway serve`, one worker) on that database; each route is asked several times and its latency
reported (median and worst). Postgres comes from BENCH_POSTGRES_URL (default: the local server, user postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
GATEWAY = str(Path(sys.executable).parent / "gateway")
DATASET = "ai_worker_requests"
MODELS = [
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4o",
    "gpt-4o-mini",
    "o4-mini",
    "gpt-5",
    "gpt-5-mini",
    "mistral-large",
    "mistral-small",
    "@cf/meta/llama-3.1-8b-instruct",
    "unknown-model",
    "mistral-ocr-latest",
]
PATHS = ["/v1/chat/completions", "/v1/ocr", "/v1/chroma/api/v2/tenants/default_tenant/databases"]
HOUR = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
HOURS_FROM_EVENTS = f"""
INSERT INTO usage_hours
SELECT dataset, {HOUR}, request_type, coalesce(provider, ''), coalesce(model, ''), path, count(*),
       sum(is_error::int), sum(input_tokens), sum(output_tokens), sum(total_tokens), sum(ocr_pages),
       sum(input_cost_usd), sum(output_cost_usd), sum(ocr_cost_usd), sum(latency_ms)
FROM usage_events GROUP BY 1, 2, 3, 4, 5, 6
"""
LATENCIES_FROM_EVENTS = f"""
INSERT INTO usage_hour_latencies
SELECT dataset, {HOUR}, request_type, coalesce(provider, ''),
       CASE WHEN latency_ms <= 1 THEN 0 ELSE ceil(ln(latency_ms) / ln(1.05) - 1e-9)::int END, count(*)
FROM usage_events GROUP BY 1, 2, 3, 4, 5
"""
ROUTES = [
    "/v1/usage",
    "/v1/usage?hours=720",
    "/v1/usage?days=7",
    "/v1/usage/daily",
    "/v1/usage/daily?days=30",
    "/v1/usage/rollups",
]


def event_rows(count: int, now: datetime) -> list[tuple[object, ...]]:
    rng = random.Random(7)
    users = [f"usr_{index:024x}" for index in range(50)]
    rows = []
    # In time order, as a gateway writes them: rows of one window sit together on disk.
    moments = sorted(now - timedelta(seconds=rng.uniform(0, 30 * 86400)) for _ in range(count))
    for moment in moments:
        kind = rng.choices(["chat", "ocr", "chroma"], [8, 1, 1])[0]
        input_tokens, output_tokens = (
            (rng.randint(10, 4000), rng.randint(1, 1000)) if kind == "chat" else (0, 0)
        )
        pages = rng.randint(1, 20) if kind == "ocr" else 0
        status = rng.choices([200, 400, 429, 499, 502], [90, 3, 3, 2, 2])[0]
        rows.append(
            (
                uuid.uuid4().hex,
                moment,
                DATASET,
                uuid.uuid4().hex,
                rng.choice(users),
                None,
                None,
                kind,
                {"chat": "openai", "ocr": "mistral", "chroma": "chroma"}[kind],
                rng.choice(MODELS) if kind == "chat" else ("mistral-ocr-latest" if kind == "ocr" else None),
                "POST",
                PATHS[["chat", "ocr", "chroma"].index(kind)],
                status,
                status >= 400,
                rng.random() < 0.5,
                rng.lognormvariate(5, 1),
                rng.lognormvariate(4, 1),
                input_tokens,
                output_tokens,
                input_tokens + output_tokens,
                pages,
                input_tokens * 2e-6,
                output_tokens * 8e-6,
                pages * 0.001,
                None,
                None,
                None,
            )
        )
    return rows


async def seed(database_url: str, count: int) -> float:
    began = time.perf_counter()
    connection = await asyncpg.connect(database_url)
    try:
        now = datetime.now(UTC)
        columns = [
            "id",
            "created_at",
            "dataset",
            "request_id",
            "user_id",
            "token_id",
            "agent_id",
            "request_type",
            "provider",
            "model",
            "method",
            "path",
            "status",
            "is_error",
            "is_stream",
            "latency_ms",
            "ttfb_ms",
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "ocr_pages",
            "input_cost_usd",
            "output_cost_usd",
            "ocr_cost_usd",
            "max_tokens",
            "temperature",
            "top_p",
        ]
        rows = event_rows(count, now)
        for start in range(0, count, 100_000):
            await connection.copy_records_to_table(
                "usage_events", records=rows[start : start + 100_000], columns=columns
            )
        # The recorder keeps the hourly aggregates as it writes; rows copied in directly need them built once.
        await connection.execute(HOURS_FROM_EVENTS)
        await connection.execute(LATENCIES_FROM_EVENTS)
        # Vacuumed and analysed, as a table in service is: otherwise autovacuum runs during the measurements.
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()
    return time.perf_counter() - began


async def admin(statement: str) -> None:
    connection = await asyncpg.connect(ADMIN_URL)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    args = parser.parse_args()
    name = f"gateway_bench_usage_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    database_url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-usage-"))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": database_url,
        "DATA_DIR": str(workdir / "data"),
    }
    server = None
    try:
        subprocess.run([GATEWAY, "migrate"], env=env, cwd=workdir, check=True, capture_output=True)
        print(f"seeding {args.events:,} events ...", file=sys.stderr)
        seconds = asyncio.run(seed(database_url, args.events))
        print(f"seeded in {seconds:.1f} s", file=sys.stderr)
        port = 18000 + random.randint(0, 999)
        server = subprocess.Popen(
            [GATEWAY, "serve", "--port", str(port)],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        print(f"\n{args.events:,} events in Postgres, {datetime.now(UTC):%Y-%m-%d}\n")
        print("| route | median ms | worst ms | requests in window |")
        print("|---|--:|--:|--:|")
        with httpx.Client(base_url=base, timeout=60) as client:
            for route in ROUTES:
                client.get(route)  # warm
                timings = []
                for _ in range(args.repeat):
                    began = time.perf_counter()
                    response = client.get(route)
                    timings.append((time.perf_counter() - began) * 1000)
                    response.raise_for_status()
                body = response.json()
                count = (
                    body["totals"]["requests"]
                    if "totals" in body
                    else (
                        sum(day["requests"] for day in body["daily"])
                        if "daily" in body
                        else body["rollups"][-1]["totals"]["requests"]
                    )
                )
                print(
                    f"| `GET {route}` | {statistics.median(timings):.0f} | {max(timings):.0f} | {count:,} |"
                )
    finally:
        if server is not None:
            server.terminate()
            server.wait(15)
        if args.keep:
            print(f"kept: {database_url}", file=sys.stderr)
        else:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
