"""The composition root: every service built once, handed to the routes and chains that use it, and the lifespan
that opens and closes them; `app.state` holds nothing (each route is given what it reads)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from gateway.accesslog import AccessLog
from gateway.agents.agent_keys import AgentKeys
from gateway.agents.governance import GovernancePolicy
from gateway.agents.providers import ProviderRegistry
from gateway.agents.quotas import Quotas
from gateway.agents.storage import LocalStorage, Storage
from gateway.agents.turns import ChatServices
from gateway.agents.vault import Vault, vault_for
from gateway.auth.authenticator import Authenticator
from gateway.auth.jwt import ExternalTokens, PlatformTokens, TokenVerifier
from gateway.auth.principals import PrincipalCache
from gateway.auth.revocations import Revocations
from gateway.auth.sessions import SessionService
from gateway.auth.throttle import LoginThrottle
from gateway.auth.tokens import TokenCodec
from gateway.budgets.service import Budgets
from gateway.chains import CHROMA_PREFIX, proxied_routes
from gateway.chroma.errors import chroma_error_body
from gateway.dashboard import dashboard_routes
from gateway.db.engine import Database, prepare_data_dir
from gateway.headers import TrustedProxies
from gateway.keys import load_server_keys
from gateway.metrics import Metrics
from gateway.middleware.auth import AuthMiddleware
from gateway.openapi import OPENAPI, ApiRoute, OpenApiDocument
from gateway.routes import health as health_api
from gateway.routes import metrics as metrics_api
from gateway.routes import sessions as session_api
from gateway.routes import tokens as token_api
from gateway.routes import usage as usage_api
from gateway.routes import users as user_api
from gateway.routes.agent_assets import AgentAssetRoutes
from gateway.routes.agents import agent_routes
from gateway.routes.health import Health
from gateway.routes.metrics import MetricsRoute, MetricsSampler
from gateway.routes.sessions import SessionRoutes
from gateway.routes.tokens import TokenRoutes
from gateway.routes.transparency import transparency_routes
from gateway.routes.usage import UsageRoutes
from gateway.routes.users import UserRoutes
from gateway.routing import Gateway
from gateway.settings import Settings
from gateway.transparency.log import TransparencyLog
from gateway.transparency.signer import NoteSigner
from gateway.upstreams import UpstreamClients, configured_upstreams
from gateway.usage.pricing import PriceTable
from gateway.usage.recorder import UsageRecorder

JOURNAL_FOLDER = "usage-journal"
# Collect the youngest objects every 10,000 allocations rather than 700: a request allocates hundreds, and
# almost none of them in cycles (BENCHMARKS.md).
GC_THRESHOLDS = (10_000, 10, 10)
# How long the shutdown waits for the background tasks once cancelled (the usage recorder drains meanwhile): with
# the database's close, it fits the 5 s a process has after SHUTDOWN_TIMEOUT (gateway.serving.shutdown).
BACKGROUND_STOP_SECONDS = 3.0

logger = logging.getLogger("gateway.app")


@dataclass(frozen=True, slots=True)
class Services:
    """Every service of one gateway, each built once here and handed to the routes and chains that use it."""

    database: Database
    clients: UpstreamClients
    recorder: UsageRecorder
    pricing: PriceTable
    authenticator: Authenticator
    revocations: Revocations
    sessions: SessionService
    codec: TokenCodec
    log: TransparencyLog
    vault: Vault
    storage: Storage
    quotas: Quotas
    providers: ProviderRegistry
    metrics: Metrics
    budgets: Budgets


def build_services(settings: Settings) -> Services:
    """The services of `settings`. Nothing is connected until the lifespan starts."""
    database = Database(settings.database_url)
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
    metrics = Metrics()
    budgets = Budgets(database, reservation_seconds=settings.budget_reservation_seconds, metrics=metrics)
    return Services(
        database=database,
        clients=UpstreamClients(
            configured_upstreams(settings).values(),
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            max_connections=settings.upstream_max_connections,
            pool_timeout=settings.upstream_pool_timeout,
        ),
        recorder=UsageRecorder(
            database,
            settings.data_dir / JOURNAL_FOLDER,
            dataset=settings.analytics_dataset,
            fsync_ms=settings.usage_journal_fsync_ms,
            max_queue=settings.usage_max_queue,
            required=settings.usage_required,
        ),
        pricing=PriceTable.load(settings.pricing_file),
        authenticator=Authenticator(
            database,
            codec,
            TokenVerifier(platform, external),
            cache,
            agent_keys=AgentKeys(),
            auth_cache_seconds=settings.auth_cache_seconds,
            limits=budgets,
        ),
        revocations=revocations,
        sessions=SessionService(
            database,
            codec,
            platform,
            revocations,
            access_ttl_seconds=settings.access_token_ttl_seconds,
            refresh_ttl_seconds=settings.refresh_token_ttl_seconds,
        ),
        codec=codec,
        log=TransparencyLog(database, NoteSigner(keys.log_signing_key, name=settings.log_origin)),
        vault=vault_for(settings),
        storage=LocalStorage(settings.files_path),
        quotas=Quotas(settings.quota_tiers),
        providers=ProviderRegistry.from_settings(settings),
        metrics=metrics,
        budgets=budgets,
    )


def metrics_sampler(services: Services) -> MetricsSampler:
    """What `/metrics` shows of the services."""
    return MetricsSampler(
        services.metrics,
        recorder=services.recorder,
        cache=services.revocations.cache,
        revocations=services.revocations,
        database=services.database,
        clients=services.clients,
    )


def lifespan_of(services: Services) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """Opens the database, the upstream pools and the background tasks, and closes them at the end, in bounded
    time whatever the database does (the server cuts the requests still running before this end begins)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services.database.open()
        background = [
            asyncio.create_task(services.revocations.listen(), name="revocation listener"),
            asyncio.create_task(services.authenticator.run_last_used_writer(), name="last-used writer"),
            asyncio.create_task(services.recorder.run(), name="usage recorder"),
            asyncio.create_task(metrics_sampler(services).run(), name="metrics sampler"),
            asyncio.create_task(services.budgets.run(), name="budgets writer"),
        ]
        try:
            async with services.clients:
                # Everything made so far lives as long as the process: out of the collector's sight, a full
                # collection no longer walks it, which took tens of milliseconds at a time (BENCHMARKS.md).
                gc.collect()
                gc.freeze()
                gc.set_threshold(*GC_THRESHOLDS)
                yield
        finally:
            for task in background:
                task.cancel()
            # The usage recorder drains on cancel (what it cannot write in time stays in its journal); a task
            # still running past the bound is left to the end of the event loop.
            done, pending = await asyncio.wait(background, timeout=BACKGROUND_STOP_SECONDS)
            for task in pending:
                logger.warning(
                    "%s still stopping after %.0f s; left behind", task.get_name(), BACKGROUND_STOP_SECONDS
                )
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("%s had failed", task.get_name(), exc_info=task.exception())
            await services.database.close()  # bounded: on a partition no connection answers its goodbye

    return lifespan


