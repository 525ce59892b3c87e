"""`/v1/usage`, `/v1/usage/daily` and `/v1/usage/rollups` over real HTTP.

Each test reads a dataset of its own (`ANALYTICS_DATASET`), filled through the gateway or by rows inserted
straight into the database, so that what the routes answer can be worked out by hand.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

import gateway.usage
from gateway.db.engine import Database
from gateway.settings import Settings
from gateway.usage.recorder import write_events
from tests.conftest import GatewayFactory, add_user
from tests.fakes.mistral_ocr import FakeMistral
from tests.fakes.openai_upstream import USAGE, FakeOpenAI
from tests.serving import LiveServer

PRICES = json.loads((Path(gateway.usage.__file__).parent / "prices.json").read_text())
MESSAGES = [{"role": "user", "content": "Say hello"}]
TOTALS_FIELDS = {
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "input_estimated_cost_usd",
    "output_estimated_cost_usd",
    "estimated_cost_usd",
    "ocr_pages",
    "ocr_estimated_cost_usd",
    "avg_latency_ms",
    "p95_latency_ms",
}
TOP_FIELDS = {"requests", "errors", "total_tokens", "estimated_cost_usd"}
DAILY_FIELDS = TOTALS_FIELDS - {"errors", "avg_latency_ms", "p95_latency_ms"} | {"date"}
ROLLUP_WINDOWS = ["10m", "1h", "6h", "24h", "7d"]
WAIT_SECONDS = 5.0


# ----- helpers -----


def database_url(gateway_env: dict[str, str]) -> str:
    return Settings.from_env(gateway_env, env_file=None).database_url


def new_dataset() -> str:
    return f"t_{uuid.uuid4().hex}"


@pytest.fixture
def dataset() -> str:
    return new_dataset()


@pytest.fixture
def usage_gateway(start_gateway: GatewayFactory, dataset: str) -> Iterator[LiveServer]:
    """A gateway that writes and reads `dataset`, with no usage key."""
    with start_gateway(ANALYTICS_DATASET=dataset) as server:
        yield server


def row(
    dataset: str, *, at: datetime | None = None, ago: timedelta = timedelta(minutes=1), **fields: Any
) -> dict[str, Any]:
    """A usage_events row (as the recorder would write it), `ago` before now unless `at` says when."""
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "created_at": at if at is not None else datetime.now(UTC) - ago,
        "dataset": dataset,
        "request_id": uuid.uuid4().hex,
        "user_id": None,
        "token_id": None,
        "agent_id": None,
        "request_type": "chat",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "is_stream": False,
        "latency_ms": 10.0,
        "ttfb_ms": 5.0,
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "ocr_pages": 0,
        "input_cost_usd": 0.0,
        "output_cost_usd": 0.0,
        "ocr_cost_usd": 0.0,
        "max_tokens": None,
        "temperature": None,
        "top_p": None,
    }
    values.update(fields)
    values.setdefault("is_error", values["status"] >= 400)
    return values


def insert_rows(url: str, rows: list[dict[str, Any]]) -> None:
    """Write rows through the recorder's own writer, which keeps the hourly aggregates beside the events."""

    async def run() -> None:
        database = Database(url)
        database.open()
        try:
            async with database.session() as session, session.begin():
                await write_events(session, rows)  # as the recorder writes them: events and their hours
        finally:
            await database.close()

    asyncio.run(run())


def get(
    server: LiveServer, path: str, headers: dict[str, str] | None = None, **params: Any
) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", params=params, headers=headers)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def usage(server: LiveServer, headers: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    return ok(get(server, "/v1/usage", headers, **params))


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def price(model: str, tokens: int, side: str) -> Decimal:
    return Decimal(str(PRICES["models"][model][side])) * tokens / Decimal(1_000_000)


