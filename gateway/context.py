"""Per-request context: the request id every response carries, under the one scope key `scope["gateway"]`.

On the foundation's floor: the errors, the proxy, the features and the middleware all read it;
`gateway.middleware.context.ContextMiddleware` attaches it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Scope

from gateway.ids import random_hex
from gateway.principals import Principal

SCOPE_KEY = "gateway"
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RAW = REQUEST_ID_HEADER.lower().encode("latin-1")
# A client's id is echoed only when it is short and plain enough to be safe in logs and headers.
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+=/-]{1,128}")


@dataclass(slots=True)
class RequestContext:
    """What the chain learns about one request; middleware further down fill in their part."""

    request_id: str
    started_at: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None  # once auth has run
    # The parsed JSON body, on chains whose usage step reads it (gateway.middleware.usage); the steps below take it
    # from here rather than parse it again.
    request_json: dict[str, Any] | None = None
    # The time spent waiting for upstreams' response headers, once the request has gone upstream: the rest of its
    # time to the response is the gateway's own (gateway.metrics).
    upstream_seconds: float | None = None
    # Told the request's usage row once the usage step has made it (gateway.middleware.admission settles its
    # budget reservation by it): the row's type lives above this floor, hence Any.
    on_usage: Callable[[Any], None] | None = None

    @staticmethod
    def of(scope: Scope) -> RequestContext | None:
        """The context of a request that went through `ContextMiddleware`, if it did."""
        context = scope.get(SCOPE_KEY)
        return context if isinstance(context, RequestContext) else None


# The HTTP request being served, for code the scope does not reach: the upstream client adds its waits to it.
current_request: ContextVar[RequestContext | None] = ContextVar("current_request", default=None)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's `X-Request-ID` when it is sane, otherwise a fresh one."""
    for name, value in headers:
        if name == _REQUEST_ID_RAW and SANE_REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return random_hex()
