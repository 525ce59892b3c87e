"""Each proxied route and its middleware chain, read top to bottom: the one file that shows a request's path.

Every chain runs after the app-wide context middleware: auth (who), usage capture (what it used), admission
(the budgets and rate limits: reserved before the call, settled by the usage row after), the body rewrite, then
the proxy. Where the usage row carries the request's parameters (chat, OCR), the usage step reads
the JSON body (`max_body_bytes`) and the rewrite below takes it parsed from the context; Chroma's namespacing
reads its own. Adding an upstream is adding a route here, not editing the proxy.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.routing import Route

from gateway.auth.authenticator import Authenticator
from gateway.budgets.service import Budgets
from gateway.chroma.upstream import ChromaLookups
from gateway.chroma_proxy import ChromaNotConfigured, ChromaProxy
from gateway.headers import ForwardingPolicy, TrustedProxies
from gateway.middleware.admission import AdmissionMiddleware
from gateway.middleware.auth import AuthMiddleware
from gateway.middleware.chroma import ChromaNamespaceMiddleware
from gateway.middleware.rewrite import BodyRewriteMiddleware
from gateway.middleware.usage import UsageMiddleware
from gateway.openapi import (
    ANY_OBJECT,
    BEARER,
    BOOLEAN,
    ERRORS,
    INTEGER,
    NUMBER,
    STRING,
    USER,
    ApiRoute,
    Operation,
    Reply,
)
from gateway.proxy import ReverseProxy
from gateway.rewrites import OcrDocumentFromUrl, force_stream_usage
from gateway.settings import Settings
from gateway.upstreams import CHROMA, MISTRAL, OPENAI, UpstreamClients, configured_upstreams
from gateway.usage.pricing import PriceTable
from gateway.usage.recorder import UsageRecorder

CHROMA_PREFIX = "/v1/chroma"
UPSTREAM_ANSWER = "The upstream's own status and body, unchanged"
PROXY_ERRORS = (400, 401, 403, 413, 429, 502, 503, 504)
CHAT = Operation(
    "Chat completions, proxied to the OpenAI-compatible upstream",
    {
        200: Reply(
            "The upstream's completion: JSON, or with `stream: true` a text/event-stream forwarded as it comes",
            ANY_OBJECT,
            also={"text/event-stream": {}},  # its events: the upstream's chunks, then [DONE]
        )
    },
    body={
        "type": "object",
        "description": "Passed through; with `stream: true`, `stream_options.include_usage` is forced on",
        "properties": {
            "model": STRING,
            "stream": BOOLEAN,
            "stream_options": {"type": "object"},
            "max_completion_tokens": INTEGER,
            "max_tokens": INTEGER,
            "temperature": NUMBER,
            "top_p": NUMBER,
        },
        "additionalProperties": True,
    },
    errors=PROXY_ERRORS,
    security=(BEARER,),
    auth_optional=True,  # unless API_AUTH_REQUIRED
    passthrough=UPSTREAM_ANSWER,
)
OCR = Operation(
    "OCR, proxied to Mistral",
    {200: Reply("The upstream's OCR result", ANY_OBJECT)},
    body={
        "type": "object",
        "description": "`document` or `documents` pass through; a lone `url` becomes a Mistral document, with "
        "the default model when `model` is missing; other fields pass through",
        "properties": {
            "url": STRING,
            "document": {"type": "object"},
            "documents": {"type": "array"},
            "model": STRING,
        },
        "additionalProperties": True,
    },
    errors=PROXY_ERRORS,
    security=(BEARER,),
    auth_optional=True,  # unless API_AUTH_REQUIRED
    passthrough=UPSTREAM_ANSWER,
)
CHROMA_ERROR = {
    "type": "object",
    "description": "Chroma's error format, which its clients map to their exception types by `error`",
    "required": ["error", "message"],
    "properties": {
        "error": {
            "type": "string",
            "description": "InvalidArgumentError (400), AuthorizationError (401), AuthError (403), "
            "NotFoundError (404), RateLimitError (429), InternalError (5xx)",
        },
        "message": STRING,
        "code": {"type": ["string", "null"], "description": "the gateway's own error code"},
        "param": {"type": ["string", "null"], "description": "the parameter or field at fault"},
    },
}
CHROMA_PASSTHROUGH = Operation(
    "Chroma's HTTP API (v2), namespaced per user: database names in the path, the `database` query parameter, "
    "and a JSON body's `database` (and a create-database request's `name`) are prefixed; answers stripped",
    {
        200: Reply("Chroma's answer", {}),
        # The gateway's own errors on these routes come in Chroma's format, not the error envelope.
        **{
            status: Reply(ERRORS[status], CHROMA_ERROR)
            for status in (400, 401, 403, 404, 413, 429, 502, 503, 504)
        },
    },
    body={
        "type": "object",
        "properties": {"database": STRING, "name": STRING},
        "additionalProperties": True,
    },
    body_required=False,
    query={"database": STRING},
    security=USER,
    passthrough="Chroma's own status and body, the database names stripped of the namespace",
)


def proxied_routes(
    settings: Settings,
    clients: UpstreamClients,
    authenticator: Authenticator,
    *,
    recorder: UsageRecorder,
    pricing: PriceTable,
    budgets: Budgets,
) -> list[Route]:
    """The proxied routes with their chains."""
    upstreams = configured_upstreams(settings)
    required = settings.api_auth_required
    trusted = TrustedProxies(settings.trusted_proxies)
    to_openai = ForwardingPolicy(trusted, forward_openai_org_headers=settings.openai_forward_org_headers)
    # OpenAI-Organization and -Project name the operator's OpenAI account: no other vendor is told them.
    to_others = ForwardingPolicy(trusted)
    return [
        ApiRoute(
            "/v1/chat/completions",
            ReverseProxy(
                upstreams[OPENAI], clients=clients, path="/v1/chat/completions", forwarding=to_openai
            ),
            methods=["POST"],
            operation=CHAT,
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
                admission(settings, budgets, pricing, kind="chat"),
                Middleware(
                    BodyRewriteMiddleware, rewrite=force_stream_usage, max_bytes=settings.max_request_bytes
                ),
            ],
        ),
        ApiRoute(
            "/v1/ocr",
            ReverseProxy(upstreams[MISTRAL], clients=clients, path="/v1/ocr", forwarding=to_others),
            methods=["POST"],
            operation=OCR,
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
                admission(settings, budgets, pricing, kind="ocr"),
                Middleware(
                    BodyRewriteMiddleware,
                    rewrite=OcrDocumentFromUrl(default_model=settings.mistral_ocr_model),
                    max_bytes=settings.max_request_bytes,
                ),
            ],
        ),
        *chroma_routes(
            settings,
            clients,
            authenticator,
            recorder=recorder,
            pricing=pricing,
            budgets=budgets,
            forwarding=to_others,
        ),
    ]


def admission(settings: Settings, budgets: Budgets, pricing: PriceTable, *, kind: str) -> Middleware:
    """The admission step of a chain of `kind`: budgets and rate limits (none for a principal without limits)."""
    return Middleware(
        AdmissionMiddleware,
        budgets=budgets,
        pricing=pricing,
        kind=kind,
        default_max_tokens=settings.budget_default_max_tokens,
        deny_unknown_models=settings.budget_unknown_model == "deny",
    )


def chroma_routes(
    settings: Settings,
    clients: UpstreamClients,
    authenticator: Authenticator,
    *,
    recorder: UsageRecorder,
    pricing: PriceTable,
    budgets: Budgets,
    forwarding: ForwardingPolicy,
) -> list[Route]:
    """`/v1/chroma/...`: a user always required, then usage, then admission (rate limits), then the namespacing,
    then the proxy. The gateway's own errors here are in Chroma's format (the app gives the error path
    `gateway.chroma.errors` for this prefix)."""
    chroma = configured_upstreams(settings).get(CHROMA)
    chain = [
        Middleware(AuthMiddleware, authenticator=authenticator, required=True, scope="chroma"),
        Middleware(UsageMiddleware, recorder=recorder, pricing=pricing, kind="chroma", provider=CHROMA),
        admission(settings, budgets, pricing, kind="chroma"),
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
    return [
        ApiRoute(path, endpoint, middleware=chain, operation=CHROMA_PASSTHROUGH)
        for path in (CHROMA_PREFIX, CHROMA_PREFIX + "/{path:path}")
    ]
