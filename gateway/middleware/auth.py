"""Authentication in the chain: a Bearer header or the session cookie → a `Principal` on the request context.

Fails closed: a credential that is sent must be valid even where none is required; a required one that is
missing is 401; a scope the credential lacks is 403; an agent key is 403 except on routes that take them (the
agent routes, which check the agent). Cookie-authenticated state changes must pass a CSRF check.
"""

from __future__ import annotations

import hmac

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.authenticator import Authenticator
from gateway.auth.principals import AGENT_KEY
from gateway.auth.sessions import CSRF_COOKIE, SESSION_COOKIE
from gateway.context import RequestContext
from gateway.errors import AuthenticationError, PermissionDeniedError

CSRF_HEADER = b"x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def cookies(scope: Scope) -> dict[str, str]:
    raw = header(scope, b"cookie")
    return cookie_parser(raw) if raw else {}


def presented_credential(scope: Scope) -> tuple[str | None, bool]:
    """(the credential, whether it came from the session cookie). A non-Bearer Authorization is refused."""
    authorization = header(scope, b"authorization")
    if authorization is not None:
        kind, _, credential = authorization.partition(" ")
        if kind.lower() != "bearer" or not credential.strip():
            raise AuthenticationError("Use Authorization: Bearer <token>.", headers=CHALLENGE)
        return credential.strip(), False
    session_cookie = cookies(scope).get(SESSION_COOKIE)
    return (session_cookie, True) if session_cookie else (None, False)


def check_csrf(scope: Scope) -> None:
    """For a cookie-authenticated state change: the Origin must be the gateway's own, or the double-submit
    header must match the CSRF cookie. Raises `PermissionDeniedError`."""
    if scope["method"] in SAFE_METHODS:
        return
    origin = header(scope, b"origin")
    host = header(scope, b"host")
    if origin is not None and host is not None and origin in (f"{scope.get('scheme', 'http')}://{host}",):
        return
    submitted = header(scope, CSRF_HEADER)
    expected = cookies(scope).get(CSRF_COOKIE)
    if submitted and expected and hmac.compare_digest(submitted.encode(), expected.encode()):
        return
    raise PermissionDeniedError("Cross-site request refused.", code="csrf_failed")


class AuthMiddleware:
    """Puts the caller's principal on the context, or refuses the request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        required: bool = True,
        scope: str | None = None,
        platform_only: bool = False,
        agent_keys: bool = False,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.required = required
        self.scope = scope
        self.platform_only = platform_only
        self.agent_keys = agent_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        credential, via_cookie = presented_credential(scope)
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
        if via_cookie:
            check_csrf(scope)
        context = RequestContext.of(scope)
        if context is not None:
            context.principal = principal
        await self.app(scope, receive, send)
