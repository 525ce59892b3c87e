"""The one way in: every request, proxied or not, goes through the request context, its metering (when the app
keeps metrics), the one error path (`gateway.errors.ErrorMiddleware`) and the router, in that order.

The router is Starlette's, with one addition to its own dispatch: the proxied routes come first in its list and
their fixed paths are found by a dict lookup before its scan, since they carry nearly all the traffic and the
scan's matching cost a proxied request more than its auth did (docs/BENCHMARKS.md). Everything else, 404s, 405s
and slash redirects included, is the scan's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from gateway.accesslog import AccessLog
from gateway.context import SCOPE_KEY, RequestContext, current_request
from gateway.errors import ErrorMiddleware
from gateway.metrics import UNMATCHED_ROUTE, Metrics
from gateway.middleware.context import ContextMiddleware


class HotPathRouter(Router):
    """Starlette's router over `hot` then `routes`, a hot route with a fixed path taken by its path and method
    without the scan: what the scan would find first, since no route before it takes that path."""

    def __init__(
        self,
        hot: Sequence[Route],
        routes: Sequence[BaseRoute],
        *,
        lifespan: Lifespan[Any] | None = None,
    ) -> None:
        super().__init__([*hot, *routes], lifespan=lifespan)
        self._by_path = _fixed_paths(hot)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):  # served under a prefix: the scan
            found = self._by_path.get(scope["path"])
            if found is not None and scope["method"] in found[1]:
                route = found[0]
                scope.setdefault("router", self)
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = {}
                await route.app(scope, receive, send)
                return
        await super().app(scope, receive, send)


def _fixed_paths(hot: Sequence[Route]) -> dict[str, tuple[Route, frozenset[str]]]:
    """The hot routes with a fixed path and methods, with their methods, by path; leaving out a path two of them
    share or an earlier one's pattern takes: those the scan settles."""
    found: dict[str, tuple[Route, frozenset[str]]] = {}
    ruled_out: set[str] = set()
    for index, route in enumerate(hot):
        if route.param_convertors or not route.methods:
            continue
        if route.path in found or any(other.path_regex.match(route.path) for other in hot[:index]):
            ruled_out.add(route.path)
        found[route.path] = (route, frozenset(route.methods))
    return {path: found[path] for path in found if path not in ruled_out}


class RequestMetering:
    """Counts every HTTP response by its route's template (never the raw path: the series stay bounded) and
    status, with the time the gateway added to its upstreams' when it went upstream; and makes the request the
    `current_request` of the code below, so that the upstream client can add its waits to it."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context: RequestContext = scope[SCOPE_KEY]
        metrics = self.metrics

        async def send_counting_response(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")  # the router's match; a 405's route too
                upstream = context.upstream_seconds
                added = None if upstream is None else time.perf_counter() - context.started_at - upstream
                metrics.responded(route.path if route else UNMATCHED_ROUTE, message["status"], added)
            await send(message)

        token = current_request.set(context)
        try:
            await self.app(scope, receive, send_counting_response)
        finally:
            current_request.reset(token)


class Gateway(Starlette):
    """Starlette with our layers in place of its own two error layers: the request context outermost (every
    answer carries the request id), then its metering (given `metrics`), then the one error path, then the
    router, whose dispatch tries the `proxied` routes first."""

    def __init__(
        self,
        *,
        routes: Sequence[BaseRoute],
        proxied: Sequence[Route] = (),
        access_log: AccessLog | None = None,
        metrics: Metrics | None = None,
        lifespan: Lifespan[Any] | None = None,
    ) -> None:
        super().__init__(lifespan=lifespan)
        self.router = HotPathRouter(proxied, routes, lifespan=lifespan)
        self.access_log = access_log
        self.metrics = metrics

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = ErrorMiddleware(self.router)
        if self.metrics is not None:
            app = RequestMetering(app, metrics=self.metrics)
        return ContextMiddleware(app, access_log=self.access_log)
