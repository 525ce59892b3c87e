"""The benchmark's figures, pooled over the rounds, and the markdown report: values, ratios, the issue's targets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MS = 1000.0
US = 1_000_000.0


@dataclass(frozen=True)
class Scenario:
    """One kind of load: how many clients at once, whether they stream, and which tool drives it."""

    key: str
    title: str
    concurrency: int
    stream: bool
    tool: str  # "wrk" or "loadgen"


@dataclass
class Pooled:
    """One target's results in one scenario, pooled over the rounds."""

    completed: int = 0
    errors: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    latency_us: Counter[int] = field(default_factory=Counter)  # from wrk's histograms
    latencies: list[float] = field(default_factory=list)  # seconds, from the loadgen
    ttfbs: list[float] = field(default_factory=list)
    target_cpu: float = 0.0  # CPU seconds the target's processes used while measured
    load_cpu: float = 0.0  # CPU seconds of the upstream and the load generator meanwhile
    rounds_cpu: list[tuple[int, float]] = field(default_factory=list)  # (requests, target CPU s) per round

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else float("nan")

    @property
    def cpu_per_request(self) -> float:
        return self.target_cpu / self.completed if self.completed else float("nan")


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN when there is nothing to rank."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def histogram_percentile(histogram: Counter[int], fraction: float) -> float:
    """Nearest-rank percentile of a (value → count) histogram; NaN when it is empty."""
    total = sum(histogram.values())
    if not total:
        return float("nan")
    rank = min(total, max(1, round(fraction * total)))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


@dataclass(frozen=True)
class Figure:
    """One row: a value per target. `difference` rows are already "minus direct" and have no ratio to it."""

    key: str
    title: str
    unit: str
    values: dict[str, float]
    difference: bool = False


def build_figures(pooled: dict[tuple[str, str], Pooled], targets: list[str]) -> list[Figure]:
    def per(scenario: str, pick: Callable[[Pooled], float]) -> dict[str, float]:
        return {t: pick(pooled[scenario, t]) if (scenario, t) in pooled else float("nan") for t in targets}

    def minus_direct(values: dict[str, float]) -> dict[str, float]:
        return {t: v - values["direct"] for t, v in values.items()}

    p50 = per("latency", lambda p: histogram_percentile(p.latency_us, 0.50) / 1000)
    p99 = per("latency", lambda p: histogram_percentile(p.latency_us, 0.99) / 1000)
    ttfb1_50 = per("stream-latency", lambda p: percentile(p.ttfbs, 0.50) * MS)
    ttfb1_99 = per("stream-latency", lambda p: percentile(p.ttfbs, 0.99) * MS)
    return [
        Figure("c1_p50", "non-streamed, 1 client: latency p50", "ms", p50),
        Figure("c1_p99", "non-streamed, 1 client: latency p99", "ms", p99),
        Figure("c1_added_p50", "non-streamed, 1 client: added latency p50", "ms", minus_direct(p50), True),
        Figure("c1_added_p99", "non-streamed, 1 client: added latency p99", "ms", minus_direct(p99), True),
        Figure(
            "c64_rate", "non-streamed, 64 clients: throughput", "req/s", per("throughput", lambda p: p.rate)
        ),
        Figure(
            "c64_cpu",
            "non-streamed, 64 clients: CPU time per request",
            "µs",
            per("throughput", lambda p: p.cpu_per_request * US),
        ),
        Figure("s64_rate", "streamed, 64 clients: throughput", "streams/s", per("streams", lambda p: p.rate)),
        Figure(
            "s64_ttfb50",
            "streamed, 64 clients: first byte p50",
            "ms",
            per("streams", lambda p: percentile(p.ttfbs, 0.50) * MS),
        ),
        Figure(
            "s64_ttfb99",
            "streamed, 64 clients: first byte p99",
            "ms",
            per("streams", lambda p: percentile(p.ttfbs, 0.99) * MS),
        ),
        Figure("s1_ttfb50", "streamed, 1 client: first byte p50", "ms", ttfb1_50),
        Figure("s1_ttfb99", "streamed, 1 client: first byte p99", "ms", ttfb1_99),
        Figure("s1_added50", "streamed, 1 client: first byte added p50", "ms", minus_direct(ttfb1_50), True),
    ]


def _number(value: float, unit: str) -> str:
    if value != value:  # NaN: not measured
        return "—"
    if unit.endswith("/s") or unit == "µs":
        return f"{value:,.0f}"
    return f"{value:.3f}"


