"""The gateway's one way to talk to an upstream: an exchange over its pool (`gateway.http1`), with the one map from
the pool's errors to ours. The proxy, the agents' completions and the Chroma lookups all send through it.

The map goes by the phase the exchange failed in:

```
before the answer      ConnectFailed, BrokenOff (HeadersTooLarge too)  -> UpstreamUnavailableError  502
                       HeadersTimeout                                  -> UpstreamTimeoutError      504
                       PoolTimeout                                     -> UpstreamBusyError         503
once it has started    BrokenOff, BodyTimeout                          -> UpstreamIncompleteError   502
```

An answer that breaks off is never a clean end: whoever forwards it aborts its own client's response.

Each client tallies its exchanges' waits for the response headers and its failures by code (`gateway.metrics`), and
adds its waits to the request being served, if any, whose remaining time is then the gateway's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway import http1
from gateway.context import current_request
from gateway.errors import (
    UpstreamBusyError,
    UpstreamError,
    UpstreamIncompleteError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.metrics import ExchangeTally

if TYPE_CHECKING:  # upstreams.py builds the clients
    from gateway.upstreams import Upstream

logger = logging.getLogger("gateway.upstream")

Headers = list[tuple[bytes, bytes]]
# The largest JSON answer the gateway reads for itself (a lookup's record, a provider's whole completion).
MAX_JSON_BYTES = 4 * 1024 * 1024
JSON_CONTENT_TYPE = (b"content-type", b"application/json")


def gateway_error(exc: http1.UpstreamError, *, answered: bool) -> UpstreamError:
    """The error a client is given for a failed exchange: the one map, by phase (`answered`: the response's
    headers were in when it failed)."""
    if answered:
        return UpstreamIncompleteError()
    if isinstance(exc, http1.PoolTimeout):
        return UpstreamBusyError()
    if isinstance(exc, http1.HeadersTimeout):
        return UpstreamTimeoutError()
    return UpstreamUnavailableError()


class UpstreamClient:
    """One upstream's connections, for one exchange at a time per caller."""

    __slots__ = ("pool", "tally", "upstream")

    def __init__(self, upstream: Upstream, pool: http1.HttpPool) -> None:
        self.upstream = upstream
        self.pool = pool
        self.tally = ExchangeTally()

    @property
    def name(self) -> str:
        return self.upstream.name

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes | None,
        *,
        request_id: str | None = None,
    ) -> UpstreamResponse:
        """Send a request, its body whole, and wait for its response headers; `target` is the path and query on the
        upstream (`Upstream.target`), `headers` carry neither Host nor the body's framing (`HttpPool.request`).

        Raises `UpstreamUnavailableError`, `UpstreamTimeoutError` or `UpstreamBusyError` when no answer came.
        """
        started = time.perf_counter()
        try:
            response = await self.pool.request(method, target, headers, body)
        except http1.UpstreamError as exc:
            raise self._failed(exc, answered=False, request_id=request_id) from exc
        finally:
            waited = time.perf_counter() - started
            if (context := current_request.get()) is not None:
                context.upstream_seconds = (context.upstream_seconds or 0.0) + waited
        self.tally.latency.observe(waited)
        return UpstreamResponse(response, self, request_id)

    async def fetch_json(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        json: object = None,
        max_bytes: int = MAX_JSON_BYTES,
        request_id: str | None = None,
    ) -> JsonAnswer:
        """One exchange read whole: `path` on the upstream with `json` as the body (when not None) and the
        upstream's credential; the answer's status and its JSON document (None when it is not JSON or is
        larger than `max_bytes`). Raises as `request` does, and `UpstreamIncompleteError` when the body breaks
        off."""
        sent = list(headers)
        if self.upstream.credential is not None:
            sent.append(self.upstream.credential)
        body = None
        if json is not None:
            sent.append(JSON_CONTENT_TYPE)
            body = orjson.dumps(json)
        response = await self.request(
            method.encode("ascii"), self.upstream.target(path), sent, body, request_id=request_id
        )
        content = await response.read_all(max_bytes)
        return JsonAnswer(response.status, _json(content) if content is not None else None)

    def _failed(self, exc: http1.UpstreamError, *, answered: bool, request_id: str | None) -> UpstreamError:
        error = gateway_error(exc, answered=answered)
        self.tally.failed(error.code)
        logger.warning(
            "upstream %s: %s (%s: %s; request %s)",
            self.upstream.name,
            error.code,
            type(exc).__name__,
            exc,
            request_id or "-",
        )
        return error


class UpstreamResponse:
    """An answer whose headers are in. Read the body with `read_chunk` (or `read_all`), then `release` it, or
    `close` it to abandon it; its errors are already ours (`UpstreamIncompleteError`), and leave it closed."""

    __slots__ = ("_client", "_request_id", "_response", "headers", "status")

    def __init__(self, response: http1.Response, client: UpstreamClient, request_id: str | None) -> None:
        self._response = response
        self._client = client
        self._request_id = request_id
        self.status = response.status
        self.headers = response.headers

    async def read_chunk(self) -> bytes:
        """The next body bytes; `b""` at the end. Raises `UpstreamIncompleteError` if the body breaks off."""
        try:
            return await self._response.read_chunk()
        except http1.UpstreamError as exc:
            self._response.close()
            raise self._client._failed(exc, answered=True, request_id=self._request_id) from exc

    @property
    def ended(self) -> bool:
        """The whole body has been read: the next `read_chunk` would return `b""`."""
        return self._response.ended

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), if any."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def read_all(self, max_bytes: int) -> bytes | None:
        """The whole body, released to the pool; None (and the connection closed) past `max_bytes`."""
        body = bytearray()
        try:
            while chunk := await self.read_chunk():
                body += chunk
                if len(body) > max_bytes:
                    return None
            self.release()
        finally:
            self.close()  # a no-op once released
        return bytes(body)

    def release(self) -> None:
        """Done, the body read to its end: the connection goes back to the pool."""
        self._response.release()

    def close(self) -> None:
        """Abandon the answer: the connection is closed now, so the upstream sees the exchange end."""
        self._response.close()


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """An upstream's status and JSON document (None when the body is not a JSON value within the bound)."""

    status: int
    document: Any


def _json(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
