"""Model prices and what a request cost: USD per million input and output tokens per model, and per OCR page.

A price file is JSON: the shipped ``prices.json``, or the file ``PRICING_FILE`` names::

    {
      "currency": "USD",                  optional; when present it must be "USD"
      "source": "where the prices come from",                    optional; ignored
      "ocr": {"per_page": 0.001},         USD per OCR page, whatever the OCR model
      "models": {                         USD per million tokens, per model
        "gpt-4.1": {"input": 2.0, "output": 8.0},
        "@cf/meta/llama-3.1-8b-instruct": {"input": 0.282, "output": 0.827}
      }
    }

Prices are JSON numbers >= 0, read as exact decimals; other keys are ignored. Model names are stored as
`normalise_model` spells them before its snapshot step, so a file may list one dated snapshot at its own price.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

__all__ = ["Cost", "ModelPrice", "PriceTable", "PricingError", "normalise_model"]

SHIPPED_PRICES = "prices.json"
_MILLION = Decimal(1_000_000)
_FOUND_AT_MOST = 4096
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4}|latest)$")


class PricingError(ValueError):
    """A price file that cannot be read or is malformed; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input_per_million: Decimal  # USD per million input tokens
    output_per_million: Decimal  # USD per million output tokens


@dataclass(frozen=True, slots=True)
class Cost:
    """Estimated USD, each part rounded to 1e-9."""

    input_usd: float
    output_usd: float
    ocr_usd: float

    @property
    def total_usd(self) -> float:
        return round(self.input_usd + self.output_usd + self.ocr_usd, 9)


def normalise_model(model: str) -> str:
    """The name a model is priced under: lower-case, without provider prefix or dated snapshot.

    A provider prefix is everything up to the last ``/`` ("openai/gpt-4.1" -> "gpt-4.1"), except that a Workers AI
    name keeps its whole ``@cf/...`` or ``@hf/...`` form, because its vendor segment is part of the name
    ("workers-ai/@cf/meta/llama-3.1-8b-instruct" -> "@cf/meta/llama-3.1-8b-instruct"). A snapshot suffix is
    ``-YYYY-MM-DD`` ("gpt-4o-2024-08-06"), ``-NNNN`` ("mistral-large-2411", "gpt-3.5-turbo-0125") or ``-latest``;
    other version suffixes ("-v0.1") stay.
    """
    return _SNAPSHOT_SUFFIX.sub("", _canonical_name(model))


def _canonical_name(model: str) -> str:
    """Lower-case and without provider prefix, but with any snapshot suffix still on."""
    segments = model.strip().lower().split("/")
    for index, segment in enumerate(segments):
        if segment.startswith("@"):
            return "/".join(segments[index:])
    return segments[-1]


_UNPRICED = ModelPrice(
    input_per_million=Decimal(0), output_per_million=Decimal(0)
)  # an unknown model costs 0


@dataclass(frozen=True, slots=True, eq=False)
class PriceTable:
    """Prices by model name (keys as `_canonical_name` spells them) and the OCR price per page, in USD."""

    models: Mapping[str, ModelPrice]
    ocr_price_per_page: Decimal
    # The price found for each model name asked about (requests name few models, each many times); bounded, since
    # a client can send any name.
    _found: dict[str, ModelPrice | None] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        models = {_canonical_name(name): price for name, price in self.models.items()}
        object.__setattr__(self, "models", MappingProxyType(models))

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """Read and validate a price file; ``None`` reads the shipped ``prices.json``.

        Raises `PricingError` when the file cannot be read, is not JSON, or breaks the format above.
        """
        source = resources.files(__name__.rpartition(".")[0]) / SHIPPED_PRICES if path is None else Path(path)
        origin = str(source)
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PricingError(f"{origin}: cannot read the price file: {exc}") from exc
        try:
            document = json.loads(
                text,
                parse_float=Decimal,
                parse_int=Decimal,
                parse_constant=_reject_constant,
                object_pairs_hook=_reject_duplicate_keys,
            )
        except ValueError as exc:
            raise PricingError(f"{origin}: not valid JSON: {exc}") from exc
        return _parse(document, origin)

    def price_of(self, model: str | None) -> ModelPrice | None:
        """The model's price: its exact name first, then without the snapshot suffix; None when unknown.

        No prefix matching: "gpt-4" never prices "gpt-4o-mini".
        """
        if not model:
            return None
        found = self._found
        if model in found:
            return found[model]
        name = _canonical_name(model)
        price = self.models.get(name)
        if price is None:
            price = self.models.get(_SNAPSHOT_SUFFIX.sub("", name))
        if len(found) < _FOUND_AT_MOST:
            found[model] = price
        return price

    def cost(
        self,
        model: str | None,
        *,
        input_tokens: int | None,
        output_tokens: int | None,
        ocr_pages: int | None = None,
    ) -> Cost:
        """What the counts cost: tokens at the model's price (0 when unknown), pages at the OCR page price.

        ``None`` counts as 0. Raises ValueError for a negative count.
        """
        counts = (input_tokens or 0, output_tokens or 0, ocr_pages or 0)
        if min(counts) < 0:
            raise ValueError(f"counts must be >= 0, got {counts}")
        price = self.price_of(model) or _UNPRICED
        return Cost(
            input_usd=_usd(counts[0], price.input_per_million, per=_MILLION),
            output_usd=_usd(counts[1], price.output_per_million, per=_MILLION),
            ocr_usd=_usd(counts[2], self.ocr_price_per_page),
        )


