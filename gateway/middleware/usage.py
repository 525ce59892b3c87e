"""Usage capture in the chain: watch the response go by, then hand the recorder one row, whatever happened.

The body is observed, never held: each chunk goes on to the client as it came. The row is made in `finally`,
so an error, a client that went away (recorded as 499, with the usage seen so far) or a cancelled task is
still recorded. A `GatewayError` gives the row its status and its code as the row's `error`, also when it was
raised after the response started: an upstream answer that broke off is 502 `upstream_incomplete`, with the
tokens seen before the break.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.principals import Principal
from gateway.context import RequestContext
from gateway.errors import GatewayError, InternalError
from gateway.usage.observers import ObservedUsage, ResponseObserver, observer_for
from gateway.usage.pricing import PriceTable
from gateway.usage.recorder import UsageRecord, UsageRecorder

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer was complete
# The usage columns are INTEGER (32 bits on Postgres): a larger value would fail the whole batch's INSERT.
MAX_STORED_INT = 2**31 - 1


@dataclass(slots=True)
class _Observation:
    """One request's response, as seen passing through `send`."""

    status: int | None = None
    first_byte_at: float | None = None
    completed: bool = False
    observer: ResponseObserver | None = None


class UsageMiddleware:
    """Records a usage row for every request that reaches it."""

    def __init__(
        self, app: ASGIApp, *, recorder: UsageRecorder, pricing: PriceTable, kind: str, provider: str | None
    ) -> None:
        self.app = app
        self.recorder = recorder
        self.pricing = pricing
        self.kind = kind
        self.provider = provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        seen = _Observation()

        async def send_observing_usage(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
                content_type, content_encoding = _content_headers(message.get("headers", ()))
                seen.observer = observer_for(
                    self.kind, content_type=content_type, content_encoding=content_encoding
                )
            elif message["type"] == "http.response.body":
                if seen.first_byte_at is None:
                    seen.first_byte_at = time.perf_counter()
                body = message.get("body", b"")
                if body and seen.observer is not None:
                    seen.observer.feed(body)
                if not message.get("more_body", False):
                    seen.completed = True
            await send(message)

        failure: GatewayError | None = None
        try:
            await self.app(scope, receive, send_observing_usage)
        except GatewayError as exc:
            failure = exc
            raise
        except Exception:
            failure = InternalError()
            raise
        finally:
            self.recorder.record(self._record(scope, seen, failure, started_at))

    def _record(
        self, scope: Scope, seen: _Observation, failure: GatewayError | None, started_at: float
    ) -> UsageRecord:
        now = time.perf_counter()
        context = RequestContext.of(scope)
        request: dict[str, Any] = (context.request_json if context else None) or {}
        principal = context.principal if context and isinstance(context.principal, Principal) else None
        observed = seen.observer.result() if seen.observer is not None else ObservedUsage()
        if failure is not None:
            status = failure.status_code
        else:
            status = seen.status if seen.completed and seen.status else CLIENT_CLOSED_REQUEST
        model = _text(request.get("model")) or observed.model
        input_tokens, output_tokens = _count(observed.input_tokens), _count(observed.output_tokens)
        ocr_pages = _count(observed.ocr_pages)
        cost = self.pricing.cost(
            model, input_tokens=input_tokens, output_tokens=output_tokens, ocr_pages=ocr_pages
        )
        return UsageRecord(
            created_at=datetime.now(UTC),
            request_id=context.request_id if context else "",
            request_type=self.kind,
            method=scope["method"],
            path=scope["path"][:500],
            status=status,
            latency_ms=round((now - started_at) * 1000, 3),
            ttfb_ms=round((seen.first_byte_at - started_at) * 1000, 3) if seen.first_byte_at else None,
            is_stream=request.get("stream") is True,
            user_id=principal.user_id if principal else None,
            token_id=principal.token_id if principal else None,
            agent_id=principal.agent_id if principal else None,
            provider=self.provider,
            model=model[:200] if model else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=_count(observed.total_tokens or input_tokens + output_tokens),
            ocr_pages=ocr_pages,
            input_cost_usd=cost.input_usd,
            output_cost_usd=cost.output_usd,
            ocr_cost_usd=cost.ocr_usd,
            max_tokens=_whole(request.get("max_completion_tokens")) or _whole(request.get("max_tokens")),
            temperature=_number(request.get("temperature")),
            top_p=_number(request.get("top_p")),
            error=failure.code if failure is not None else None,
        )


def _content_headers(headers: Any) -> tuple[str | None, str | None]:
    content_type = content_encoding = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-type":
            content_type = value.decode("latin-1")
        elif lowered == b"content-encoding":
            content_encoding = value.decode("latin-1")
    return content_type, content_encoding


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


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