def identity_routes(settings: Settings, services: Services) -> list[BaseRoute]:
    """The session and API token routes, each behind the auth it needs."""
    sessions = SessionRoutes(
        services.database,
        services.sessions,
        LoginThrottle(services.database),
        secure_cookies=settings.cookie_secure,
        allow_signup=settings.allow_signup,
        trusted_proxies=TrustedProxies(settings.trusted_proxies),
    )
    tokens = TokenRoutes(services.database, services.codec, services.revocations)
    user = [Middleware(AuthMiddleware, authenticator=services.authenticator)]
    platform_user = [Middleware(AuthMiddleware, authenticator=services.authenticator, platform_only=True)]
    return [
        ApiRoute("/api/v1/auth/login", sessions.login, methods=["POST"], operation=session_api.LOGIN),
        ApiRoute("/api/v1/auth/refresh", sessions.refresh, methods=["POST"], operation=session_api.REFRESH),
        ApiRoute("/api/v1/auth/logout", sessions.logout, methods=["POST"], operation=session_api.LOGOUT),
        ApiRoute("/api/v1/auth/signup", sessions.signup, methods=["POST"], operation=session_api.SIGNUP),
        ApiRoute("/api/v1/auth/me", sessions.me, methods=["GET"], middleware=user, operation=session_api.ME),
        ApiRoute(
            "/v1/api-tokens", tokens.list, methods=["GET"], middleware=platform_user, operation=token_api.LIST
        ),
        ApiRoute(
            "/v1/api-tokens",
            tokens.create,
            methods=["POST"],
            middleware=platform_user,
            operation=token_api.CREATE,
        ),
        ApiRoute(
            "/v1/api-tokens/{token_id}",
            tokens.update,
            methods=["PATCH"],
            middleware=platform_user,
            operation=token_api.UPDATE,
        ),
        ApiRoute(
            "/v1/api-tokens/{token_id}",
            tokens.revoke,
            methods=["DELETE"],
            middleware=platform_user,
            operation=token_api.REVOKE,
        ),
        ApiRoute(
            "/v1/users",
            UserRoutes(services.database).list,
            methods=["GET"],
            middleware=platform_user,
            operation=user_api.LIST,
        ),
    ]


