"""The metrics' in-process tallies, folded into prometheus-client's metrics, render as if every request had been
observed one at a time (the fold adds to prometheus-client's histogram values directly: this pins it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import ADDED_LATENCY_BUCKETS, UPSTREAM_LATENCY_BUCKETS, ExchangeTally, Metrics

# On the bounds (a bucket holds values <= its bound), between them, past the last one, and zero.
LATENCIES = [0.0, 0.0001, 0.00011, 0.0004, 0.001, 0.0033, 0.2, 0.99, 1.0, 7.5, 0.00005, 0.0001]


def samples(text: bytes, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metric family `name`, by sample name and labels."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name == name:
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_folded_latencies_render_as_observed_one_at_a_time() -> None:
    metrics = Metrics()
    reference = CollectorRegistry()
    observed = Histogram(
        "gateway_added_latency_seconds", "", ["route"], buckets=ADDED_LATENCY_BUCKETS, registry=reference
    )
    for seconds in LATENCIES:
        metrics.responded("/v1/chat/completions", 200, seconds)
        observed.labels("/v1/chat/completions").observe(seconds)
    metrics.fold()
    metrics.responded("/v1/chat/completions", 200, 0.03)  # a second fold adds to the first
    observed.labels("/v1/chat/completions").observe(0.03)
    metrics.fold()

    rendered = samples(metrics.render(), "gateway_added_latency_seconds")
    assert rendered == samples(generate_latest(reference), "gateway_added_latency_seconds")
    assert rendered[("gateway_added_latency_seconds_count", (("route", "/v1/chat/completions"),))] == 13


def test_requests_are_counted_by_route_and_status_and_only_upstream_ones_timed() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.responded("/v1/chat/completions", 200, 0.0002)
    metrics.responded("/v1/chat/completions", 502, 0.0001)
    metrics.responded("unmatched", 404, None)
    metrics.responded("unmatched", 404, None)
    metrics.fold()
    text = metrics.render()

    requests = samples(text, "gateway_requests")
    assert requests == {
        ("gateway_requests_total", (("route", "/v1/chat/completions"), ("status", "200"))): 3,
        ("gateway_requests_total", (("route", "/v1/chat/completions"), ("status", "502"))): 1,
        ("gateway_requests_total", (("route", "unmatched"), ("status", "404"))): 2,
    }
    added = samples(text, "gateway_added_latency_seconds")
    assert {labels for _, labels in added} == {
        (("route", "/v1/chat/completions"),),
        *((("le", le), ("route", "/v1/chat/completions")) for le in _bucket_labels(ADDED_LATENCY_BUCKETS)),
    }


def test_an_upstream_clients_tally_is_folded_once() -> None:
    metrics = Metrics()
    tally = ExchangeTally()
    tally.latency.observe(0.02)
    tally.latency.observe(45.0)
    tally.failed("upstream_unavailable")
    tally.failed("upstream_unavailable")
    tally.failed("upstream_timeout")
    metrics.fold_upstream("openai", tally)
    metrics.fold_upstream("openai", tally)  # drained: nothing more
    text = metrics.render()

    errors = samples(text, "gateway_upstream_errors")
    assert errors == {
        ("gateway_upstream_errors_total", (("kind", "upstream_unavailable"), ("upstream", "openai"))): 2,
        ("gateway_upstream_errors_total", (("kind", "upstream_timeout"), ("upstream", "openai"))): 1,
    }
    latency = samples(text, "gateway_upstream_latency_seconds")
    assert latency[("gateway_upstream_latency_seconds_count", (("upstream", "openai"),))] == 2
    assert latency[("gateway_upstream_latency_seconds_sum", (("upstream", "openai"),))] == 45.02
    assert (
        latency[("gateway_upstream_latency_seconds_bucket", (("le", "0.025"), ("upstream", "openai")))] == 1
    )
    assert latency[("gateway_upstream_latency_seconds_bucket", (("le", "30.0"), ("upstream", "openai")))] == 1
    assert len(UPSTREAM_LATENCY_BUCKETS) + 1 == sum(1 for name, _ in latency if name.endswith("_bucket"))


def test_a_sampled_count_raises_its_counter_by_its_growth() -> None:
    metrics = Metrics()
    for total in (0, 5, 5, 12):
        metrics.sampled(metrics.usage_rows_written, total)

    assert samples(metrics.render(), "gateway_usage_rows_written") == {
        ("gateway_usage_rows_written_total", ()): 12
    }


def _bucket_labels(bounds: tuple[float, ...]) -> list[str]:
    return [*(repr(float(bound)) for bound in bounds), "+Inf"]