def assert_error(response: httpx.Response, status: int, *, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def generated_at(body: dict[str, Any]) -> datetime:
    stamp = body.get("generated_at") or body["window"]["generated_at"]
    assert stamp.endswith("Z"), stamp
    return datetime.fromisoformat(stamp)


def away_from_midnight() -> None:
    """Tests about UTC days must not straddle a midnight between inserting and asking."""
    now = datetime.now(UTC)
    to_midnight = (
        datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC) - now
    ).total_seconds()
    if to_midnight < 15:
        time.sleep(to_midnight + 0.5)


# ----- GET /v1/usage: totals and breakdowns from requests made through the gateway -----


def test_summary_matches_the_requests_made_through_the_gateway(
    usage_gateway: LiveServer, fake_openai: FakeOpenAI, fake_mistral: FakeMistral
) -> None:
    chat_url = f"{usage_gateway.url}/v1/chat/completions"
    models = [
        "gpt-4o-mini",
        "gpt-4o-mini",
        "gpt-4o-mini",
        "gpt-4.1",
        "openai/gpt-4.1-2025-04-14",
        "not-a-priced-model",
    ]
    for index, model in enumerate(models):
        response = httpx.post(chat_url, json={"model": model, "messages": MESSAGES, "stream": index % 2 == 1})
        assert response.status_code == 200, response.text
    assert httpx.post(chat_url, json={"model": "rate-limited", "messages": MESSAGES}).status_code == 429
    assert (
        httpx.post(f"{usage_gateway.url}/v1/ocr", json={"url": "https://example.com/a.pdf"}).status_code
        == 200
    )
    requests = len(models) + 2

    deadline = time.monotonic() + WAIT_SECONDS
    while (body := usage(usage_gateway))["totals"]["requests"] < requests and time.monotonic() < deadline:
        time.sleep(0.1)

    tokens_in, tokens_out = USAGE["prompt_tokens"], USAGE["completion_tokens"]
    mini_in, mini_out = price("gpt-4o-mini", tokens_in, "input"), price("gpt-4o-mini", tokens_out, "output")
    g41_in, g41_out = price("gpt-4.1", tokens_in, "input"), price("gpt-4.1", tokens_out, "output")
    assert (mini_in, mini_out, g41_in, g41_out) == (
        Decimal("0.00000165"),
        Decimal("0.0000042"),
        Decimal("0.000022"),
        Decimal("0.000056"),
    )
    input_cost = (
        3 * mini_in + 2 * g41_in
    )  # a dated, prefixed name is priced as its model; unknown ones are free
    output_cost = 3 * mini_out + 2 * g41_out
    ocr_cost = 2 * Decimal(str(PRICES["ocr"]["per_page"]))
    chat_tokens = len(models) * USAGE["total_tokens"]

    totals = body["totals"]
    assert set(totals) == TOTALS_FIELDS
    assert {
        key: totals[key] for key in ("requests", "errors", "input_tokens", "output_tokens", "total_tokens")
    } == {
        "requests": requests,
        "errors": 1,
        "input_tokens": len(models) * tokens_in,
        "output_tokens": len(models) * tokens_out,
        "total_tokens": chat_tokens,
    }
    assert totals["ocr_pages"] == 2
    assert totals["input_estimated_cost_usd"] == pytest.approx(float(input_cost), abs=1e-12)
    assert totals["output_estimated_cost_usd"] == pytest.approx(float(output_cost), abs=1e-12)
    assert totals["ocr_estimated_cost_usd"] == pytest.approx(float(ocr_cost), abs=1e-12)
    assert totals["estimated_cost_usd"] == pytest.approx(
        float(input_cost + output_cost + ocr_cost), abs=1e-12
    )
    assert 0 < totals["avg_latency_ms"] <= totals["p95_latency_ms"]
    assert body["window"]["hours"] == 24

    mini_cost = float(3 * (mini_in + mini_out))
    g41_cost = float(g41_in + g41_out)
    assert body["top_models"] == [
        {
            "model": "gpt-4o-mini",
            "requests": 3,
            "errors": 0,
            "total_tokens": 54,
            "estimated_cost_usd": pytest.approx(mini_cost, abs=1e-12),
        },
        {
            "model": "gpt-4.1",
            "requests": 1,
            "errors": 0,
            "total_tokens": 18,
            "estimated_cost_usd": pytest.approx(g41_cost, abs=1e-12),
        },
        {
            "model": "mistral-ocr-latest",
            "requests": 1,
            "errors": 0,
            "total_tokens": 0,
            "estimated_cost_usd": pytest.approx(float(ocr_cost), abs=1e-12),
        },
        {
            "model": "not-a-priced-model",
            "requests": 1,
            "errors": 0,
            "total_tokens": 18,
            "estimated_cost_usd": 0,
        },
        {
            "model": "openai/gpt-4.1-2025-04-14",
            "requests": 1,
            "errors": 0,
            "total_tokens": 18,
            "estimated_cost_usd": pytest.approx(g41_cost, abs=1e-12),
        },
        {"model": "rate-limited", "requests": 1, "errors": 1, "total_tokens": 0, "estimated_cost_usd": 0},
    ]
    chat_cost = float(input_cost + output_cost)
    assert body["top_paths"] == [
        {
            "path": "/v1/chat/completions",
            "requests": requests - 1,
            "errors": 1,
            "total_tokens": chat_tokens,
            "estimated_cost_usd": pytest.approx(chat_cost, abs=1e-12),
        },
        {
            "path": "/v1/ocr",
            "requests": 1,
            "errors": 0,
            "total_tokens": 0,
            "estimated_cost_usd": pytest.approx(float(ocr_cost), abs=1e-12),
        },
    ]
    for name, chat_label, ocr_label in (("by_type", "chat", "ocr"), ("by_provider", "openai", "mistral")):
        key = "type" if name == "by_type" else "provider"
        groups = body[name]
        assert [group[key] for group in groups] == [chat_label, ocr_label]
        assert all(set(group) == TOTALS_FIELDS | {key} for group in groups)
        chat, ocr = groups
        assert (chat["requests"], chat["errors"], chat["total_tokens"], chat["ocr_pages"]) == (
            requests - 1,
            1,
            chat_tokens,
            0,
        )
        assert chat["estimated_cost_usd"] == pytest.approx(chat_cost, abs=1e-12)
        assert (ocr["requests"], ocr["errors"], ocr["total_tokens"], ocr["ocr_pages"]) == (1, 0, 0, 2)
        assert ocr["ocr_estimated_cost_usd"] == pytest.approx(float(ocr_cost), abs=1e-12)


