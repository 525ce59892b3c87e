"""Model prices: name normalisation, exact cost arithmetic, and loading and validating price files."""

from __future__ import annotations

import json
import random
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.usage.pricing import Cost, ModelPrice, PriceTable, PricingError, normalise_model

REQUIRED_MODELS = [
    *("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini", "o3", "o4-mini", "o3-mini", "o1"),
    *("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-3.5-turbo"),
    *("mistral-large", "mistral-medium", "mistral-small", "ministral-8b", "ministral-3b", "codestral"),
    *("pixtral-large", "open-mistral-nemo"),
    *("@cf/meta/llama-3.1-8b-instruct", "@cf/meta/llama-3.3-70b-instruct-fp8-fast"),
    "@cf/mistral/mistral-7b-instruct-v0.1",
]


@pytest.fixture(scope="module")
def shipped() -> PriceTable:
    return PriceTable.load()


def write_prices(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def table_of(tmp_path: Path, models: dict[str, Any], *, per_page: float = 0.001) -> PriceTable:
    return PriceTable.load(write_prices(tmp_path, {"ocr": {"per_page": per_page}, "models": models}))


def test_shipped_table_lists_every_required_model_and_the_mistral_ocr_page_price(shipped: PriceTable) -> None:
    assert [name for name in REQUIRED_MODELS if shipped.price_of(name) is None] == []
    assert shipped.ocr_price_per_page == Decimal("0.001")
    document = json.loads((Path(__file__).parents[3] / "gateway/usage/prices.json").read_text())
    assert document["currency"] == "USD"
    assert "PRICING_FILE" in document["source"]


def test_gpt_4_1_costs_are_hand_computed(shipped: PriceTable) -> None:
    cost = shipped.cost("gpt-4.1", input_tokens=1_000, output_tokens=500)

    # 1,000 x $2 / 1M + 500 x $8 / 1M
    assert cost == Cost(input_usd=0.002, output_usd=0.004, ocr_usd=0.0)
    assert cost.total_usd == 0.006


def test_workers_ai_and_mistral_costs_are_hand_computed(shipped: PriceTable) -> None:
    llama = shipped.cost("@cf/meta/llama-3.1-8b-instruct", input_tokens=1_000_000, output_tokens=2_000)
    assert (llama.input_usd, llama.output_usd, llama.total_usd) == (0.282, 0.001654, 0.283654)

    mistral = shipped.cost("mistral-large-2411", input_tokens=10_000, output_tokens=3_000)
    assert (mistral.input_usd, mistral.output_usd, mistral.total_usd) == (0.02, 0.018, 0.038)


def test_decimal_arithmetic_gives_exact_sums(tmp_path: Path) -> None:
    table = table_of(tmp_path, {"m": {"input": 0.1, "output": 0.2}})

    cost = table.cost("m", input_tokens=1_000_000, output_tokens=1_000_000)

    assert table.price_of("m") == ModelPrice(Decimal("0.1"), Decimal("0.2"))
    assert cost.total_usd == 0.3


def test_amounts_are_rounded_to_a_billionth_of_a_dollar(tmp_path: Path) -> None:
    table = table_of(tmp_path, {"m": {"input": 0.0004, "output": 0.333}})

    cost = table.cost("m", input_tokens=1, output_tokens=7)

    assert cost == Cost(input_usd=0.0, output_usd=0.000002331, ocr_usd=0.0)


def test_ocr_pages_are_costed_at_the_page_price_whatever_the_model(shipped: PriceTable) -> None:
    assert shipped.cost("mistral-ocr-latest", input_tokens=None, output_tokens=None, ocr_pages=250) == Cost(
        input_usd=0.0, output_usd=0.0, ocr_usd=0.25
    )
    assert shipped.cost(None, input_tokens=None, output_tokens=None, ocr_pages=3).total_usd == 0.003


def test_unknown_model_costs_nothing_and_still_gives_a_cost(shipped: PriceTable) -> None:
    assert shipped.price_of("no-such-model") is None
    assert shipped.price_of(None) is None
    assert shipped.price_of("") is None
    for model in ("no-such-model", None):
        cost = shipped.cost(model, input_tokens=1_000, output_tokens=1_000)
        assert cost == Cost(input_usd=0.0, output_usd=0.0, ocr_usd=0.0)
        assert cost.total_usd == 0.0


def test_negative_counts_are_rejected(shipped: PriceTable) -> None:
    with pytest.raises(ValueError, match="counts must be >= 0"):
        shipped.cost("gpt-4.1", input_tokens=-1, output_tokens=0)


@pytest.mark.parametrize(
    ("model", "normalised"),
    [
        ("gpt-4.1", "gpt-4.1"),
        ("GPT-4.1", "gpt-4.1"),
        ("openai/gpt-4.1", "gpt-4.1"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("mistral-large-2411", "mistral-large"),
        ("mistral/mistral-small-latest", "mistral-small"),
        ("o3-mini", "o3-mini"),
        ("@cf/meta/llama-3.1-8b-instruct", "@cf/meta/llama-3.1-8b-instruct"),
        ("workers-ai/@CF/meta/llama-3.1-8b-instruct", "@cf/meta/llama-3.1-8b-instruct"),
        ("@cf/mistral/mistral-7b-instruct-v0.1", "@cf/mistral/mistral-7b-instruct-v0.1"),
    ],
)
def test_normalise_model(model: str, normalised: str) -> None:
    assert normalise_model(model) == normalised


@pytest.mark.parametrize(
    ("model", "listed_as"),
    [
        ("openai/gpt-4.1", "gpt-4.1"),
        ("GPT-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("mistral-large-latest", "mistral-large"),
        ("mistralai/codestral-2501", "codestral"),
        ("workers-ai/@cf/meta/llama-3.3-70b-instruct-fp8-fast", "@cf/meta/llama-3.3-70b-instruct-fp8-fast"),
    ],
)
def test_prefixes_and_snapshots_are_priced_as_the_listed_model(
    shipped: PriceTable, model: str, listed_as: str
) -> None:
    assert shipped.price_of(model) is not None
    assert shipped.price_of(model) == shipped.price_of(listed_as)


def test_an_exactly_listed_snapshot_wins_over_its_base(tmp_path: Path) -> None:
    table = table_of(
        tmp_path, {"gpt-4o": {"input": 2.5, "output": 10}, "gpt-4o-2024-05-13": {"input": 5, "output": 15}}
    )

    assert table.price_of("openai/gpt-4o-2024-05-13") == ModelPrice(Decimal(5), Decimal(15))
    assert table.price_of("gpt-4o-2024-08-06") == ModelPrice(Decimal("2.5"), Decimal(10))


def test_a_shorter_listed_name_never_prices_a_longer_one(tmp_path: Path, shipped: PriceTable) -> None:
    only_gpt_4 = table_of(tmp_path, {"gpt-4": {"input": 30, "output": 60}})

    assert only_gpt_4.price_of("gpt-4o-mini") is None
    assert only_gpt_4.price_of("gpt-4-0613") == ModelPrice(Decimal(30), Decimal(60))
    assert only_gpt_4.cost("gpt-4o-mini", input_tokens=1_000, output_tokens=1_000).total_usd == 0.0
    assert shipped.price_of("gpt-4o-mini") == ModelPrice(Decimal("0.15"), Decimal("0.6"))


def test_a_replacement_file_replaces_the_whole_table(tmp_path: Path) -> None:
    path = write_prices(
        tmp_path,
        {
            "currency": "USD",
            "ocr": {"per_page": 0.002},
            "models": {"OpenAI/My-Model": {"input": 1, "output": 3}},
        },
    )

    for table in (PriceTable.load(path), PriceTable.load(str(path))):
        assert table.price_of("my-model") == ModelPrice(Decimal(1), Decimal(3))
        assert table.price_of("gpt-4.1") is None
        assert table.cost("my-model", input_tokens=500, output_tokens=500, ocr_pages=10).total_usd == 0.022


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"ocr": {"per_page": NaN}, "models": {}}', "NaN is not a number"),
        (
            '{"ocr": {"per_page": 0}, "models": {"m": {"input": 1, "output": 1}, "m": {"input": 1, "output": 1}}}',
            "duplicate key 'm'",
        ),
        ([], "top level must be a JSON object"),
        ({"models": {}}, "missing 'ocr'"),
        ({"ocr": {}, "models": {}}, "'per_page'"),
        ({"ocr": {"per_page": 0.001}}, "missing 'models'"),
        ({"ocr": {"per_page": 0.001}, "models": []}, "missing 'models'"),
        ({"ocr": {"per_page": -0.001}, "models": {}}, "ocr.per_page must be a number >= 0"),
        ({"ocr": {"per_page": "0.001"}, "models": {}}, "ocr.per_page must be a number >= 0"),
        ({"ocr": {"per_page": 0}, "models": {"m": {"input": 1}}}, "models['m'] must be an object"),
        ({"ocr": {"per_page": 0}, "models": {"m": 1}}, "models['m'] must be an object"),
        ({"ocr": {"per_page": 0}, "models": {"m": {"input": -1, "output": 1}}}, "models['m'].input must be"),
        (
            {"ocr": {"per_page": 0}, "models": {"m": {"input": 1, "output": True}}},
            "models['m'].output must be",
        ),
        (
            {"ocr": {"per_page": 0}, "models": {"m": {"input": 1, "output": None}}},
            "models['m'].output must be",
        ),
        ({"ocr": {"per_page": 0}, "models": {"": {"input": 1, "output": 1}}}, "is not a model name"),
        (
            {
                "ocr": {"per_page": 0},
                "models": {"M": {"input": 1, "output": 1}, "m": {"input": 2, "output": 2}},
            },
            "listed twice",
        ),
        ({"currency": "EUR", "ocr": {"per_page": 0}, "models": {}}, "currency must be 'USD'"),
    ],
)
def test_a_bad_file_raises_pricing_error_naming_the_file(tmp_path: Path, document: Any, problem: str) -> None:
    path = write_prices(tmp_path, document)

    with pytest.raises(PricingError) as raised:
        PriceTable.load(path)

    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


