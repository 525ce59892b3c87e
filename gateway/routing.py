"""The one way in: every request, proxied or not, goes through the request context, the one error path
(`gateway.errors.ErrorMiddleware`) and Starlette's router, in that order.

The router is Starlette's own, and its dispatch is its scan in order: the app lists the proxied routes first, so
that a chat completion is found at the first route tried rather than after some twenty failed patterns (a tenth
of the gateway's CPU per request once, docs/BENCHMARKS.md); no proxied path is one a management route serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Lifespan

from gateway.accesslog import AccessLog
from gateway.errors import ErrorMiddleware
from gateway.middleware.context import ContextMiddleware


class Gateway(Starlette):
    """Starlette with our layers in place of its own two error layers: the request context outermost (every
    answer carries the request id), then the one error path, then the router."""

    def __init__(
        self,
        *,
        routes: Sequence[BaseRoute],
        access_log: AccessLog | None = None,
        lifespan: Lifespan[Any] | None = None,
    ) -> None:
        super().__init__(routes=routes, lifespan=lifespan)
        self.access_log = access_log

    def build_middleware_stack(self) -> ASGIApp:
        return ContextMiddleware(ErrorMiddleware(self.router), access_log=self.access_log)