def management_routes(settings: Settings, services: Services) -> list[BaseRoute]:
    """Every route that is not proxied: health, usage, sessions and tokens, agents and their assets, the log."""
    health = Health(services.database, services.recorder)
    metrics = MetricsRoute(metrics_sampler(services), api_key=settings.metrics_api_key)
    usage = UsageRoutes(
        services.database,
        services.authenticator,
        dataset=settings.analytics_dataset,
        usage_api_key=settings.usage_api_key,
    )
    policy = GovernancePolicy(
        max_chars=settings.governance_max_message_chars, blocked_patterns=settings.governance_blocked_patterns
    )
    chat = ChatServices(
        services.database,
        services.providers,
        services.clients,
        policy,
        services.recorder,
        services.pricing,
        services.log,
        services.vault,
        services.quotas,
        budgets=services.budgets,
        default_max_tokens=settings.budget_default_max_tokens,
    )
    assets = AgentAssetRoutes(
        services.database,
        vault=services.vault,
        codec=services.codec,
        revocations=services.revocations,
        storage=services.storage,
        quotas=services.quotas,
        max_upload_bytes=settings.max_upload_bytes,
        providers=services.providers,
    )
    return [
        ApiRoute("/health", health.health, methods=["GET"], operation=health_api.LIVENESS),
        ApiRoute("/ready", health.ready, methods=["GET"], operation=health_api.READY),
        ApiRoute("/metrics", metrics.scrape, methods=["GET"], operation=metrics_api.SCRAPE),
        ApiRoute("/openapi.json", OpenApiDocument().serve, methods=["GET"], operation=OPENAPI),
        ApiRoute("/v1/usage", usage.summary, methods=["GET"], operation=usage_api.SUMMARY),
        ApiRoute("/v1/usage/daily", usage.daily, methods=["GET"], operation=usage_api.DAILY),
        ApiRoute("/v1/usage/rollups", usage.rollups, methods=["GET"], operation=usage_api.ROLLUPS),
        *identity_routes(settings, services),
        *agent_routes(
            services.authenticator, chat, revocations=services.revocations, storage=services.storage
        ),
        *assets.routes(services.authenticator),
        *transparency_routes(services.log),
        *dashboard_routes(),
    ]


def create_app(settings: Settings) -> Gateway:
    """A gateway for `settings`. Nothing is connected until the lifespan starts."""
    prepare_data_dir(settings)
    services = build_services(settings)
    proxied = proxied_routes(
        settings,
        services.clients,
        services.authenticator,
        recorder=services.recorder,
        pricing=services.pricing,
        budgets=services.budgets,
    )
    return Gateway(
        routes=management_routes(settings, services),
        proxied=proxied,  # the router's dispatch tries these first: they carry nearly all the traffic
        access_log=AccessLog(log_format=settings.log_format) if settings.access_log else None,
        metrics=services.metrics,
        error_formats={
            CHROMA_PREFIX: chroma_error_body
        },  # Chroma's clients map its format to their exceptions
        lifespan=lifespan_of(services),
    )


def create_app_from_env() -> Gateway:
    """The factory uvicorn's workers call: settings from the environment, already checked by the CLI."""
    return create_app(Settings.from_env())
