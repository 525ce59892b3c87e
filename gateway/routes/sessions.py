"""`/api/v1/auth/*`: browser sessions in two HttpOnly cookies (login, refresh, logout, me, signup).

Login, signup, refresh and logout take only `application/json` (a cross-site form cannot send it without a
preflight) and refuse a cross-site Origin, so that no other site can sign a browser in or out.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, WeakPasswordError
from gateway.auth.sessions import CSRF_COOKIE, REFRESH_COOKIE, SESSION_COOKIE, IssuedSession, SessionService
from gateway.auth.throttle import LoginThrottle
from gateway.auth.users import InvalidEmailError, UserExistsError, create_user, user_json
from gateway.db.engine import Database
from gateway.db.models import User
from gateway.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnsupportedMediaTypeError,
)
from gateway.fields import column_length
from gateway.headers import TrustedProxies
from gateway.middleware.auth import HEADER, check_csrf, header, is_own_origin, presented_credential
from gateway.openapi import (
    ANY_OBJECT,
    BOOLEAN,
    EMPTY,
    INTEGER,
    STRING,
    TIME,
    USER,
    Operation,
    Reply,
    nullable,
    obj,
)
from gateway.routes.bodies import json_object
from gateway.routes.tokens import caller

REFRESH_PATH = "/api/v1/auth"


class SessionRoutes:
    def __init__(
        self,
        database: Database,
        service: SessionService,
        throttle: LoginThrottle,
        *,
        secure_cookies: bool,
        allow_signup: bool,
        trusted_proxies: TrustedProxies | None = None,
    ) -> None:
        self.database = database
        self.service = service
        self.throttle = throttle
        self.secure_cookies = secure_cookies
        self.allow_signup = allow_signup
        self.trusted_proxies = trusted_proxies or TrustedProxies()

    async def login(self, request: Request) -> Response:
        refuse_cross_site(request)
        email, password = _credentials(await json_object(request, require_json_type=True))
        peer = request.client.host if request.client else None
        address = self.trusted_proxies.client_address(peer, request.scope["headers"]) or "-"
        reservation = await self.throttle.reserve(email, address)
        issued = await self.service.login(email, password)  # a wrong password leaves the attempt counted
        await self.throttle.release(reservation)
        return self._session_response(issued)

    async def refresh(self, request: Request) -> Response:
        refuse_cross_site(request)
        _no_body_unless_json(request)
        raw = request.cookies.get(REFRESH_COOKIE)
        if not raw:
            raise AuthenticationError("No session to refresh.", code="invalid_refresh_token")
        check_csrf(request.scope, await self.service.session_of_refresh(raw), self.service.codec)
        return self._session_response(await self.service.refresh(raw))

    async def logout(self, request: Request) -> Response:
        """Ends the session of every credential sent: the refresh cookie, and the access token (Bearer header
        or session cookie). Sessions named by a cookie need the CSRF check; a Bearer header is no form's."""
        refuse_cross_site(request)
        _no_body_unless_json(request)
        credential, source = presented_credential(request.scope)
        by_cookie: set[str] = set()
        by_header: set[str] = set()
        raw_refresh = request.cookies.get(REFRESH_COOKIE)
        if raw_refresh and (session_id := await self.service.session_of_refresh(raw_refresh)):
            by_cookie.add(session_id)
        if credential and (session_id := self.service.session_of_access(credential)):
            (by_header if source == HEADER else by_cookie).add(session_id)
        if source != HEADER:
            for cookie_session in by_cookie or [None]:
                check_csrf(request.scope, cookie_session, self.service.codec)
        await self.service.logout(by_cookie | by_header)
        response = Response(status_code=204)
        for name, path in ((SESSION_COOKIE, "/"), (REFRESH_COOKIE, REFRESH_PATH), (CSRF_COOKIE, "/")):
            response.delete_cookie(name, path=path, secure=self.secure_cookies, httponly=name != CSRF_COOKIE)
        return response

    async def me(self, request: Request) -> JSONResponse:
        async with self.database.session() as session:
            user = await session.get(User, caller(request).user_id)
        if user is None:
            raise NotFoundError("No such user.")
        return JSONResponse({"user": user_json(user)})

    async def signup(self, request: Request) -> Response:
        if not self.allow_signup:
            raise NotFoundError()
        refuse_cross_site(request)
        email, password = _credentials(await json_object(request, require_json_type=True))
        try:
            async with self.database.session() as session, session.begin():
                user = await create_user(session, email=email, password=password)
        except InvalidEmailError as exc:
            raise InvalidRequestError(str(exc), param="email") from None
        except WeakPasswordError as exc:
            raise InvalidRequestError(str(exc), param="password") from None
        except UserExistsError:
            raise ConflictError("A user with that email already exists.", code="user_exists") from None
        return self._session_response(await self.service.start_for(user), status_code=201)

    def _session_response(self, issued: IssuedSession, *, status_code: int = 200) -> JSONResponse:
        response = JSONResponse(
            {
                "user": user_json(issued.user),
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
            },
            status_code=status_code,
            headers={"Cache-Control": "no-store"},
        )
        secure = self.secure_cookies
        response.set_cookie(
            SESSION_COOKIE,
            issued.access_token,
            max_age=issued.expires_in,
            path="/",
            secure=secure,
            httponly=True,
            samesite="lax",
        )
        response.set_cookie(
            REFRESH_COOKIE,
            issued.refresh_token,
            max_age=issued.refresh_expires_in,
            path=REFRESH_PATH,
            secure=secure,
            httponly=True,
            samesite="strict",
        )
        # Readable by the page, for the CSRF header on cookie-authenticated changes: derived from the session.
        response.set_cookie(
            CSRF_COOKIE,
            self.service.csrf_token(issued.session_id),
            max_age=issued.refresh_expires_in,
            path="/",
            secure=secure,
            httponly=False,
            samesite="strict",
        )
        return response


