"""`GET /metrics` in Prometheus' text format, behind `METRICS_API_KEY` when it is set, and the sampler that reads
the services' gauges and counts into it once a second (and before each scrape)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac

from sqlalchemy.pool import QueuePool
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.principals import PrincipalCache
from gateway.auth.revocations import Revocations
from gateway.db.engine import Database
from gateway.errors import AuthenticationError
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.middleware.auth import CHALLENGE
from gateway.openapi import BEARER, STRING, Operation, Reply
from gateway.upstreams import UpstreamClients
from gateway.usage.recorder import UsageRecorder

SAMPLE_SECONDS = 1.0


class MetricsSampler:
    """Reads the services' state into `Metrics` (gauges set, counters raised by what the services counted since)
    and folds the request path's tallies in."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        recorder: UsageRecorder,
        cache: PrincipalCache,
        revocations: Revocations,
        database: Database,
        clients: UpstreamClients,
    ) -> None:
        self.metrics = metrics
        self.recorder = recorder
        self.cache = cache
        self.revocations = revocations
        self.database = database
        self.clients = clients

    async def run(self) -> None:
        """Samples every `SAMPLE_SECONDS` until cancelled; then a last time, and this worker's gauges go."""
        try:
            while True:
                self.sample()
                await asyncio.sleep(SAMPLE_SECONDS)
        finally:
            self.sample()
            self.metrics.close()

    def sample(self) -> None:
        metrics = self.metrics
        metrics.fold()
        for name in self.clients.names:
            with contextlib.suppress(RuntimeError):  # the clients are closed, at the lifespan's end
                metrics.fold_upstream(name, self.clients[name].tally)
        recorder = self.recorder
        metrics.usage_queue_depth.set(recorder.queue_depth)
        metrics.usage_journal_bytes.set(recorder.journal_bytes)
        metrics.sampled(metrics.usage_rows_written, recorder.rows_written)
        metrics.sampled(metrics.usage_rows_dropped, recorder.rows_dropped)
        metrics.sampled(metrics.credential_cache_hits, self.cache.hits)
        metrics.sampled(metrics.credential_cache_misses, self.cache.misses)
        metrics.revocation_feed_lag.set(self.revocations.feed_lag_seconds())
        pool = self.database.engine.pool
        if isinstance(pool, QueuePool):  # SQLite's pools may keep no count
            metrics.database_connections_in_use.set(pool.checkedout())


class MetricsRoute:
    """`GET /metrics` of one app: sampled, then rendered; the metrics key required when one is set."""

    def __init__(self, sampler: MetricsSampler, *, api_key: str | None) -> None:
        self.sampler = sampler
        self.api_key = api_key.encode() if api_key else None

    async def scrape(self, request: Request) -> Response:
        """The metrics, exact for this process; requires the metrics key as a Bearer token when one is set."""
        if self.api_key is not None:
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key):
                raise AuthenticationError("A valid metrics key is required.", headers=CHALLENGE)
        self.sampler.sample()
        return Response(self.sampler.metrics.render(), media_type=CONTENT_TYPE)


SCRAPE = Operation(
    "Prometheus metrics (the METRICS_API_KEY as a Bearer token when one is set)",
    {200: Reply("Prometheus' text format", STRING, media_type=CONTENT_TYPE)},
    errors=(401,),
    security=(BEARER,),
    auth_optional=True,
)
