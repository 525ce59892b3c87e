"""Admission in the chain: reserve the request's worst case against its principal's budgets and rate limits
before it goes upstream, and settle to what the usage capture saw after.

It runs below the usage step, which has read the JSON body (`RequestContext.request_json`) and will record the
request's row whatever happens (a refusal here included); the row, once made, settles the reservation
(`RequestContext.on_usage`): a whole answer, a stream the client cut (the tokens seen), an upstream failure (none).

The worst case of a chat request (`gateway.budgets.estimate`): the prompt's tokens bounded from above at the
model's input price, and `max_completion_tokens` (or `max_tokens`, or `BUDGET_DEFAULT_MAX_TOKENS`) at its output
price. OCR reserves one page's price, its pages being unknown before; Chroma costs nothing and only meets rate
limits. A model without a price is admitted at no cost, or refused when `BUDGET_UNKNOWN_MODEL=deny`, under a USD
limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.budgets.estimate import max_tokens, worst_case
from gateway.budgets.limits import NANO, USD
from gateway.budgets.service import Admission, Budgets
from gateway.context import RequestContext
from gateway.errors import PermissionDeniedError
from gateway.principals import AppliedLimit
from gateway.usage.pricing import PriceTable
from gateway.usage.recorder import UsageRecord


class AdmissionMiddleware:
    """Reserves before the call (429 when a limit does not fit), settles after. `kind` is the chain's: `chat`,
    `ocr` or `chroma` (rate limits only)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        budgets: Budgets,
        pricing: PriceTable,
        kind: str,
        default_max_tokens: int,
        deny_unknown_models: bool,
    ) -> None:
        self.app = app
        self.budgets = budgets
        self.pricing = pricing
        self.kind = kind
        self.default_max_tokens = default_max_tokens
        self.deny_unknown_models = deny_unknown_models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = RequestContext.of(scope) if scope["type"] == "http" else None
        principal = context.principal if context is not None else None
        if context is None or principal is None or not principal.limits:
            await self.app(scope, receive, send)  # no limits: no cost
            return
        spend = self.kind != "chroma"
        usd, tokens = self._worst_case(context.request_json or {}, principal.limits) if spend else (0, 0)
        admission = await self.budgets.admit(principal.limits, usd=usd, tokens=tokens, spend=spend)
        if admission is not None:
            context.on_usage = lambda row: self._settle(admission, row)
        await self.app(scope, receive, send)

    def _settle(self, admission: Admission, row: UsageRecord) -> None:
        self.budgets.settle(admission, cost_usd=row.cost_usd, tokens=row.total_tokens)

    def _worst_case(self, request: dict[str, Any], limits: Sequence[AppliedLimit]) -> tuple[int, int]:
        """The most the request may cost: nano-USD and tokens."""
        if self.kind == "ocr":
            return max(1, math.ceil(self.pricing.ocr_price_per_page * NANO)), 1
        model = request.get("model")
        price = self.pricing.price_of(model if isinstance(model, str) else None)
        if price is None and self.deny_unknown_models and any(limit.kind == USD for limit in limits):
            raise PermissionDeniedError(
                "This model has no price, and a USD limit applies: BUDGET_UNKNOWN_MODEL=deny refuses it.",
                code="model_not_priced",
                param="model",
            )
        output = max_tokens(request) or self.default_max_tokens
        return worst_case(request.get("messages"), output, price)
