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
from starlette.types import Lifespan, Receive, Scope, Send


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