def test_empty_dataset_gives_zero_totals_and_empty_lists(usage_gateway: LiveServer) -> None:
    body = usage(usage_gateway)

    assert body["totals"] == {field: 0 for field in TOTALS_FIELDS}
    assert (body["top_models"], body["top_paths"], body["by_type"], body["by_provider"]) == ([], [], [], [])


# ----- GET /v1/usage: sums, latency, windows and limits from rows of known values -----


def test_summary_sums_the_stored_costs_and_counts(
    usage_gateway: LiveServer, gateway_env: dict[str, str], dataset: str
) -> None:
    insert_rows(
        database_url(gateway_env),
        [
            row(
                dataset,
                model="gpt-4.1",
                input_tokens=1_000_000,
                output_tokens=500_000,
                total_tokens=1_500_000,
                input_cost_usd=2.0,
                output_cost_usd=4.0,
            ),
            row(
                dataset, model="gpt-4.1", status=500, input_tokens=10, total_tokens=10, input_cost_usd=0.00002
            ),
            row(
                dataset,
                request_type="ocr",
                provider="mistral",
                model="mistral-ocr-latest",
                path="/v1/ocr",
                ocr_pages=7,
                ocr_cost_usd=0.007,
            ),
            row(dataset, model=None, status=400),
            row(
                new_dataset(), model="gpt-4.1", input_tokens=99, total_tokens=99, input_cost_usd=1.0
            ),  # another dataset
        ],
    )

    body = usage(usage_gateway)

    totals = body["totals"]
    assert (totals["requests"], totals["errors"], totals["input_tokens"], totals["output_tokens"]) == (
        4,
        2,
        1_000_010,
        500_000,
    )
    assert (totals["total_tokens"], totals["ocr_pages"]) == (1_500_010, 7)
    assert totals["input_estimated_cost_usd"] == pytest.approx(2.00002, abs=1e-12)
    assert totals["output_estimated_cost_usd"] == pytest.approx(4.0, abs=1e-12)
    assert totals["ocr_estimated_cost_usd"] == pytest.approx(0.007, abs=1e-12)
    assert totals["estimated_cost_usd"] == pytest.approx(6.00702, abs=1e-12)
    assert [(m["model"], m["requests"], m["errors"]) for m in body["top_models"]] == [
        ("gpt-4.1", 2, 1),
        ("mistral-ocr-latest", 1, 0),
    ]
    assert [(p["path"], p["requests"]) for p in body["top_paths"]] == [
        ("/v1/chat/completions", 3),
        ("/v1/ocr", 1),
    ]


