"""Each proxied route and its middleware chain, read top to bottom: the one file that shows a request's path.

Every chain runs after the app-wide context middleware: auth (who), usage capture (what it used), the body
rewrite, then the proxy. Where the usage row carries the request's parameters (chat, OCR), the usage step reads
the JSON body (`max_body_bytes`) and the rewrite below takes it parsed from the context; Chroma's namespacing
reads its own. Adding an upstream is adding a route here, not editing the proxy.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.routing import Route

from gateway.auth.authenticator import Authenticator
from gateway.chroma.upstream import ChromaLookups
from gateway.chroma_proxy import ChromaNotConfigured, ChromaProxy
from gateway.headers import ForwardingPolicy, TrustedProxies
from gateway.middleware.auth import AuthMiddleware
from gateway.middleware.chroma import ChromaNamespaceMiddleware
from gateway.middleware.rewrite import BodyRewriteMiddleware
from gateway.middleware.usage import UsageMiddleware
from gateway.proxy import ReverseProxy
from gateway.rewrites import OcrDocumentFromUrl, force_stream_usage
from gateway.settings import Settings
from gateway.upstreams import CHROMA, MISTRAL, OPENAI, UpstreamClients, configured_upstreams
from gateway.usage.pricing import PriceTable
from gateway.usage.recorder import UsageRecorder


def proxied_routes(
    settings: Settings,
    clients: UpstreamClients,
    authenticator: Authenticator,
    *,
    recorder: UsageRecorder,
    pricing: PriceTable,
) -> list[Route]:
    """The proxied routes with their chains."""
    upstreams = configured_upstreams(settings)
    required = settings.api_auth_required
    trusted = TrustedProxies(settings.trusted_proxies)
    to_openai = ForwardingPolicy(trusted, forward_openai_org_headers=settings.openai_forward_org_headers)
    # OpenAI-Organization and -Project name the operator's OpenAI account: no other vendor is told them.
    to_others = ForwardingPolicy(trusted)
    return [
        Route(
            "/v1/chat/completions",
            ReverseProxy(
                upstreams[OPENAI], clients=clients, path="/v1/chat/completions", forwarding=to_openai
            ),
            methods=["POST"],
            middleware=[
                Middleware(AuthMiddleware, authenticator=authenticator, required=required, scope="chat"),
                Middleware(
                    UsageMiddleware,
                    recorder=recorder,
                    pricing=pricing,
                    kind="chat",
                    provider=OPENAI,
                    max_body_bytes=settings.max_request_bytes,
                ),
                Middleware(
                    BodyRewriteMiddleware, rewrite=force_stream_usage, max_bytes=settings.max_request_bytes
                ),
            ],
        ),
        Route(
            "/v1/ocr",
            ReverseProxy(upstreams[MISTRAL], clients=clients, path="/v1/ocr", forwarding=to_others),
            methods=["POST"],
            middleware=[
                Middleware(AuthMiddleware, authenticator=authenticator, required=required, scope="ocr"),
                Middleware(
                    UsageMiddleware,
                    recorder=recorder,
                    pricing=pricing,
                    kind="ocr",
                    provider=MISTRAL,
                    max_body_bytes=settings.max_request_bytes,
                ),
                Middleware(
                    BodyRewriteMiddleware,
                    rewrite=OcrDocumentFromUrl(default_model=settings.mistral_ocr_model),
                    max_bytes=settings.max_request_bytes,
                ),
            ],
        ),
        *chroma_routes(
            settings, clients, authenticator, recorder=recorder, pricing=pricing, forwarding=to_others
        ),
    ]


def chroma_routes(
    settings: Settings,
    clients: UpstreamClients,
    authenticator: Authenticator,
    *,
    recorder: UsageRecorder,
    pricing: PriceTable,
    forwarding: ForwardingPolicy,
) -> list[Route]:
    """`/v1/chroma/...`: a user always required, then usage, then the namespacing, then the proxy."""
    chroma = configured_upstreams(settings).get(CHROMA)
    chain = [
        Middleware(AuthMiddleware, authenticator=authenticator, required=True, scope="chroma"),
        Middleware(UsageMiddleware, recorder=recorder, pricing=pricing, kind="chroma", provider=CHROMA),
        Middleware(
            ChromaNamespaceMiddleware,
            lookups=ChromaLookups(chroma, clients) if chroma else None,
            separator=settings.chroma_namespace_separator,
            auth_header=settings.chroma_auth_header,
            max_bytes=settings.max_request_bytes,
        ),
    ]
    endpoint = (
        ChromaProxy(chroma, clients=clients, forwarding=forwarding) if chroma else ChromaNotConfigured()
    )
    return [Route(path, endpoint, middleware=chain) for path in ("/v1/chroma", "/v1/chroma/{path:path}")]
