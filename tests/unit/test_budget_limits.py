"""A `limits` object as the API and the CLI take it, when each period resets, and a request's worst case
(issue 22)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gateway.budgets.estimate import max_tokens, prompt_tokens, worst_case
from gateway.budgets.limits import DAY_SECONDS, NANO, Period, day_of, parse_limits
from gateway.errors import InvalidRequestError
from gateway.usage.pricing import ModelPrice


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_caps_are_kept_in_exact_units() -> None:
    changes = parse_limits({"usd_per_period": 0.1, "tokens_per_period": 5000, "requests_per_minute": 60})
    # 0.1 USD is 100,000,000 nano-USD exactly, not 0.1 * 1e9 in binary floating point.
    assert changes.caps == {
        "usd_per_period": NANO // 10,
        "tokens_per_period": 5000,
        "requests_per_minute": 60,
    }
    assert changes.period is None


def test_null_removes_a_kind_and_periods_are_read() -> None:
    assert parse_limits({"usd_per_period": None, "period": "day"}).caps == {"usd_per_period": None}
    assert parse_limits({"period": "day"}).period == Period("day")
    assert parse_limits({"rolling_days": 7}).period == Period("rolling", 7)


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"usd_per_period": 0}, "limits.usd_per_period"),
        ({"usd_per_period": 1e-12}, "limits.usd_per_period"),  # below a nano-USD
        ({"usd_per_period": 10**7}, "limits.usd_per_period"),
        ({"usd_per_period": "5"}, "limits.usd_per_period"),
        ({"tokens_per_period": 0}, "limits.tokens_per_period"),
        ({"tokens_per_period": 10**13}, "limits.tokens_per_period"),
        ({"requests_per_minute": False}, "limits.requests_per_minute"),
        ({"period": "year"}, "limits.period"),
        ({"rolling_days": 367}, "limits.rolling_days"),
        ({"period": "day", "rolling_days": 7}, "limits.rolling_days"),
        ({"usd": 5}, "limits.usd"),
        ("5 USD", "limits"),
    ],
)
def test_bad_limits_name_the_field(limits: object, field: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        parse_limits(limits)
    assert raised.value.param == field


@pytest.mark.parametrize(
    ("period", "now", "resets"),
    [
        (Period("day"), "2026-12-07T13:45:00", "2026-12-08T00:00:00"),
        (Period("day"), "2026-12-31T23:59:59", "2027-01-01T00:00:00"),
        (Period("month"), "2026-12-07T13:45:00", "2027-01-01T00:00:00"),
        (Period("month"), "2026-01-31T00:00:00", "2026-02-01T00:00:00"),
        (Period("month"), "2028-02-29T12:00:00", "2028-03-01T00:00:00"),
        (Period("rolling", 7), "2026-12-07T13:45:00", "2026-12-08T00:00:00"),
    ],
)
def test_each_period_resets_at_its_utc_boundary(period: Period, now: str, resets: str) -> None:
    assert period.next_reset(at(now)) == at(resets)


def test_days_are_counted_in_utc() -> None:
    assert day_of(at("1970-01-02T00:00:00")) == 1
    assert day_of(at("2026-12-07T23:59:59")) == day_of(at("2026-12-07T00:00:00"))
    assert day_of(at("2026-12-08T00:00:00")) * DAY_SECONDS == at("2026-12-08T00:00:00")


def test_the_worst_case_bounds_the_prompt_by_its_bytes_and_prices_it_exactly() -> None:
    messages = [
        {"role": "user", "content": "héllo"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]
    # "user" 4 + "héllo" 6 bytes + 4; "assistant" 9 + "text" 4 + "ok" 2 + 4: 33 prompt tokens at most.
    assert prompt_tokens(messages) == 33
    # 33 at 0.15 USD and 100 at 0.6 USD per million: 4,950 + 60,000 nano-USD.
    assert worst_case(messages, 100, ModelPrice(Decimal("0.15"), Decimal("0.6"))) == (64_950, 133)
    assert worst_case(messages, 100, None) == (1, 133)  # unpriced: admitted at no cost
    assert worst_case([], 1, ModelPrice(Decimal(0), Decimal(0))) == (
        1,
        1,
    )  # never nothing: a spent budget refuses


def test_max_tokens_are_read_as_the_apis_name_them() -> None:
    assert max_tokens({"max_completion_tokens": 50, "max_tokens": 10}) == 50
    assert max_tokens({"max_tokens": 10}) == 10
    assert max_tokens({"max_tokens": True}) is None
    assert max_tokens({"max_tokens": 0, "max_completion_tokens": "9"}) is None
