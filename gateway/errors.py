"""The error tree, the JSON envelope, and the one path every request's errors take to become a response.

```
GatewayError                       status, code, public message -> the OpenAI-style envelope
├── ClientError (4xx)
│   ├── InvalidRequestError      400  malformed body or parameters
│   ├── AuthenticationError      401  missing, invalid, expired or revoked credential
│   ├── PermissionDeniedError    403  scope missing, foreign namespace or agent
│   ├── NotFoundError            404
│   ├── MethodNotAllowedError    405  (with Allow)
│   ├── ConflictError            409
│   ├── PayloadTooLargeError     413
│   ├── UnsupportedMediaTypeError 415
│   └── QuotaExceededError       429  quota, budget or rate limit (Retry-After)
├── ServiceUnavailableError      503  a dependency of the gateway's own is away (timed out, refused)
│   ├── DatabaseUnavailableError 503  the database cannot be reached in time
│   ├── UsageUnavailableError    503  neither the usage journal nor memory can hold another event
│   └── AuthUnavailableError     503  credentials cannot be checked (database away past AUTH_CACHE_SECONDS)
├── UpstreamError (5xx)
│   ├── UpstreamUnavailableError 502  connect, read or protocol failure
│   ├── UpstreamBusyError        503  no free upstream connection in time
│   ├── UpstreamTimeoutError     504  no response headers in time
│   └── UpstreamIncompleteError  502  the answer broke off once started (the client's connection is aborted)
└── InternalError                500  unexpected; logged with traceback, generic body
```
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import orjson
from sqlalchemy import exc as database_errors
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import RequestContext

logger = logging.getLogger("gateway.errors")

WEBSOCKET_POLICY_CLOSE = 1008


class GatewayError(Exception):
    """An error with a status, a machine-readable code and a message safe to show the client."""

    status_code = 500
    error_type = "server_error"
    code = "internal_error"
    message = "The gateway failed to handle the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.param = param
        self.headers = dict(headers or {})
        super().__init__(self.message)


class ClientError(GatewayError):
    """The request cannot be served as sent (4xx)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
    message = "The request is invalid."


class InvalidRequestError(ClientError):
    """Malformed body or parameters."""


class AuthenticationError(ClientError):
    """Missing, invalid, expired or revoked credential."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_credential"
    message = "A valid credential is required."


class PermissionDeniedError(ClientError):
    """The credential is valid but may not do this."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"
    message = "This credential may not do that."


class NotFoundError(ClientError):
    """No such route or resource (or one the caller may not know of)."""

    status_code = 404
    error_type = "not_found_error"
    code = "not_found"
    message = "Not found."


class MethodNotAllowedError(ClientError):
    """A known path called with a method it does not serve."""

    status_code = 405
    code = "method_not_allowed"
    message = "Method not allowed."


class ConflictError(ClientError):
    """The request conflicts with the resource's current state."""

    status_code = 409
    code = "conflict"
    message = "Conflict."


class PayloadTooLargeError(ClientError):
    """The body is over the configured limit."""

    status_code = 413
    code = "payload_too_large"
    message = "The request body is too large."


class UnsupportedMediaTypeError(ClientError):
    """The body is not of the content type the route takes."""

    status_code = 415
    code = "unsupported_media_type"
    message = "Send the body as application/json."


class QuotaExceededError(ClientError):
    """A quota, budget or rate limit is spent."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "quota_exceeded"
    message = "Too many requests."


class UpstreamError(GatewayError):
    """The upstream could not give an answer (5xx)."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"
    message = "The upstream failed."


class UpstreamUnavailableError(UpstreamError):
    """The upstream refused, dropped or never accepted the connection."""

    code = "upstream_unavailable"
    message = "The upstream service is unavailable."


class UpstreamBusyError(UpstreamError):
    """Every connection to the upstream was in use for longer than the pool timeout."""

    status_code = 503
    code = "upstream_busy"
    message = "The upstream service is busy; try again shortly."


