"""Authentication in the chain: a Bearer header or the session cookie → a `Principal` on the request context.

Fails closed: a credential that is sent must be valid even where none is required; a required one that is
missing is 401; a scope the credential lacks is 403; an agent key is 403 except on routes that take them (the
agent routes, which check the agent). Cookie-authenticated state changes must pass a CSRF check.

WebSocket handshakes go the same way, with two differences. A browser cannot set a header on a WebSocket, so a
route may take the credential in the subprotocol (`Sec-WebSocket-Protocol: bearer, <token>`, the `subprotocol`
option); the handshake is then accepted with that subprotocol. And a browser sends its cookies with a cross-site
handshake too, so a cookie-authenticated one must come from the gateway's own origin (cross-site WebSocket
hijacking); a client without an Origin is not a browser.
"""

from __future__ import annotations

import hmac

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth.authenticator import Authenticator
from gateway.auth.sessions import SESSION_COOKIE, csrf_token
from gateway.auth.tokens import TokenCodec
from gateway.context import RequestContext
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.principals import AGENT_KEY

CSRF_HEADER = b"x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = {"WWW-Authenticate": "Bearer"}
# Where a credential came from.
HEADER, COOKIE, SUBPROTOCOL = "header", "cookie", "subprotocol"


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def cookies(scope: Scope) -> dict[str, str]:
    raw = header(scope, b"cookie")
    return cookie_parser(raw) if raw else {}


def presented_credential(scope: Scope, *, subprotocol: str | None = None) -> tuple[str | None, str | None]:
    """(the credential, where it came from): on a WebSocket offering `subprotocol`, the token offered beside it;
    else the Authorization header; else the session cookie. A non-Bearer Authorization is refused."""
    if subprotocol is not None and scope["type"] == "websocket":
        offered = [protocol.strip() for protocol in scope.get("subprotocols", ())]
        if subprotocol in offered:
            tokens = [protocol for protocol in offered if protocol != subprotocol]
            return (tokens[0] if tokens else None), SUBPROTOCOL
    authorization = header(scope, b"authorization")
    if authorization is not None:
        kind, _, credential = authorization.partition(" ")
        if kind.lower() != "bearer" or not credential.strip():
            raise AuthenticationError("Use Authorization: Bearer <token>.", headers=CHALLENGE)
        return credential.strip(), HEADER
    session_cookie = cookies(scope).get(SESSION_COOKIE)
    return (session_cookie, COOKIE) if session_cookie else (None, None)


def is_own_origin(scope: Scope, origin: str) -> bool:
    """Whether `origin` (an Origin header) is the gateway's own: its host, by the scheme the request reached it, or
    by https, which is what a browser says behind a proxy that ends TLS and forwards plain HTTP (no one but the
    holder of the host's certificate can serve a page from `https://<host>`)."""
    host = header(scope, b"host")
    return host is not None and origin in (f"{scope.get('scheme', 'http')}://{host}", f"https://{host}")


def check_csrf(scope: Scope, session_id: str | None, codec: TokenCodec) -> None:
    """For a cookie-authenticated state change of the login `session_id`: the Origin must be the gateway's own,
    or the CSRF header must carry that session's token (`csrf_token`: an HMAC of its id, so a token of another
    session, planted with its cookie, does not pass). Raises `PermissionDeniedError`."""
    if scope["method"] in SAFE_METHODS:
        return
    origin = header(scope, b"origin")
    if origin is not None and is_own_origin(scope, origin):
        return
    submitted = header(scope, CSRF_HEADER)
    if submitted and session_id is not None:
        expected = csrf_token(codec, session_id)
        if hmac.compare_digest(submitted.encode(), expected.encode()):
            return
    raise PermissionDeniedError("Cross-site request refused.", code="csrf_failed")


def check_websocket_origin(scope: Scope) -> None:
    """For a cookie-authenticated WebSocket handshake: a browser's must come from the gateway's own origin.
    Raises `PermissionDeniedError`."""
    origin = header(scope, b"origin")
    if origin is None:
        return  # not a browser: it cannot have been made to send the cookie
    page_scheme = "https" if scope.get("scheme") == "wss" else "http"  # the page's, which opened the socket
    if not is_own_origin({**scope, "scheme": page_scheme}, origin):
        raise PermissionDeniedError("Cross-site WebSocket refused.", code="csrf_failed")


class AuthMiddleware:
    """Puts the caller's principal on the context, or refuses the request (or the WebSocket handshake)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        required: bool = True,
        scope: str | None = None,
        platform_only: bool = False,
        agent_keys: bool = False,
        subprotocol: str | None = None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.required = required
        self.scope = scope
        self.platform_only = platform_only
        self.agent_keys = agent_keys
        self.subprotocol = subprotocol  # a WebSocket may offer its credential beside it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        credential, source = presented_credential(scope, subprotocol=self.subprotocol)
        if credential is None:
            if self.required:
                raise AuthenticationError(
                    "A valid credential is required.", code="missing_credential", headers=CHALLENGE
                )
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.authenticator.authenticate(credential)
        except AuthenticationError as exc:
            exc.headers.update(CHALLENGE)
            raise
        if self.platform_only and not principal.is_platform_user:
            raise PermissionDeniedError(
                "Requires a platform JWT; API tokens are rejected here.", code="api_tokens_not_allowed"
            )
        if principal.kind == AGENT_KEY and not self.agent_keys:
            raise PermissionDeniedError("Agent keys may not call this route.", code="agent_key_not_allowed")
        if self.scope is not None and not principal.may(self.scope):
            raise PermissionDeniedError(
                f"This token lacks the {self.scope!r} scope.", code="insufficient_scope"
            )
        if source == COOKIE:
            if scope["type"] == "websocket":
                check_websocket_origin(scope)
            else:
                check_csrf(scope, principal.session_id, self.authenticator.codec)
        context = RequestContext.of(scope)
        if context is not None:
            context.principal = principal
        if source == SUBPROTOCOL:
            send = _accepting_subprotocol(send, self.subprotocol)
        await self.app(scope, receive, send)


def _accepting_subprotocol(send: Send, subprotocol: str | None) -> Send:
    """The handshake is accepted with the subprotocol the credential came in (a browser requires one of those it
    offered), whatever the endpoint accepts with."""

    async def send_accepting_subprotocol(message: Message) -> None:
        if message["type"] == "websocket.accept" and message.get("subprotocol") is None:
            message = {**message, "subprotocol": subprotocol}
        await send(message)

    return send_accepting_subprotocol
