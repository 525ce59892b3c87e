"""The one way in: every request, proxied or not, goes through the request context (and its metrics, when the app
keeps them), the one error path (`gateway.errors.ErrorMiddleware`) and the router, in that order.

The router is Starlette's, with one addition to its own dispatch: the proxied routes come first in its list and
their fixed paths are found by a dict lookup before its scan, since they carry nearly all the traffic and the
scan's matching cost a proxied request more than its auth did (docs/BENCHMARKS.md). Everything else, 404s, 405s
and slash redirects included, is the scan's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Lifespan, Receive, Scope, Send

from gateway.accesslog import AccessLog
from gateway.errors import ErrorFormat, ErrorMiddleware
from gateway.metrics import Metrics
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


class Gateway(Starlette):
    """Starlette with our layers in place of its own two error layers: the request context outermost (every
    answer carries the request id; given `metrics`, every response is counted there), then the one error path,
    then the router, whose dispatch tries the `proxied` routes first."""

    def __init__(
        self,
        *,
        routes: Sequence[BaseRoute],
        proxied: Sequence[Route] = (),
        access_log: AccessLog | None = None,
        metrics: Metrics | None = None,
        error_formats: Mapping[str, ErrorFormat] | None = None,
        lifespan: Lifespan[Any] | None = None,
    ) -> None:
        super().__init__(lifespan=lifespan)
        self.router = HotPathRouter(proxied, routes, lifespan=lifespan)
        self.access_log = access_log
        self.metrics = metrics
        self.error_formats = error_formats

    def build_middleware_stack(self) -> ASGIApp:
        return ContextMiddleware(
            ErrorMiddleware(self.router, formats=self.error_formats),
            access_log=self.access_log,
            metrics=self.metrics,
        )