class UpstreamTimeoutError(UpstreamError):
    """The upstream sent no response headers within the read timeout."""

    status_code = 504
    code = "upstream_timeout"
    message = "The upstream service did not answer in time."


class UpstreamIncompleteError(UpstreamError):
    """The upstream's answer broke off after it had started (closed, reset, or silent past the read timeout).

    Raised once the response has started, so it is never rendered: the server aborts the client's connection
    without ending the message, so that clients see an incomplete response rather than a clean end."""

    code = "upstream_incomplete"
    message = "The upstream's answer broke off before its end."


class NotConfiguredError(GatewayError):
    """A route whose upstream the operator has not configured."""

    status_code = 503
    error_type = "server_error"
    code = "not_configured"
    message = "This service is not configured on the gateway."


class ServiceUnavailableError(GatewayError):
    """The gateway cannot do its part right now (a dependency of its own is away); try again shortly."""

    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"
    message = "The gateway cannot serve this request right now; try again shortly."


class DatabaseUnavailableError(ServiceUnavailableError):
    """The database could not be reached, or did not answer in time (a partition, an outage, a full pool)."""

    code = "database_unavailable"
    message = "The gateway's database is unavailable; try again shortly."


class UsageUnavailableError(ServiceUnavailableError):
    """Neither the usage journal nor memory can hold another event: refused rather than answered unrecorded."""

    code = "usage_unavailable"
    message = "The gateway cannot record usage right now; try again shortly."


class AuthUnavailableError(ServiceUnavailableError):
    """The credential cannot be checked: the database is away and the cached answer is older than
    AUTH_CACHE_SECONDS."""

    code = "auth_unavailable"
    message = "The gateway cannot check credentials right now; try again shortly."


class InternalError(GatewayError):
    """Something unexpected; the details go to the log, never to the client."""


# Statuses Starlette's router raises on its own, as our codes.
HTTP_STATUS_ERRORS: dict[int, type[GatewayError]] = {
    400: InvalidRequestError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: PayloadTooLargeError,
}


def envelope(error: GatewayError) -> bytes:
    """The OpenAI error envelope for `error`, as JSON bytes."""
    body = {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "code": error.code,
            "param": error.param,
        }
    }
    return orjson.dumps(body)


# An error's body in another API's format than the envelope, for the clients of that API (Chroma's, say).
ErrorFormat = Callable[[GatewayError], bytes]


def error_response(error: GatewayError, body_of: ErrorFormat = envelope) -> Response:
    """The response a client sees for `error`: the envelope, or the body `body_of` writes."""
    return Response(
        body_of(error), status_code=error.status_code, headers=error.headers, media_type="application/json"
    )


