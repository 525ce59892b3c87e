"""A request's worst case before it goes upstream: the prompt's tokens bounded from above, and the output its
`max_completion_tokens` (or `max_tokens`, or a default) allows, at the model's prices.

The prompt's bound is its text's UTF-8 bytes (no tokenizer's token is shorter than a byte of the text it encodes)
plus a few tokens a message for the chat format's framing. The prices come in per million tokens, as the price
table has them (`gateway.usage.pricing`, which this feature does not import).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Protocol

from gateway.budgets.limits import NANO

PER_MESSAGE_TOKENS = 4  # a chat format's framing of each message (role, separators)
_NANO_PER_TOKEN = Decimal(NANO) / Decimal(1_000_000)  # prices are per million tokens


class TokenPrices(Protocol):
    """A model's prices, as the price table has them (`gateway.usage.pricing.ModelPrice`)."""

    @property
    def input_per_million(self) -> Decimal: ...

    @property
    def output_per_million(self) -> Decimal: ...


def worst_case(messages: object, output_tokens: int, price: TokenPrices | None) -> tuple[int, int]:
    """(nano-USD, tokens) at most, each at least 1 (so that a spent budget refuses); an unpriced model (`price`
    None) costs 1 nano-USD."""
    prompt = prompt_tokens(messages)
    tokens = prompt + output_tokens
    if price is None:
        return 1, tokens
    usd = (prompt * price.input_per_million + output_tokens * price.output_per_million) * _NANO_PER_TOKEN
    return max(1, math.ceil(usd)), tokens


def max_tokens(request: dict[str, Any]) -> int | None:
    """The output a chat request allows itself: `max_completion_tokens`, else `max_tokens`, when a whole number."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = request.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def prompt_tokens(messages: object) -> int:
    """An upper bound of the prompt's tokens: its text's UTF-8 bytes, plus each message's framing."""
    if not isinstance(messages, list):
        return PER_MESSAGE_TOKENS
    return sum(_text_bytes(message) + PER_MESSAGE_TOKENS for message in messages)


def _text_bytes(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return sum(_text_bytes(item) for item in value.values())
    if isinstance(value, list):
        return sum(_text_bytes(item) for item in value)
    return 0