def _usd(count: int, price: Decimal, *, per: Decimal = Decimal(1)) -> float:
    """``count`` units at ``price`` USD per ``per`` units, computed exactly, rounded half-even to 1e-9 at the end.

    In integers (nano-USD) rather than Decimal arithmetic, which cost a few µs a call on every request."""
    if not count or not price:
        return 0.0  # most rows: no pages on a chat, no price for an unknown model
    numerator, denominator = _nano_usd_ratio(price, per)
    nano, rest = divmod(count * numerator, denominator)
    if 2 * rest > denominator or (2 * rest == denominator and nano % 2):
        nano += 1
    return nano / 1_000_000_000  # int / int rounds once, correctly, as float(Decimal) does


@functools.lru_cache(maxsize=1024)
def _nano_usd_ratio(price: Decimal, per: Decimal) -> tuple[int, int]:
    """Nano-USD per unit as a fraction of integers: one unit costs numerator / denominator nano-USD."""
    units, exponent = _digits(price)
    numerator, denominator = units, _digits(per)[0]
    scale = exponent - _digits(per)[1] + 9  # nano-USD = numerator * 10**scale / denominator
    if scale >= 0:
        numerator *= 10**scale
    else:
        denominator *= 10**-scale
    return numerator, denominator


def _digits(value: Decimal) -> tuple[int, int]:
    """A finite, non-negative decimal as (units, exponent): value == units * 10**exponent."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    return int("".join(map(str, digits)) or "0"), exponent


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document


def _parse(document: Any, origin: str) -> PriceTable:
    """Validate a decoded price file into a `PriceTable`; raises `PricingError` naming ``origin``."""

    def fail(problem: str) -> PricingError:
        return PricingError(f"{origin}: {problem}")

    if not isinstance(document, dict):
        raise fail("the top level must be a JSON object")
    if document.get("currency", "USD") != "USD":
        raise fail(f"currency must be 'USD', got {document['currency']!r}")
    ocr, models = document.get("ocr"), document.get("models")
    if not isinstance(ocr, dict) or "per_page" not in ocr:
        raise fail("missing 'ocr' object with a 'per_page' price")
    if not isinstance(models, dict):
        raise fail("missing 'models' object")
    prices: dict[str, ModelPrice] = {}
    for name, entry in models.items():
        key = _canonical_name(name)
        if not key:
            raise fail(f"models: {name!r} is not a model name")
        if key in prices:
            raise fail(f"models: {name!r} is listed twice (as {key!r})")
        if not isinstance(entry, dict) or "input" not in entry or "output" not in entry:
            raise fail(f"models[{name!r}] must be an object with 'input' and 'output' prices")
        prices[key] = ModelPrice(
            input_per_million=_price(entry["input"], f"models[{name!r}].input", fail),
            output_per_million=_price(entry["output"], f"models[{name!r}].output", fail),
        )
    return PriceTable(prices, ocr_price_per_page=_price(ocr["per_page"], "ocr.per_page", fail))


def _price(value: Any, where: str, fail: Callable[[str], PricingError]) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise fail(f"{where} must be a number >= 0, got {value!r}")
    return value
