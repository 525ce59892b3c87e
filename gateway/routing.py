"""Route lookup by exact path: the proxied routes are found by a dict lookup, not by trying every route's regex.

Starlette's router tries each route's regular expression in order; with the management, agent and transparency
routes listed before them, a chat completion paid for some twenty failed matches (a tenth of the gateway's CPU
per request, docs/BENCHMARKS.md). This router answers the same: a fixed-path route is taken from the dict only
when no earlier route could have matched that path, and only on a full match; everything else (405s, slash
redirects, the lifespan) goes through Starlette's own scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Mount, Route, Router, WebSocketRoute
from starlette.types import ASGIApp, Lifespan, Receive, Scope, Send

from gateway.context import RequestContext
from gateway.errors import GatewayError, respond_to_error


class ExactPathRouter(Router):
    """A Starlette `Router` that finds fixed-path routes by their path first."""

    def __init__(self, routes: Sequence[BaseRoute], *, lifespan: Lifespan[Any] | None = None) -> None:
        super().__init__(list(routes), lifespan=lifespan)
        self._by_path = _fixed_paths(self.routes)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):  # mounted under a prefix: the plain scan
            candidates = self._by_path.get(scope["path"])
            if candidates is not None:
                for route in candidates:
                    match, child_scope = route.matches(scope)
                    if match is Match.FULL:
                        scope.setdefault("router", self)
                        scope["route"] = route
                        scope.update(child_scope)
                        await route.handle(scope, receive, send)
                        return
        await super().app(scope, receive, send)


def _fixed_paths(routes: Sequence[BaseRoute]) -> dict[str, list[Route]]:
    """Fixed-path HTTP routes by path, leaving out any path an earlier route's pattern also matches."""
    found: dict[str, list[Route]] = {}
    shadowed: set[str] = set()
    earlier: list[BaseRoute] = []
    for route in routes:
        if isinstance(route, Route) and not route.param_convertors:
            if any(_may_match(other, route.path) for other in earlier):
                shadowed.add(route.path)
            found.setdefault(route.path, []).append(route)
        earlier.append(route)
    return {path: listed for path, listed in found.items() if path not in shadowed}


def _may_match(route: BaseRoute, path: str) -> bool:
    """Whether `route` might take `path` (a route of unknown kind might take anything)."""
    if isinstance(route, Route) and not route.param_convertors:
        return False  # another fixed path: equal paths are kept in order in the same list
    if isinstance(route, Route | Mount | WebSocketRoute):
        return route.path_regex.match(path) is not None
    return True


class ProxiedRoutes:
    """The proxied routes' way in: a request for one of their fixed paths, with their method, goes straight to
    the route's chain; everything else to `app` (Starlette's own stack).

    Starlette's app-wide layers cost a proxied request more than its auth did: the server-error layer and the
    exception layer each wrap `send` (a call per message), the latter builds a `Request` per request, and the
    router matches the route's regex again (docs/BENCHMARKS.md). Here the request context tells whether the
    response has started (`ContextMiddleware`, outside this, notes it; without it a request takes Starlette's
    way), and an exception before then is answered with the same handlers (`gateway.errors.respond_to_error`); a
    fault is then re-raised for the server to log, as Starlette's server-error layer does."""

    def __init__(self, app: ASGIApp, routes: Sequence[Route], *, all_routes: Sequence[BaseRoute]) -> None:
        self.app = app
        # Only a path the router itself would give to this route alone (no earlier pattern could take it).
        fixed = _fixed_paths(all_routes)
        self._routes = {route.path: route for route in routes if fixed.get(route.path) == [route]}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        context = RequestContext.of(scope)  # ContextMiddleware notes there whether the response has started
        if (
            route is None
            or context is None
            or scope["method"] not in (route.methods or ())
            or scope.get("root_path")
        ):
            try:
                await self.app(scope, receive, send)
            except RuntimeError as exc:
                cause = exc.__cause__
                if context is not None and context.response_started and isinstance(cause, GatewayError):
                    # Starlette's exception layer wraps an error of ours raised once the response had started
                    # (an upstream answer that broke off) in a RuntimeError: the server is given ours, as on the
                    # routes below, and aborts the connection.
                    raise cause from cause.__cause__
                raise
            return
        scope["route"] = route
        scope["path_params"] = {}
        try:
            await route.app(scope, receive, send)
        except Exception as exc:
            if context.response_started or not await respond_to_error(scope, receive, send, exc):
                raise
