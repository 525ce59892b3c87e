"""The app factory: routes, the app-wide middleware, and the lifespan that opens and closes shared resources."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from gateway.accesslog import AccessLog
from gateway.agents.agent_keys import AgentKeys
from gateway.auth.authenticator import Authenticator
from gateway.auth.jwt import ExternalTokens, PlatformTokens, TokenVerifier
from gateway.auth.principals import PrincipalCache
from gateway.auth.revocations import Revocations
from gateway.auth.sessions import SessionService
from gateway.auth.throttle import LoginThrottle
from gateway.auth.tokens import TokenCodec
from gateway.chains import proxied_routes
from gateway.db.engine import Database, prepare_data_dir
from gateway.errors import EXCEPTION_HANDLERS
from gateway.keys import load_server_keys
from gateway.middleware.auth import AuthMiddleware
from gateway.middleware.context import ContextMiddleware
from gateway.routes.agent_assets import asset_routes
from gateway.routes.agents import agent_routes
from gateway.routes.health import Health
from gateway.routes.sessions import SessionRoutes
from gateway.routes.tokens import TokenRoutes
from gateway.routes.transparency import transparency_routes
from gateway.routes.usage import UsageRoutes
from gateway.routing import ExactPathRouter, ProxiedRoutes
from gateway.settings import Settings
from gateway.transparency.log import TransparencyLog
from gateway.transparency.signer import NoteSigner
from gateway.upstreams import UpstreamClients, configured_upstreams
from gateway.usage.pricing import PriceTable
from gateway.usage.recorder import UsageRecorder
from gateway.usage.spill import SpillFile

SPILL_FOLDER = "usage-spill"
# Collect the youngest objects every 10,000 allocations rather than 700: a request allocates hundreds, and
# almost none of them in cycles (BENCHMARKS.md).
GC_THRESHOLDS = (10_000, 10, 10)


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything that answers "who is calling", built once per app."""

    authenticator: Authenticator
    revocations: Revocations
    sessions: SessionService
    codec: TokenCodec


def build_identity(settings: Settings, database: Database) -> Identity:
    keys = load_server_keys(settings)
    codec = TokenCodec(keys.token_hash_key)
    platform = PlatformTokens(keys.platform_jwt_secret)
    external = None
    if settings.platform_jwks_url or settings.platform_jwt_public_key:
        external = ExternalTokens(
            jwks_url=settings.platform_jwks_url,
            public_key_pem=settings.platform_jwt_public_key,
            issuer=settings.platform_jwt_issuer,
            audience=settings.platform_jwt_audience,
        )
    cache = PrincipalCache()
    revocations = Revocations(database, cache)
    sessions = SessionService(
        database,
        codec,
        platform,
        revocations,
        access_ttl_seconds=settings.access_token_ttl_seconds,
        refresh_ttl_seconds=settings.refresh_token_ttl_seconds,
    )
    verifier = TokenVerifier(platform, external)
    authenticator = Authenticator(database, codec, verifier, cache, agent_keys=AgentKeys())
    return Identity(authenticator, revocations, sessions, codec)


def identity_routes(settings: Settings, database: Database, identity: Identity) -> list[BaseRoute]:
    """The session and API token routes, each behind the auth it needs."""
    sessions = SessionRoutes(
        database,
        identity.sessions,
        LoginThrottle(),
        secure_cookies=settings.cookie_secure,
        allow_signup=settings.allow_signup,
    )
    tokens = TokenRoutes(database, identity.codec, identity.revocations)
    user = [Middleware(AuthMiddleware, authenticator=identity.authenticator)]
    platform_user = [Middleware(AuthMiddleware, authenticator=identity.authenticator, platform_only=True)]
    return [
        Route("/api/v1/auth/login", sessions.login, methods=["POST"]),
        Route("/api/v1/auth/refresh", sessions.refresh, methods=["POST"]),
        Route("/api/v1/auth/logout", sessions.logout, methods=["POST"]),
        Route("/api/v1/auth/signup", sessions.signup, methods=["POST"]),
        Route("/api/v1/auth/me", sessions.me, methods=["GET"], middleware=user),
        Route("/v1/api-tokens", tokens.list, methods=["GET"], middleware=platform_user),
        Route("/v1/api-tokens", tokens.create, methods=["POST"], middleware=platform_user),
        Route("/v1/api-tokens/{token_id}", tokens.revoke, methods=["DELETE"], middleware=platform_user),
    ]