def test_a_missing_file_raises_pricing_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"

    with pytest.raises(PricingError, match="cannot read") as raised:
        PriceTable.load(path)

    assert str(path) in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_costs_are_the_exact_decimal_product_rounded_half_even_to_the_nano_dollar() -> None:
    """The cost is computed in integers for speed; it must equal the exact decimal definition, ties and huge
    counts included (a float or a rounding slip would drift the analytics from the provider's bill)."""
    exact = Context(prec=60)
    rng = random.Random(7)
    prices = ["0.15", "2", "0.000123456789123", "1.1e-10", "0.0000000015", "0.0000000025", "0.827", "3e2"]
    for _ in range(20_000):
        price = Decimal(rng.choice([*prices, str(rng.randint(0, 10**6) / 10 ** rng.randint(0, 12))]))
        count = rng.choice([1, 3, rng.randint(0, 10**7), rng.randint(0, 2**31)])
        table = PriceTable({"m": ModelPrice(price, price)}, ocr_price_per_page=price)
        cost = table.cost("m", input_tokens=count, output_tokens=0, ocr_pages=count)
        per_million = exact.divide(exact.multiply(Decimal(count), price), Decimal(1_000_000))
        per_page = exact.multiply(Decimal(count), price)
        assert cost.input_usd == float(per_million.quantize(Decimal("1e-9"), context=exact))
        assert cost.ocr_usd == float(per_page.quantize(Decimal("1e-9"), context=exact))