def expected_error(exc: Exception) -> GatewayError | None:
    """`exc` as the error the client is told of: ours as raised, the router's 404 or 405 as ours; None for a
    fault (anything else), which the client sees as a generic 500."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, HTTPException):
        error_class = HTTP_STATUS_ERRORS.get(
            exc.status_code, ClientError if exc.status_code < 500 else GatewayError
        )
        error = error_class(headers=exc.headers)
        error.status_code = exc.status_code
        return error
    if database_is_away(exc):
        return DatabaseUnavailableError()
    if isinstance(exc, DEPENDENCY_AWAY):
        return ServiceUnavailableError()
    return None


# The database refused the connection, dropped it, or did not answer in time: an outage, not a fault of ours.
DATABASE_AWAY = (
    database_errors.OperationalError,
    database_errors.InterfaceError,
    database_errors.TimeoutError,  # no pooled connection free in time
)
# Postgres' own word that it cannot serve now, whatever the statement: a connection exception (08), insufficient
# resources such as too many connections or a full disk (53), an operator's or a timeout's intervention such as
# a statement cancelled past `statement_timeout` (57014) or a shutting-down server (57P01-57P03).
AWAY_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})
# What the database driver raises itself when the network refuses or stays silent (asyncpg's connect and its
# command timeout), and any other dependency's wait that ran out.
DEPENDENCY_AWAY = (ConnectionError, TimeoutError)


def database_is_away(exc: BaseException) -> bool:
    """Whether `exc` is the database being unable to serve now (an outage, answered 503 and retried by the
    background writers) rather than a refusal of what was asked or a fault of ours."""
    if isinstance(exc, DATABASE_AWAY):
        return True
    if not isinstance(exc, database_errors.DBAPIError):
        return False
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return exc.connection_invalidated or sqlstate[:2] in AWAY_SQLSTATE_CLASSES


class ErrorMiddleware:
    """The one error path of every request, proxied or not: an exception raised before the response started is
    answered with its envelope (a fault with the generic 500, logged in one line with its traceback); one raised
    after is the server's to handle, unrendered, since only aborting the connection can still tell the client.

    It replaces Starlette's two error layers (the server-error and the exception middleware): one `send` wrapper
    instead of two, no `Request` per request, and no wrapping of our errors in a RuntimeError once the response
    has started. It sits inside the context middleware, so that every answer carries the request id.

    `formats` gives the paths under a prefix (`/v1/chroma`) their API's own error format instead of the envelope,
    whatever raised the error there: a step of the route's chain, the router (404) or a fault (500)."""

    def __init__(self, app: ASGIApp, *, formats: Mapping[str, ErrorFormat] | None = None) -> None:
        self.app = app
        self.formats = tuple((formats or {}).items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # An HTTP response's start; a WebSocket's accept, close, or refusal, after which no refusal can be sent.
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except ClientDisconnect:
            raise  # the client left: nobody to answer, and no fault (the server ends it quietly)
        except Exception as exc:
            if started:
                raise
            error = expected_error(exc)
            if isinstance(error, ServiceUnavailableError) and not isinstance(exc, GatewayError):
                _log_outage(scope, exc)
            if error is None:
                if scope["type"] != "http":
                    raise  # the server refuses the handshake and logs the fault
                _log_fault(scope, exc)
                error = InternalError()
            await _answer(scope, receive, send, error, self._format_of(scope["path"]))

    def _format_of(self, path: str) -> ErrorFormat:
        for prefix, body_of in self.formats:
            if path == prefix or path.startswith(prefix + "/"):
                return body_of
        return envelope


async def _answer(
    scope: Scope, receive: Receive, send: Send, error: GatewayError, body_of: ErrorFormat
) -> None:
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        # No HTTP answer possible to this handshake: a policy-violation close, which the server turns into 403.
        await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_CLOSE, "reason": ""})
        return
    await error_response(error, body_of)(scope, receive, send)


OUTAGE_LOG_SECONDS = 10.0
_outage_logged_at = -OUTAGE_LOG_SECONDS


def _log_outage(scope: Scope, exc: Exception) -> None:
    """One line, no traceback, and at most one every `OUTAGE_LOG_SECONDS`: an outage repeats on every request
    while it lasts, and its cause is the same each time."""
    global _outage_logged_at
    now = time.monotonic()
    if now - _outage_logged_at < OUTAGE_LOG_SECONDS:
        return
    _outage_logged_at = now
    context = RequestContext.of(scope)
    logger.warning(
        "%s on %s %s answered 503: a dependency is away (request %s; next such line in %.0f s at the earliest)",
        type(exc).__name__,
        scope.get("method", "GET"),
        scope["path"],
        context.request_id if context else "-",
        OUTAGE_LOG_SECONDS,
    )


def _log_fault(scope: Scope, exc: Exception) -> None:
    context = RequestContext.of(scope)
    logger.error(
        "unhandled %s on %s %s (request %s)",
        type(exc).__name__,
        scope["method"],
        scope["path"],
        context.request_id if context else "-",
        exc_info=exc,
    )