class Gateway(Starlette):
    """Starlette with the request context outermost, then the proxied routes' own way in (`ProxiedRoutes`), then
    Starlette's stack for everything else."""

    def __init__(self, *, proxied: list[Route], access_log: AccessLog | None, **options: Any) -> None:
        super().__init__(**options)
        self.proxied = proxied
        self.access_log = access_log

    def build_middleware_stack(self) -> ASGIApp:
        starlette = super().build_middleware_stack()
        proxied = ProxiedRoutes(starlette, self.proxied, all_routes=self.router.routes)
        return ContextMiddleware(proxied, access_log=self.access_log)


def create_app(settings: Settings) -> Starlette:
    """A gateway for `settings`. Nothing is connected until the lifespan starts."""
    prepare_data_dir(settings)
    database = Database(settings.database_url)
    identity = build_identity(settings, database)
    clients = UpstreamClients(
        configured_upstreams(settings).values(),
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        max_connections=settings.upstream_max_connections,
        pool_timeout=settings.upstream_pool_timeout,
    )
    health = Health(database)
    transparency = TransparencyLog(
        database, NoteSigner(load_server_keys(settings).log_signing_key, name=settings.log_origin)
    )
    assets = asset_routes(settings, database, codec=identity.codec, revocations=identity.revocations)
    pricing = PriceTable.load(settings.pricing_file)
    recorder = UsageRecorder(
        database, SpillFile(settings.data_dir / SPILL_FOLDER), dataset=settings.analytics_dataset
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database.open()
        background = [
            asyncio.create_task(identity.revocations.listen(), name="revocation listener"),
            asyncio.create_task(identity.authenticator.run_last_used_writer(), name="last-used writer"),
            asyncio.create_task(recorder.run(), name="usage recorder"),
        ]
        try:
            async with clients:
                # Everything made so far lives as long as the process: out of the collector's sight, a full
                # collection no longer walks it, which took tens of milliseconds at a time (BENCHMARKS.md).
                gc.collect()
                gc.freeze()
                gc.set_threshold(*GC_THRESHOLDS)
                yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await database.close()

    proxied = proxied_routes(settings, clients, identity.authenticator, recorder=recorder, pricing=pricing)
    usage = UsageRoutes(
        database,
        identity.authenticator,
        dataset=settings.analytics_dataset,
        usage_api_key=settings.usage_api_key,
    )
    routes: list[BaseRoute] = [
        Route("/health", health.health, methods=["GET"]),
        Route("/ready", health.ready, methods=["GET"]),
        Route("/v1/usage", usage.summary, methods=["GET"]),
        Route("/v1/usage/daily", usage.daily, methods=["GET"]),
        Route("/v1/usage/rollups", usage.rollups, methods=["GET"]),
        *identity_routes(settings, database, identity),
        *agent_routes(
            settings,
            database,
            identity.authenticator,
            identity.revocations,
            clients,
            recorder=recorder,
            pricing=pricing,
            log=transparency,
            vault=assets.vault,
            quotas=assets.quotas,
            storage=assets.storage,
        ),
        *assets.routes(identity.authenticator),
        *transparency_routes(transparency),
        *proxied,
    ]
    app = Gateway(
        routes=routes,
        proxied=proxied,
        access_log=AccessLog() if settings.access_log else None,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.router = ExactPathRouter(routes, lifespan=lifespan)  # the same routes, fixed paths found by lookup
    app.state.settings = settings
    app.state.transparency = transparency
    app.state.database = database  # what agent routes (gateway.agents.access) load agents through
    app.state.vault = assets.vault  # BYOK keys for agents' upstream calls (gateway.agents.vault.byok_key)
    app.state.quotas = assets.quotas  # agents' tiers (gateway.agents.quotas.check_chat_quota)
    app.state.storage = assets.storage  # agents' file bytes (gateway.agents.files.remove_agent_files)
    return app


def create_app_from_env() -> Starlette:
    """The factory uvicorn's workers call: settings from the environment, already checked by the CLI."""
    return create_app(Settings.from_env())
