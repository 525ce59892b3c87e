"""The app factory: routes, the app-wide middleware, and the lifespan that opens and closes shared resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from gateway.chains import proxied_routes
from gateway.db.engine import create_engine, prepare_data_dir
from gateway.errors import EXCEPTION_HANDLERS
from gateway.middleware.context import ContextMiddleware
from gateway.routes.health import Health
from gateway.settings import Settings
from gateway.upstreams import UpstreamClients, configured_upstreams

logger = logging.getLogger("gateway")


def create_app(settings: Settings) -> Starlette:
    """A gateway for `settings`. Nothing is opened until the lifespan starts."""
    clients = UpstreamClients(
        list(configured_upstreams(settings)),
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
    )
    health = Health()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        prepare_data_dir(settings)
        engine = create_engine(settings.database_url)
        health.engine = engine
        try:
            async with clients:
                yield
        finally:
            health.engine = None
            await engine.dispose()

    routes = [
        Route("/health", health.health, methods=["GET"]),
        Route("/ready", health.ready, methods=["GET"]),
        *proxied_routes(settings, clients),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(ContextMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app


def create_app_from_env() -> Starlette:
    """The factory uvicorn's workers call: settings from the environment, already checked by the CLI."""
    return create_app(Settings.from_env())