def test_latency_average_and_nearest_rank_p95(
    usage_gateway: LiveServer, gateway_env: dict[str, str], dataset: str
) -> None:
    rows = [row(dataset, latency_ms=float(ms)) for ms in range(1, 101)]
    rows += [
        row(dataset, request_type="ocr", provider="mistral", path="/v1/ocr", latency_ms=float(ms))
        for ms in range(201, 221)
    ]
    insert_rows(database_url(gateway_env), rows)

    body = usage(usage_gateway)

    # 120 rows: 1..100 then 201..220; the 114th (ceil(0.95 * 120)) is 214
    assert body["totals"]["p95_latency_ms"] == 214
    assert body["totals"]["avg_latency_ms"] == pytest.approx((5050 + 4210) / 120, abs=1e-3)
    for name in ("by_type", "by_provider"):
        chat, ocr = body[name]
        assert (chat["requests"], chat["p95_latency_ms"], chat["avg_latency_ms"]) == (100, 95, 50.5)
        assert (ocr["requests"], ocr["p95_latency_ms"], ocr["avg_latency_ms"]) == (20, 219, 210.5)


def test_latency_of_one_to_a_hundred_ms(
    usage_gateway: LiveServer, gateway_env: dict[str, str], dataset: str
) -> None:
    insert_rows(
        database_url(gateway_env), [row(dataset, latency_ms=float(ms)) for ms in reversed(range(1, 101))]
    )

    totals = usage(usage_gateway)["totals"]

    assert (totals["requests"], totals["p95_latency_ms"], totals["avg_latency_ms"]) == (100, 95, 50.5)


def test_top_lists_keep_the_ten_busiest(
    usage_gateway: LiveServer, gateway_env: dict[str, str], dataset: str
) -> None:
    rows = [
        row(dataset, model=f"model-{count:02d}", path=f"/path/{count:02d}")
        for count in range(1, 13)
        for _ in range(count)
    ]
    insert_rows(database_url(gateway_env), rows)

    body = usage(usage_gateway)

    assert [(m["model"], m["requests"]) for m in body["top_models"]] == [
        (f"model-{n:02d}", n) for n in range(12, 2, -1)
    ]
    assert [(p["path"], p["requests"]) for p in body["top_paths"]] == [
        (f"/path/{n:02d}", n) for n in range(12, 2, -1)
    ]
    assert body["totals"]["requests"] == sum(range(1, 13))


