"""The upstream services, and the one pooled client each, opened in the lifespan and closed at shutdown."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from gateway.http1 import HttpPool
from gateway.settings import DEFAULT_UPSTREAM_MAX_CONNECTIONS, DEFAULT_UPSTREAM_POOL_TIMEOUT, Settings
from gateway.upstream_client import UpstreamClient

OPENAI = "openai"
MISTRAL = "mistral"
WORKERS_AI = "workers-ai"
CHROMA = "chroma"
KEEPALIVE_SECONDS = 30.0  # an idle upstream connection is closed after this long


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where an upstream lives and the credential the gateway sends it."""

    name: str
    base_url: str
    credential: tuple[bytes, bytes] | None = None

    def url(self, path: str) -> str:
        """The absolute URL of `path` (which starts with `/`) on this upstream."""
        return self.base_url + path

    def target(self, path: str) -> bytes:
        """The request target of `path` (which starts with `/`, already quoted) on this upstream's connections:
        the base URL's own path, then `path`."""
        return (urlsplit(self.base_url).path.rstrip("/") + path).encode("ascii")


def api_root(base_url: str) -> str:
    """A base URL without a trailing `/v1`, so that `/v1/...` paths are never doubled."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def bearer(api_key: str | None) -> tuple[bytes, bytes] | None:
    """The `Authorization` header carrying `api_key`, or none when no key is configured."""
    return (b"authorization", b"Bearer " + api_key.encode("latin-1")) if api_key else None


def configured_upstreams(settings: Settings) -> dict[str, Upstream]:
    """The upstreams the settings describe, by name."""
    return {
        OPENAI: Upstream(OPENAI, api_root(settings.openai_base_url), bearer(settings.openai_api_key)),
        MISTRAL: Upstream(MISTRAL, api_root(settings.mistral_base_url), bearer(settings.mistral_api_key)),
        **({CHROMA: chroma} if (chroma := chroma_upstream(settings)) else {}),
        **agent_provider_upstreams(settings),
    }


def compatible_root(base_url: str) -> str:
    """The root of an OpenAI-compatible API given as the `openai` client takes it: the base URL itself when it
    has a path (`.../ai/v1`, `.../v1beta/openai`), `{base}/v1` when it has none."""
    root = base_url.rstrip("/")
    return root if urlsplit(root).path else root + "/v1"


def agent_provider_upstreams(settings: Settings) -> dict[str, Upstream]:
    """`workers-ai` (when configured) and the configured OpenAI-compatible providers, rooted at their API root
    (`compatible_root`): their chat path is `/chat/completions`, without the `/v1` openai and mistral take."""
    upstreams = {}
    if settings.workers_ai_base_url:
        root = compatible_root(settings.workers_ai_base_url)
        upstreams[WORKERS_AI] = Upstream(WORKERS_AI, root, bearer(settings.workers_ai_api_key))
    for provider in settings.extra_providers:
        upstreams[provider.name] = Upstream(
            provider.name, compatible_root(provider.base_url), bearer(provider.api_key)
        )
    return upstreams


def chroma_upstream(settings: Settings) -> Upstream | None:
    """Chroma, when both its URL and its key are set (API.md: without them its routes answer 503)."""
    if settings.chroma_base_url is None or settings.chroma_api_key is None:
        return None
    scheme = f"{settings.chroma_auth_scheme} " if settings.chroma_auth_scheme else ""
    credential = (
        settings.chroma_auth_header.encode("latin-1"),
        (scheme + settings.chroma_api_key).encode("latin-1"),
    )
    return Upstream(CHROMA, settings.chroma_base_url, credential)


class UpstreamClients:
    """Per upstream: its pool of connections (`gateway.http1`), opened in the lifespan and closed at shutdown, and
    the client over it (`gateway.upstream_client`) every caller sends through: the proxy, the agents' completions
    and the Chroma lookups. No cookies are kept: the pool has no cookie jar."""

    def __init__(
        self,
        upstreams: Iterable[Upstream],
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int = DEFAULT_UPSTREAM_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_UPSTREAM_POOL_TIMEOUT,
    ) -> None:
        self.upstreams = {upstream.name: upstream for upstream in upstreams}
        self.names = list(self.upstreams)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self._clients: dict[str, UpstreamClient] = {}

    def __getitem__(self, name: str) -> UpstreamClient:
        """The client `name`'s requests are sent through."""
        try:
            return self._clients[name]
        except KeyError:
            raise RuntimeError(f"the {name!r} upstream client is not open (outside the lifespan?)") from None

    async def __aenter__(self) -> UpstreamClients:
        for name, upstream in self.upstreams.items():
            pool = HttpPool(
                upstream.base_url,
                max_connections=self.max_connections,
                keepalive_seconds=KEEPALIVE_SECONDS,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                pool_timeout=self.pool_timeout,
            )
            self._clients[name] = UpstreamClient(upstream, pool)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.pool.aclose()