def refuse_cross_site(request: Request) -> None:
    """403 for a request a browser sent from another site (or from an opaque origin, "null"). A request without
    an Origin is not a browser's cross-site one. Raises `PermissionDeniedError`."""
    origin = header(request.scope, b"origin")
    if origin is not None and not is_own_origin(request.scope, origin):
        raise PermissionDeniedError("Cross-site request refused.", code="csrf_failed")


def _no_body_unless_json(request: Request) -> None:
    """Refresh and logout read no body; one that is sent, or announced by any Content-Type, must be JSON.
    Raises `UnsupportedMediaTypeError`."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    if media_type != "application/json" and (media_type or has_body):
        raise UnsupportedMediaTypeError("Send application/json, or no body.")


def _credentials(body: dict[str, object]) -> tuple[str, str]:
    """(email, password), each a non-empty string. Raises 400 naming the first field that is not."""
    for field in ("email", "password"):
        value = body.get(field)
        if not isinstance(value, str) or not value:
            raise InvalidRequestError("Give an email and a password.", param=field)
    return str(body["email"]), str(body["password"])


USER_RECORD = obj(
    {"id": STRING, "email": STRING, "is_admin": BOOLEAN, "created_at": TIME, "disabled_at": nullable(TIME)}
)
CREDENTIALS = obj(
    {
        "email": {"type": "string", "pattern": "^[^\\u0000]+$"},
        "password": {"type": "string", "pattern": "^[^\\u0000]+$"},
    }
)
# What signup takes (`gateway.auth.users.normalise_email`, `gateway.auth.passwords`), so that a fuzzer's valid
# request is one the route accepts.
NEW_CREDENTIALS = obj(
    {
        "email": {
            "type": "string",
            "maxLength": column_length(User.email),
            "pattern": r"^\s*[^@\s\u0000]+@[^@\s\u0000]+\.[^@\s\u0000]+\s*$",
        },
        "password": {
            "type": "string",
            "minLength": MIN_PASSWORD_LENGTH,
            "maxLength": MAX_PASSWORD_LENGTH,
            "pattern": "^[^\\u0000]*$",
        },
    }
)
SESSION_STARTED = Reply(
    "The session: the access JWT here and in the gw_session cookie, the refresh token in gw_refresh",
    obj({"user": USER_RECORD, "access_token": STRING, "token_type": STRING, "expires_in": INTEGER}),
)
SESSION_CHANGE_ERRORS = (400, 401, 403, 413, 415, 429)
LOGIN = Operation(
    "Sign in with an email and a password",
    {200: SESSION_STARTED},
    body=CREDENTIALS,
    errors=SESSION_CHANGE_ERRORS,
)
REFRESH = Operation(
    "A new access token from the gw_refresh cookie (single use; a reused one revokes its family)",
    {200: SESSION_STARTED},
    body=ANY_OBJECT,
    body_required=False,
    errors=SESSION_CHANGE_ERRORS,
)
LOGOUT = Operation(
    "End the session behind the credential sent (refresh cookie, access cookie or Bearer access token)",
    {204: EMPTY},
    body=ANY_OBJECT,
    body_required=False,
    errors=SESSION_CHANGE_ERRORS,
)
SIGNUP = Operation(
    "Create a user and sign in (when ALLOW_SIGNUP=1; 404 otherwise)",
    {201: SESSION_STARTED},
    body=NEW_CREDENTIALS,
    errors=(*SESSION_CHANGE_ERRORS, 404, 409),
)
ME = Operation(
    "The current user",
    {200: Reply("The user", obj({"user": USER_RECORD}))},
    errors=(401, 403, 404),
    security=USER,
)