def test_window_hours_and_days(usage_gateway: LiveServer, gateway_env: dict[str, str], dataset: str) -> None:
    insert_rows(
        database_url(gateway_env),
        [
            row(dataset, ago=timedelta(minutes=30)),
            row(dataset, ago=timedelta(hours=23)),
            row(dataset, ago=timedelta(hours=25)),
            row(dataset, ago=timedelta(hours=47)),
            row(dataset, ago=timedelta(days=29)),
            row(dataset, ago=timedelta(days=31)),
            row(dataset, ago=timedelta(minutes=-30)),  # in the future: never in a window ending now
        ],
    )

    def seen(**params: Any) -> tuple[int, int]:
        body = usage(usage_gateway, **params)
        return body["window"]["hours"], body["totals"]["requests"]

    assert seen() == (24, 2)
    assert seen(hours=1) == (1, 1)
    assert seen(hours=26) == (26, 3)
    assert seen(days=2) == (48, 4)
    assert seen(days=30) == (720, 5)
    assert seen(days=100) == (720, 5)
    assert seen(hours=720) == (720, 5)
    assert seen(hours=1, days=30) == (1, 1)  # hours wins over days


@pytest.mark.parametrize(
    "params",
    [
        {"hours": "0"},
        {"hours": "721"},
        {"hours": "x"},
        {"hours": "1.5"},
        {"hours": "-1"},
        {"hours": ""},
        {"hours": "1e2"},
        {"hours": " 5"},
        {"days": "0"},
        {"days": "x"},
        {"days": "1.5"},
        {"days": "-2"},
        {"hours": "1000000"},
        {"hours": "000"},
        {"days": "0000"},
        {"hours": "9" * 40},
        {"hours": "x", "days": "2"},
    ],
)
def test_summary_refuses_a_bad_window(gateway: LiveServer, params: dict[str, Any]) -> None:
    response = get(gateway, "/v1/usage", **params)

    error = assert_error(response, 400, param="hours" if "hours" in params else "days")
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("params", "hours"),
    [
        ({}, 24),
        ({"hours": "1"}, 1),
        ({"hours": "720"}, 720),
        ({"days": "1"}, 24),
        ({"days": "2"}, 48),
        ({"days": "30"}, 720),
        ({"days": "100"}, 720),
        ({"hours": "5", "days": "2"}, 5),
        ({"hours": "0024"}, 24),
        ({"days": "1000000"}, 720),  # any number of days is capped at 720 hours
        ({"days": "9" * 40}, 720),
    ],
)
def test_summary_window_hours(gateway: LiveServer, params: dict[str, Any], hours: int) -> None:
    body = usage(gateway, **params)

    assert body["window"]["hours"] == hours
    assert abs((datetime.now(UTC) - generated_at(body)).total_seconds()) < 60


# ----- GET /v1/usage/daily -----


def test_daily_defaults_to_seven_zero_filled_utc_days_ending_today(usage_gateway: LiveServer) -> None:
    body = ok(get(usage_gateway, "/v1/usage/daily"))

    today = generated_at(body).date()
    assert (body["timezone"], body["days"]) == ("UTC", 7)
    assert [bucket["date"] for bucket in body["daily"]] == [
        (today - timedelta(days=n)).isoformat() for n in range(6, -1, -1)
    ]
    for bucket in body["daily"]:
        assert set(bucket) == DAILY_FIELDS
        assert all(bucket[field] == 0 for field in DAILY_FIELDS - {"date"})


