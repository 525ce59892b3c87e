"""What a limit is: its kinds, units and periods, read from a request's `limits` object (400 naming the field
otherwise) and shown back with their counters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.errors import InvalidRequestError

USD = "usd_per_period"
TOKENS = "tokens_per_period"
REQUESTS = "requests_per_minute"
KINDS = (USD, TOKENS, REQUESTS)
SPEND_KINDS = frozenset({USD, TOKENS})
DAY, MONTH, ROLLING, MINUTE = "day", "month", "rolling", "minute"
DEFAULT_PERIOD = MONTH
NANO = 1_000_000_000  # usd_per_period is kept in nano-USD, exact in integers
MAX_USD = 1_000_000
MAX_TOKENS = 10**12
MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_ROLLING_DAYS = 366
DAY_SECONDS = 86_400
# An admission of a rate limit counts for a minute from the lease that granted it, plus the time a lease's
# admissions may take to be used (gateway.budgets.service.LEASE_SECONDS): never less than a minute from its use.
WINDOW_SECONDS = 60.0
OWNER_KINDS = ("token", "user", "agent")


@dataclass(frozen=True, slots=True)
class Period:
    """How a spend limit's counter resets: each UTC day, each UTC month, or as days leave a rolling window."""

    name: str  # day, month, rolling
    rolling_days: int | None = None

    def next_reset(self, now: float) -> float:
        """When the counter next resets (rolling: when the next day leaves the window), epoch seconds."""
        moment = datetime.fromtimestamp(now, UTC)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.name == MONTH:
            first = midnight.replace(day=1)
            following = (first + timedelta(days=32)).replace(day=1)
            return following.timestamp()
        return (midnight + timedelta(days=1)).timestamp()

    def describe(self) -> str:
        return f"{self.rolling_days} rolling days" if self.name == ROLLING else f"a {self.name}"


@dataclass(frozen=True, slots=True)
class LimitChanges:
    """A `limits` object: each kind's new cap in its unit (None: remove it), and the period when given."""

    caps: dict[str, int | None]
    period: Period | None


def day_of(now: float) -> int:
    """Days since the epoch, UTC."""
    return math.floor(now / DAY_SECONDS)


def owner(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def parse_limits(value: object, *, field: str = "limits") -> LimitChanges:
    """A request's `limits` object. Raises 400 naming the field at fault."""
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{field} must be an object.", param=field)
    known = {*KINDS, "period", "rolling_days"}
    for key in value:
        if key not in known:
            raise InvalidRequestError(
                f"{field} has no field {key!r}; known: {sorted(known)}.", param=f"{field}.{key}"
            )
    caps: dict[str, int | None] = {}
    if USD in value:
        caps[USD] = _usd(value[USD], f"{field}.{USD}")
    if TOKENS in value:
        caps[TOKENS] = _whole(value[TOKENS], f"{field}.{TOKENS}", MAX_TOKENS)
    if REQUESTS in value:
        caps[REQUESTS] = _whole(value[REQUESTS], f"{field}.{REQUESTS}", MAX_REQUESTS_PER_MINUTE)
    return LimitChanges(caps, _period(value, field))


def _period(value: dict[str, Any], field: str) -> Period | None:
    period, days = value.get("period"), value.get("rolling_days")
    if period is not None and days is not None:
        raise InvalidRequestError(
            f"{field}: give period or rolling_days, not both.", param=f"{field}.rolling_days"
        )
    if days is not None:
        _whole(days, f"{field}.rolling_days", MAX_ROLLING_DAYS)
        return Period(ROLLING, days)
    if period is None:
        return None
    if period not in (DAY, MONTH):
        raise InvalidRequestError(
            f"{field}.period must be 'day' or 'month' (or give rolling_days).", param=f"{field}.period"
        )
    return Period(period)


def _usd(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{field} must be a number of USD, or null to remove it.", param=field)
    try:
        nano = int((Decimal(str(value)) * NANO).to_integral_value())
    except (InvalidOperation, ValueError):
        nano = 0
    if not 1 <= nano <= MAX_USD * NANO:
        raise InvalidRequestError(f"{field} must be above 0 and at most {MAX_USD} USD.", param=field)
    return nano


def _whole(value: object, field: str, maximum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidRequestError(f"{field} must be a whole number from 1 to {maximum}.", param=field)
    return value


def shown(kind: str, amount: int) -> float | int:
    """An amount in the unit the API shows: USD for usd_per_period, a count otherwise."""
    return amount / NANO if kind == USD else amount
