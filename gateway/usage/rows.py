"""The usage row of one metered exchange, a proxied request or an agent turn: the one place that says what each
column holds (499 for a client that left first, counts capped to their columns, the cost, the error code).

Every row is storable on both databases whatever the client sent: a row the database refuses is an answered
request left unrecorded. So the text the client chose (the path, the method, a model the upstream named) is made
to fit its column here, NUL and lone surrogates replaced and cut to the column's length, since the request was
served already and refusing is no longer an option.

Both callers keep an `Outcome` as the exchange goes and make the row in `finally`, so that errors, disconnects
and cancellations are recorded too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.context import RequestContext
from gateway.db.models import UsageEvent
from gateway.fields import storable_text
from gateway.usage.observers import ObservedUsage
from gateway.usage.pricing import PriceTable
from gateway.usage.recorder import UsageRecord

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer was complete
# The usage columns are INTEGER (32 bits on Postgres): a larger value would fail the whole batch's INSERT.
MAX_STORED_INT = 2**31 - 1
EMPTY: dict[str, Any] = {}


@dataclass(slots=True)
class Outcome:
    """How far one exchange got: its answer's status and first byte, whether the answer reached its end, and the
    gateway's error code when the gateway failed it."""

    started_at: float = field(default_factory=time.perf_counter)
    status: int | None = None  # the answer's status, once it began
    first_byte_at: float | None = None
    completed: bool = False  # the answer reached its end; if not, the client left first
    error: str | None = None

    def answered(self, status: int) -> None:
        """The exchange ended with a whole answer of `status`."""
        self.status, self.completed = status, True

    def failed(self, status: int, code: str) -> None:
        """The gateway failed the exchange with its error `code` (`upstream_incomplete`, `quota_exceeded`, ...)."""
        self.status, self.completed, self.error = status, True, code

    @property
    def recorded_status(self) -> int:
        return self.status if self.completed and self.status else CLIENT_CLOSED_REQUEST


def usage_row(
    context: RequestContext | None,
    outcome: Outcome,
    pricing: PriceTable,
    *,
    kind: str,
    method: str,
    path: str,
    provider: str | None,
    model: str | None,
    usage: ObservedUsage,
    is_stream: bool,
    agent_id: str | None = None,
) -> UsageRecord:
    """The row of an exchange made under `context` (its request id, its caller and, on a chain whose usage step
    read it, the request's JSON parameters). `agent_id` names the agent of a turn; by default the caller's, when
    it is an agent key."""
    now = time.perf_counter()
    started_at = outcome.started_at
    principal = context.principal if context is not None else None
    request = (context.request_json if context is not None else None) or EMPTY
    input_tokens, output_tokens = _count(usage.input_tokens), _count(usage.output_tokens)
    ocr_pages = _count(usage.ocr_pages)
    cost = pricing.cost(model, input_tokens=input_tokens, output_tokens=output_tokens, ocr_pages=ocr_pages)
    return UsageRecord(
        created_at=datetime.now(UTC),
        request_id=context.request_id if context is not None else "",
        request_type=kind,
        method=storable_text(method, column=UsageEvent.method),
        path=storable_text(path, column=UsageEvent.path),
        status=outcome.recorded_status,
        latency_ms=round((now - started_at) * 1000, 3),
        ttfb_ms=round((outcome.first_byte_at - started_at) * 1000, 3) if outcome.first_byte_at else None,
        is_stream=is_stream,
        user_id=principal.user_id if principal else None,
        token_id=principal.token_id if principal else None,
        agent_id=agent_id or (principal.agent_id if principal else None),
        provider=provider,
        model=storable_text(model, column=UsageEvent.model) if model else None,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=_count(usage.total_tokens or input_tokens + output_tokens),
        ocr_pages=ocr_pages,
        input_cost_usd=cost.input_usd,
        output_cost_usd=cost.output_usd,
        ocr_cost_usd=cost.ocr_usd,
        max_tokens=_whole(request.get("max_completion_tokens")) or _whole(request.get("max_tokens")),
        temperature=_number(request.get("temperature")),
        top_p=_number(request.get("top_p")),
        error=outcome.error,
    )


def _whole(value: object) -> int | None:
    """A request parameter that fits its column, else None (it is only recorded, never enforced here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_STORED_INT else None


def _count(value: int | None) -> int:
    """A count the upstream reported, capped to what its column holds."""
    return min(value or 0, MAX_STORED_INT)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