def test_daily_buckets_split_at_utc_midnight(
    usage_gateway: LiveServer, gateway_env: dict[str, str], dataset: str
) -> None:
    away_from_midnight()
    today = datetime.now(UTC).date()

    def at(day: date, hour: int, minute: int, second: int, micro: int) -> datetime:
        return datetime(day.year, day.month, day.day, hour, minute, second, micro, tzinfo=UTC)

    yesterday = today - timedelta(days=1)
    insert_rows(
        database_url(gateway_env),
        [
            row(
                dataset,
                at=at(yesterday, 23, 59, 59, 999_000),
                input_tokens=1,
                total_tokens=1,
                input_cost_usd=0.5,
            ),
            row(dataset, at=at(today, 0, 0, 0, 1_000), output_tokens=2, total_tokens=2, output_cost_usd=0.25),
            row(dataset, at=at(today - timedelta(days=3), 12, 0, 0, 0), ocr_pages=3, ocr_cost_usd=0.003),
            row(dataset, at=at(today - timedelta(days=3), 13, 0, 0, 0), status=500),
            row(
                dataset, at=at(today - timedelta(days=6), 0, 0, 0, 0), total_tokens=6
            ),  # the first day, from 00:00
            row(
                dataset, at=at(today - timedelta(days=7), 23, 59, 59, 999_999), total_tokens=7
            ),  # the day before
            row(new_dataset(), at=at(today, 0, 0, 1, 0), total_tokens=100),  # another dataset
        ],
    )

    body = ok(get(usage_gateway, "/v1/usage/daily"))

    assert generated_at(body).date() == today
    daily = {bucket["date"]: bucket for bucket in body["daily"]}
    assert len(daily) == 7
    assert (daily[today.isoformat()]["requests"], daily[today.isoformat()]["total_tokens"]) == (1, 2)
    assert daily[today.isoformat()]["output_tokens"] == 2
    assert daily[today.isoformat()]["output_estimated_cost_usd"] == pytest.approx(0.25)
    assert daily[today.isoformat()]["estimated_cost_usd"] == pytest.approx(0.25)
    assert (daily[yesterday.isoformat()]["requests"], daily[yesterday.isoformat()]["input_tokens"]) == (1, 1)
    assert daily[yesterday.isoformat()]["input_estimated_cost_usd"] == pytest.approx(0.5)
    three_days_ago = daily[(today - timedelta(days=3)).isoformat()]
    assert (three_days_ago["requests"], three_days_ago["ocr_pages"]) == (2, 3)
    assert three_days_ago["ocr_estimated_cost_usd"] == pytest.approx(0.003)
    first = body["daily"][0]
    assert (first["date"], first["requests"], first["total_tokens"]) == (
        (today - timedelta(days=6)).isoformat(),
        1,
        6,
    )
    assert [bucket["requests"] for bucket in body["daily"]] == [1, 0, 0, 2, 0, 1, 1]  # oldest to newest

    eight = ok(get(usage_gateway, "/v1/usage/daily", days=8))
    assert eight["days"] == 8 and len(eight["daily"]) == 8
    assert (eight["daily"][0]["date"], eight["daily"][0]["total_tokens"]) == (
        (today - timedelta(days=7)).isoformat(),
        7,
    )
    assert sum(bucket["requests"] for bucket in eight["daily"]) == 6

    one = ok(get(usage_gateway, "/v1/usage/daily", days=1))
    assert [(bucket["date"], bucket["requests"]) for bucket in one["daily"]] == [(today.isoformat(), 1)]


def test_daily_zero_fills_the_days_without_rows(
    usage_gateway: LiveServer, gateway_env: dict[str, str], dataset: str
) -> None:
    away_from_midnight()
    today = datetime.now(UTC).date()
    insert_rows(
        database_url(gateway_env),
        [
            row(
                dataset,
                at=datetime(today.year, today.month, today.day, 0, 0, 5, tzinfo=UTC) - timedelta(days=2),
            )
        ],
    )

    body = ok(get(usage_gateway, "/v1/usage/daily", days=5))

    assert [(bucket["date"], bucket["requests"]) for bucket in body["daily"]] == [
        ((today - timedelta(days=n)).isoformat(), 1 if n == 2 else 0) for n in range(4, -1, -1)
    ]


def test_daily_takes_up_to_365_days(gateway: LiveServer) -> None:
    body = ok(get(gateway, "/v1/usage/daily", days=365))

    dates = [date.fromisoformat(bucket["date"]) for bucket in body["daily"]]
    assert len(dates) == 365 and dates == sorted(dates) and len(set(dates)) == 365
    assert dates[-1] == generated_at(body).date()


@pytest.mark.parametrize("days", ["0", "366", "x", "1.5", "-1", "", "\u0661", "9" * 40])
def test_daily_refuses_a_bad_number_of_days(gateway: LiveServer, days: str) -> None:
    assert_error(get(gateway, "/v1/usage/daily", days=days), 400, param="days")


# ----- GET /v1/usage/rollups -----


