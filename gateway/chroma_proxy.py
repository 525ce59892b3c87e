"""The proxy for Chroma: the generic one, sent to the path and query the namespacing middleware wrote.

Beside `gateway.proxy`, on its floor (it is one), rather than in the chroma feature below it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send

from gateway.errors import NotConfiguredError
from gateway.headers import ForwardingPolicy
from gateway.proxy import ReverseProxy
from gateway.upstreams import Upstream, UpstreamClients


class ChromaProxy(ReverseProxy):
    """Forwards to `{CHROMA_BASE_URL}{path}`, the path being the scope's (already namespaced) `raw_path`."""

    def __init__(
        self, upstream: Upstream, *, clients: UpstreamClients, forwarding: ForwardingPolicy | None = None
    ) -> None:
        super().__init__(upstream, clients=clients, path="", forwarding=forwarding)
        self.prefix = urlsplit(upstream.base_url).path.rstrip("/").encode("ascii")

    def _target(self, scope: Scope) -> bytes:
        query: bytes = scope.get("query_string", b"")
        raw_path: bytes = scope["raw_path"]
        path = self.prefix + raw_path
        return path + b"?" + query if query else path


class ChromaNotConfigured:
    """The Chroma routes' endpoint when CHROMA_BASE_URL or CHROMA_API_KEY is unset (an ASGI app, like the proxy)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotConfiguredError(
            "Chroma is not configured on this gateway (CHROMA_BASE_URL and CHROMA_API_KEY).",
            code="chroma_not_configured",
        )
