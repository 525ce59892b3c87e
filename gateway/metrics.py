"""The gateway's metrics (`GET /metrics`): prometheus-client's, summed over the workers of `gateway serve --workers N`
by its multiprocess mode, and the plain in-process tallies the request path adds to.

In multiprocess mode every prometheus-client update takes a lock, a getpid and a write into a shared file map:
about 2 µs a counter increment and 2 µs a histogram observation (timeit, prometheus-client 0.26), 6 µs for the
three a proxied request makes, against 0.3 µs for a dict increment and a bucket found by bisect. So the request
path only tallies, and the tallies are folded into prometheus-client's metrics once a second and just before a
scrape renders: a scrape is exact for its own process, and at most a second behind for the other workers.
"""

from __future__ import annotations

import glob
import os
from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The gateway's own share of a request is tens of microseconds; an upstream's wait, milliseconds to minutes.
ADDED_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
UPSTREAM_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# The route label of a request no route took (404s, slash redirects): raw paths would make the series unbounded.
UNMATCHED_ROUTE = "unmatched"


class LatencyTally:
    """One histogram's observations since its last fold: a count per bucket (the last one past every bound, as
    Prometheus' `+Inf`) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # Prometheus' buckets hold values <= their bound
        self.total += seconds


class ExchangeTally:
    """What one upstream client saw since its last fold: each exchange's wait for the response headers, and its
    failures by the code of the error they were answered with."""

    __slots__ = ("errors", "latency")

    def __init__(self) -> None:
        self.latency = LatencyTally(UPSTREAM_LATENCY_BUCKETS)
        self.errors: dict[str, int] = {}

    def failed(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def drain(self) -> tuple[LatencyTally, dict[str, int]]:
        """The tallies so far; this one starts again from zero."""
        drained = self.latency, self.errors
        self.latency, self.errors = LatencyTally(UPSTREAM_LATENCY_BUCKETS), {}
        return drained


class Metrics:
    """One gateway's metrics: the request path's tallies, prometheus-client's metrics they are folded into, and
    the gauges and counts sampled from the services. Rendered from this process alone, or, in multiprocess mode,
    from every worker's files."""

    def __init__(self) -> None:
        # The mode prometheus-client chose when it was imported (PROMETHEUS_MULTIPROC_DIR, set by `gateway serve`):
        # whatever the environment says now, the values are where its value class puts them.
        self.multiprocess: bool = getattr(values.ValueClass, "_multiprocess", False)
        self.registry = CollectorRegistry()
        own = None if self.multiprocess else self.registry  # multiprocess: the collector reads the files
        if self.multiprocess:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self._requests = Counter(
            "gateway_requests",
            "HTTP responses by route template and status.",
            ["route", "status"],
            registry=own,
        )
        self._added = Histogram(
            "gateway_added_latency_seconds",
            "Time to the response's headers the gateway added to its upstream's, by route template.",
            ["route"],
            buckets=ADDED_LATENCY_BUCKETS,
            registry=own,
        )
        self._upstream = Histogram(
            "gateway_upstream_latency_seconds",
            "An upstream's time to its response's headers, per exchange.",
            ["upstream"],
            buckets=UPSTREAM_LATENCY_BUCKETS,
            registry=own,
        )
        self._upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failed upstream exchanges by error code.",
            ["upstream", "kind"],
            registry=own,
        )
        self.usage_queue_depth = Gauge(
            "gateway_usage_queue_depth",
            "Usage rows waiting for the database.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.usage_journal_bytes = Gauge(
            "gateway_usage_journal_bytes",
            "Bytes in the usage journal.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.usage_rows_written = Counter(
            "gateway_usage_rows_written", "Usage rows written to the database.", registry=own
        )
        self.usage_rows_dropped = Counter(
            "gateway_usage_rows_dropped", "Usage events that could not be recorded.", registry=own
        )
        self.credential_cache_hits = Counter(
            "gateway_credential_cache_hits", "Credentials resolved from the cache.", registry=own
        )
        self.credential_cache_misses = Counter(
            "gateway_credential_cache_misses", "Credentials looked up in the database.", registry=own
        )
        self.revocation_feed_lag = Gauge(
            "gateway_revocation_feed_lag_seconds",
            "How far the revocation feed may be behind the database (the largest of the workers').",
            registry=own,
            multiprocess_mode="livemax",
        )
        self.database_connections_in_use = Gauge(
            "gateway_database_connections_in_use",
            "Database connections checked out of the pool.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self._budget_refusals = Counter(
            "gateway_budget_refusals",
            "Requests refused by a budget or rate limit, by the limit's kind.",
            ["limit"],
            registry=own,
        )
        self._request_counts: dict[tuple[str, int], int] = {}
        self._refusal_counts: dict[str, int] = {}
        self._added_latency: dict[str, LatencyTally] = {}
        self._sampled: dict[Counter, float] = {}  # each sampled counter's source total, as last seen

    def responded(self, route: str, status: int, added_seconds: float | None) -> None:
        """A response started: counted by `route` template and `status`, with the time the gateway added to its
        upstream's when it went upstream. The request path's one call: tallies only."""
        key = (route, status)
        self._request_counts[key] = self._request_counts.get(key, 0) + 1
        if added_seconds is not None:
            tally = self._added_latency.get(route)
            if tally is None:
                tally = self._added_latency[route] = LatencyTally(ADDED_LATENCY_BUCKETS)
            tally.observe(added_seconds)

    def refused(self, limit: str) -> None:
        """A request refused by a limit of kind `limit` (usd_per_period, tokens_per_period, requests_per_minute)."""
        self._refusal_counts[limit] = self._refusal_counts.get(limit, 0) + 1

    def fold(self) -> None:
        """The request path's tallies into prometheus-client's metrics (and, in multiprocess mode, its files)."""
        refusals, self._refusal_counts = self._refusal_counts, {}
        for limit, count in refusals.items():
            self._budget_refusals.labels(limit).inc(count)
        counts, self._request_counts = self._request_counts, {}
        for (route, status), count in counts.items():
            self._requests.labels(route, str(status)).inc(count)
        added, self._added_latency = self._added_latency, {}
        for route, tally in added.items():
            _add_to(self._added.labels(route), tally)

    def fold_upstream(self, upstream: str, tally: ExchangeTally) -> None:
        """An upstream client's tallies since the last fold into prometheus-client's metrics."""
        latency, errors = tally.drain()
        _add_to(self._upstream.labels(upstream), latency)
        for kind, count in errors.items():
            self._upstream_errors.labels(upstream, kind).inc(count)

    def sampled(self, counter: Counter, total: float) -> None:
        """A count some service keeps (monotonic, from 0 at its start): `counter` is raised by its growth since the
        last sample."""
        grown = total - self._sampled.get(counter, 0)
        if grown > 0:
            counter.inc(grown)
        self._sampled[counter] = total

    def render(self) -> bytes:
        """The text format, of this process or of every worker's files (without the gauges of dead workers)."""
        if self.multiprocess:
            _forget_dead_workers()
        return generate_latest(self.registry)

    def close(self) -> None:
        """This worker is ending: its gauges leave the sums (its counts stay in them)."""
        if self.multiprocess:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _add_to(histogram: Histogram, tally: LatencyTally) -> None:
    """Adds a tally's observations to a histogram at once. prometheus-client only observes one value at a time;
    its histogram keeps a value per bucket (not cumulative) and one for the sum, in memory or in its multiprocess
    files alike, which this adds to (tests/unit/test_metrics.py checks it renders as one observation at a time)."""
    if not tally.total and not any(tally.counts):
        return
    histogram._sum.inc(tally.total)
    for bucket, count in zip(histogram._buckets, tally.counts, strict=True):
        if count:
            bucket.inc(count)


def _forget_dead_workers() -> None:
    """Drops the gauges of workers that ended without `close` (killed): a worker that starts in their place has a
    new pid and files of its own."""
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]  # prometheus-client's own setting, set by `gateway serve`
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        pid = int(path.rsplit("_", 1)[1].removesuffix(".db"))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, under another user