def test_rollups_count_each_preset_window(
    usage_gateway: LiveServer, gateway_env: dict[str, str], dataset: str
) -> None:
    insert_rows(
        database_url(gateway_env),
        [
            row(dataset, ago=timedelta(minutes=5), total_tokens=1),
            row(dataset, ago=timedelta(minutes=30), total_tokens=10),
            row(dataset, ago=timedelta(hours=2), total_tokens=100, status=502),
            row(dataset, ago=timedelta(hours=12), total_tokens=1_000),
            row(dataset, ago=timedelta(days=3), total_tokens=10_000),
            row(dataset, ago=timedelta(days=8), total_tokens=100_000),
        ],
    )

    body = ok(get(usage_gateway, "/v1/usage/rollups"))

    assert [rollup["window"] for rollup in body["rollups"]] == ROLLUP_WINDOWS
    assert body["windows"] == body["rollups"]
    assert all(set(rollup["totals"]) == TOTALS_FIELDS for rollup in body["rollups"])
    counts = {
        r["window"]: (r["totals"]["requests"], r["totals"]["total_tokens"], r["totals"]["errors"])
        for r in body["rollups"]
    }
    assert counts == {
        "10m": (1, 1, 0),
        "1h": (2, 11, 0),
        "6h": (3, 111, 1),
        "24h": (4, 1_111, 1),
        "7d": (5, 11_111, 1),
    }
    generated_at(body)


def test_rollups_of_an_empty_dataset_are_zero(usage_gateway: LiveServer) -> None:
    body = ok(get(usage_gateway, "/v1/usage/rollups"))

    assert [rollup["window"] for rollup in body["rollups"]] == ROLLUP_WINDOWS
    assert all(rollup["totals"] == {field: 0 for field in TOTALS_FIELDS} for rollup in body["rollups"])


# ----- who may ask, and what they see -----


class Caller:
    """A fresh user of the gateway's database: its id, a platform JWT, a usage:read token and a chat-only one."""

    def __init__(self, server: LiveServer, gateway_env: dict[str, str]) -> None:
        login = {"email": f"usage-{uuid.uuid4().hex}@example.com", "password": "a long enough test password"}
        self.user_id = asyncio.run(
            add_user(database_url(gateway_env), email=login["email"], password=login["password"])
        )
        response = httpx.post(f"{server.url}/api/v1/auth/login", json=login)
        assert response.status_code == 200, response.text
        self.jwt: str = response.json()["access_token"]
        self.usage_token = self._token(server, ["usage:read"])
        self.chat_token = self._token(server, ["chat"])

    def _token(self, server: LiveServer, scopes: list[str]) -> str:
        response = httpx.post(
            f"{server.url}/v1/api-tokens", json={"scopes": scopes}, headers=bearer(self.jwt)
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token


def fill_for_auth(url: str, dataset: str, caller: Caller) -> None:
    """3 rows of the caller's (6 tokens), 5 of another user's, 2 anonymous: 10 in all (10 + 6 + 50 tokens)."""
    rows = [row(dataset, user_id=caller.user_id, total_tokens=2) for _ in range(3)]
    rows += [row(dataset, user_id=uuid.uuid4().hex, total_tokens=10) for _ in range(5)]
    rows += [row(dataset, total_tokens=5) for _ in range(2)]
    rows += [row(new_dataset(), user_id=caller.user_id, total_tokens=1_000)]  # the caller's, elsewhere
    insert_rows(url, rows)


def requests_seen(server: LiveServer, headers: dict[str, str]) -> tuple[int, int, int, int]:
    """(requests in /v1/usage, total tokens there, requests over /v1/usage/daily, requests in the 24h rollup)."""
    summary = usage(server, headers)["totals"]
    daily = ok(get(server, "/v1/usage/daily", headers))["daily"]
    rollups = {r["window"]: r["totals"] for r in ok(get(server, "/v1/usage/rollups", headers))["rollups"]}
    return (
        summary["requests"],
        summary["total_tokens"],
        sum(b["requests"] for b in daily),
        rollups["24h"]["requests"],
    )


USAGE_ROUTES = ["/v1/usage", "/v1/usage/daily", "/v1/usage/rollups"]


@pytest.fixture
def keyed_gateway(start_gateway: GatewayFactory, dataset: str) -> Iterator[LiveServer]:
    with start_gateway(ANALYTICS_DATASET=dataset, USAGE_API_KEY="usage-key-for-tests") as server:
        yield server


def test_with_a_usage_key_nothing_gets_in_without_a_credential(keyed_gateway: LiveServer) -> None:
    for path in USAGE_ROUTES:
        response = get(keyed_gateway, path)
        assert_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer wrong-key"},
        {"x-usage-key": "wrong-key"},
        {"x-usage-key": "usage-key-for-tests-but-longer"},
        {"x-usage-key": ""},
        {"authorization": "Basic dXNhZ2Uta2V5LWZvci10ZXN0cw=="},
    ],
)
def test_a_wrong_usage_key_is_401(keyed_gateway: LiveServer, headers: dict[str, str]) -> None:
    for path in USAGE_ROUTES:
        assert_error(get(keyed_gateway, path, headers), 401)