def _ratio(value: float, base: float) -> str:
    if value != value or base != base or not base:
        return "—"
    ratio = value / base
    return f"{ratio:.2f}x" if ratio < 100 else f"{ratio:,.0f}x"


LABELS = {"gateway-2w": "gateway, 2 workers", "gateway-limited": "gateway, limited token"}


def label(target: str) -> str:
    return LABELS.get(target, target)


def values_table(rows: list[Figure], targets: list[str]) -> str:
    lines = [
        "| figure | unit | " + " | ".join(label(t) for t in targets) + " |",
        "|---|---|" + "--:|" * len(targets),
    ]
    for row in rows:
        cells = [_number(row.values[t], row.unit) for t in targets]
        lines.append(f"| {row.title} | {row.unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(rows: list[Figure], targets: list[str], base: str) -> str:
    others = [t for t in targets if t != base]
    lines = [
        f"| figure (÷ {label(base)}) | " + " | ".join(label(t) for t in others) + " |",
        "|---|" + "--:|" * len(others),
    ]
    for row in rows:
        if row.difference and base == "direct":
            continue  # a difference from direct has no ratio to it
        cells = [_ratio(row.values[t], row.values[base]) for t in others]
        lines.append(f"| {row.title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Check:
    """One of the issue's targets: what was measured against what was asked."""

    title: str
    measured: float
    goal: str
    met: bool | None  # None: could not be measured in this run
    unit: str = ""

    def row(self) -> str:
        value = "—" if self.measured != self.measured else f"{self.measured:.2f}{self.unit}"
        verdict = {True: "met", False: "**missed**", None: "not measured"}[self.met]
        return f"| {self.title} | {value} | {self.goal} | {verdict} |"


def checks(rows: list[Figure], workers_gain: float) -> list[Check]:
    by = {row.key: row.values for row in rows}

    def ratio(key: str, a: str, b: str) -> float:
        return by[key].get(a, float("nan")) / by[key].get(b, float("nan")) if by[key].get(b) else float("nan")

    def at_most(value: float, limit: float) -> bool | None:
        return None if value != value else value <= limit

    def at_least(value: float, limit: float) -> bool | None:
        return None if value != value else value >= limit

    added50, added99 = by["c1_added_p50"]["gateway"], by["c1_added_p99"]["gateway"]
    vs_litellm, vs_nginx = ratio("c64_rate", "gateway", "litellm"), ratio("c64_rate", "gateway", "nginx")
    streams_vs_litellm = ratio("s64_rate", "gateway", "litellm")
    vs_passthrough = ratio("c64_rate", "gateway", "passthrough")
    streams_vs_passthrough = ratio("s64_rate", "gateway", "passthrough")
    ttfb_added = by["s1_added50"]["gateway"]
    return [
        Check("added latency vs direct, 1 client, p50", added50, "≤ 0.5 ms", at_most(added50, 0.5), " ms"),
        Check("added latency vs direct, 1 client, p99", added99, "≤ 2 ms", at_most(added99, 2.0), " ms"),
        Check("throughput, 64 clients ÷ LiteLLM", vs_litellm, "≥ 12x", at_least(vs_litellm, 12), "x"),
        Check("throughput, 64 clients ÷ nginx", vs_nginx, "≥ 0.15x", at_least(vs_nginx, 0.15), "x"),
        Check(
            "streams/s, 64 clients ÷ LiteLLM",
            streams_vs_litellm,
            "≥ 30x",
            at_least(streams_vs_litellm, 30),
            "x",
        ),
        Check("throughput ÷ pass-through", vs_passthrough, "≥ 1x", at_least(vs_passthrough, 1.0), "x"),
        Check(
            "streams/s ÷ pass-through",
            streams_vs_passthrough,
            "≥ 1x",
            at_least(streams_vs_passthrough, 1.0),
            "x",
        ),
        Check(
            "first byte added, streamed, 1 client, p50", ttfb_added, "≤ 1 ms", at_most(ttfb_added, 1.0), " ms"
        ),
        Check(
            "2 workers ÷ 1 worker, given a core each (by CPU time per request)",
            workers_gain,
            "≈ 2x",
            at_least(workers_gain, 1.8),
            "x",
        ),
    ]


def checks_table(found: list[Check]) -> str:
    return "\n".join(
        ["| target | measured | goal | verdict |", "|---|--:|---|---|", *(c.row() for c in found)]
    )
