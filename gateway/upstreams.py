"""The upstream services, and the one pooled HTTP client each, opened in the lifespan and closed at shutdown."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.settings import Settings

OPENAI = "openai"
MISTRAL = "mistral"
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
    }


class UpstreamClients:
    """One `httpx.AsyncClient` per upstream, on the aiohttp transport (DESIGN.md says why), keeping no cookies."""

    def __init__(self, names: list[str], *, connect_timeout: float, read_timeout: float) -> None:
        self.names = names
        self.timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._stack = AsyncExitStack()

    def __getitem__(self, name: str) -> httpx.AsyncClient:
        try:
            return self._clients[name]
        except KeyError:
            raise RuntimeError(f"the {name!r} upstream client is not open (outside the lifespan?)") from None

    async def __aenter__(self) -> UpstreamClients:
        for name in self.names:
            self._clients[name] = await self._stack.enter_async_context(self._new_client())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._clients.clear()
        await self._stack.aclose()

    def _new_client(self) -> httpx.AsyncClient:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_SECONDS),
            cookie_jar=aiohttp.DummyCookieJar(),
            # Send what the client sent: no defaults of aiohttp's own (a forced Accept-Encoding would
            # make the upstream compress for a client that never asked for it).
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