@pytest.mark.parametrize("headers", [bearer("usage-key-for-tests"), {"x-usage-key": "usage-key-for-tests"}])
def test_the_usage_key_sees_the_whole_dataset(
    keyed_gateway: LiveServer, gateway_env: dict[str, str], dataset: str, headers: dict[str, str]
) -> None:
    fill_for_auth(database_url(gateway_env), dataset, Caller(keyed_gateway, gateway_env))

    assert requests_seen(keyed_gateway, headers) == (10, 66, 10, 10)


def test_with_a_usage_key_a_user_sees_only_their_own_usage(
    keyed_gateway: LiveServer, gateway_env: dict[str, str], dataset: str
) -> None:
    caller = Caller(keyed_gateway, gateway_env)
    fill_for_auth(database_url(gateway_env), dataset, caller)

    assert requests_seen(keyed_gateway, bearer(caller.jwt)) == (3, 6, 3, 3)
    assert requests_seen(keyed_gateway, bearer(caller.usage_token)) == (3, 6, 3, 3)
    for path in USAGE_ROUTES:
        error = assert_error(get(keyed_gateway, path, bearer(caller.chat_token)), 403)
        assert error["code"] == "insufficient_scope"


def test_without_a_usage_key_anyone_sees_the_whole_dataset_and_a_user_their_own(
    usage_gateway: LiveServer, gateway_env: dict[str, str], dataset: str
) -> None:
    caller = Caller(usage_gateway, gateway_env)
    fill_for_auth(database_url(gateway_env), dataset, caller)

    assert requests_seen(usage_gateway, {}) == (10, 66, 10, 10)
    assert requests_seen(usage_gateway, bearer(caller.jwt)) == (3, 6, 3, 3)
    assert requests_seen(usage_gateway, bearer(caller.usage_token)) == (3, 6, 3, 3)
    for path in USAGE_ROUTES:
        assert_error(get(usage_gateway, path, bearer(caller.chat_token)), 403)
        assert_error(get(usage_gateway, path, bearer("not-a-credential")), 401)


def test_a_user_sees_the_usage_of_their_own_requests_through_the_gateway(
    usage_gateway: LiveServer, gateway_env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    caller = Caller(usage_gateway, gateway_env)
    chat_token = caller.chat_token
    for credential in (chat_token, chat_token, None):
        headers = bearer(credential) if credential else {}
        response = httpx.post(
            f"{usage_gateway.url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers=headers,
        )
        assert response.status_code == 200, response.text

    deadline = time.monotonic() + WAIT_SECONDS
    while usage(usage_gateway)["totals"]["requests"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)

    mine = usage(usage_gateway, bearer(caller.jwt))
    assert (mine["totals"]["requests"], mine["totals"]["total_tokens"]) == (2, 2 * USAGE["total_tokens"])
    assert usage(usage_gateway)["totals"]["requests"] == 3
