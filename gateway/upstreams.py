"""The upstream services, and the one pooled HTTP client each, opened in the lifespan and closed at shutdown."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.http1 import HttpPool
from gateway.settings import Settings

OPENAI = "openai"
MISTRAL = "mistral"
WORKERS_AI = "workers-ai"
CHROMA = "chroma"
# Connections to one upstream; waiting for a free one counts against the connect timeout.
MAX_CONNECTIONS = 1000
KEEPALIVE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where an upstream lives and the credential the gateway sends it."""

    name: str
    base_url: str
    credential: tuple[bytes, bytes] | None = None

    def url(self, path: str) -> str:
        """The absolute URL of `path` (which starts with `/`) on this upstream."""
        return self.base_url + path


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
    """Per upstream: the pool the streaming proxy sends through (`gateway.http1`), and an `httpx.AsyncClient` on
    the aiohttp transport (DESIGN.md says why) for the gateway's own calls (agents, Chroma lookups); neither keeps
    cookies."""

    def __init__(self, upstreams: Iterable[Upstream], *, connect_timeout: float, read_timeout: float) -> None:
        self.upstreams = {upstream.name: upstream for upstream in upstreams}
        self.names = list(self.upstreams)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._pools: dict[str, HttpPool] = {}
        self._stack = AsyncExitStack()

    def __getitem__(self, name: str) -> httpx.AsyncClient:
        try:
            return self._clients[name]
        except KeyError:
            raise RuntimeError(f"the {name!r} upstream client is not open (outside the lifespan?)") from None

    def pool(self, name: str) -> HttpPool:
        """The connections the streaming proxy sends `name`'s requests over."""
        try:
            return self._pools[name]
        except KeyError:
            raise RuntimeError(f"the {name!r} upstream pool is not open (outside the lifespan?)") from None

    async def __aenter__(self) -> UpstreamClients:
        for name, upstream in self.upstreams.items():
            self._clients[name] = await self._stack.enter_async_context(self._new_client())
            pool = self._pools[name] = HttpPool(
                upstream.base_url,
                max_connections=MAX_CONNECTIONS,
                keepalive_seconds=KEEPALIVE_SECONDS,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
            )
            self._stack.push_async_callback(pool.aclose)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._clients.clear()
        self._pools.clear()
        await self._stack.aclose()

    def _new_client(self) -> httpx.AsyncClient:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_SECONDS),
            cookie_jar=aiohttp.DummyCookieJar(),
            # Send what was asked: no defaults of aiohttp's own (a forced Accept-Encoding would make the
            # upstream compress for a client that never asked for it).
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            auto_decompress=False,
            trust_env=False,
        )
        refuse_all_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        return httpx.AsyncClient(
            transport=AiohttpTransport(client=session),
            timeout=self.timeout,
            cookies=refuse_all_cookies,
            follow_redirects=False,
            trust_env=False,
        )
