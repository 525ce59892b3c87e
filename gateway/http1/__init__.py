"""A lean HTTP/1.1 client for the proxy's upstream traffic: asyncio protocols with httptools' parser (the one
uvicorn uses for requests), a keep-alive pool per upstream; each request goes whole, its answer streams back.

The proxy's hot path measured aiohttp's client at over a quarter of the gateway's CPU per request, building
request and response objects, header multidicts and timers the proxy never looks at (docs/BENCHMARKS.md). This
does only what a reverse proxy needs: write the request line and headers it is given, parse the answer, hand the
body on as it arrives.
"""

from gateway.http1.errors import (
    BodyTimeout,
    BrokenOff,
    ConnectFailed,
    HeadersTimeout,
    HeadersTooLarge,
    PoolTimeout,
    UpstreamError,
)
from gateway.http1.pool import HttpPool, Response

__all__ = [
    "BodyTimeout",
    "BrokenOff",
    "ConnectFailed",
    "HeadersTimeout",
    "HeadersTooLarge",
    "HttpPool",
    "PoolTimeout",
    "Response",
    "UpstreamError",
]
