"""The gateway's own errors on `/v1/chroma/...`, in Chroma's format, so that Chroma's clients raise the right type.

Chroma answers `{"error": "<Name>", "message": "..."}`, and the official client maps the name to its exception
class (`chromadb.errors.error_types`; it reads no other key, so the gateway's `code` and `param` ride along); the
OpenAI envelope the rest of the gateway uses would reach it as a bare `Exception`. The app gives this format to the
one error path (`gateway.errors.ErrorMiddleware`) for the Chroma prefix: whatever the auth, usage, admission,
namespacing or proxy steps raise, the router's own 404 and a fault's 500 alike, with status and headers kept.
"""

from __future__ import annotations

import orjson

from gateway.errors import GatewayError

# Chroma's error name for each status the gateway answers itself: the names Chroma's server gives for the same
# cases (a missing collection or database, bad input, a refused credential) and its client knows.
CHROMA_ERROR_NAMES = {
    400: "InvalidArgumentError",
    401: "AuthorizationError",  # chromadb.errors.AuthorizationError (code 401)
    403: "AuthError",  # chromadb.errors.ChromaAuthError, what Chroma's own auth answers (403 "Forbidden")
    404: "NotFoundError",
    429: "RateLimitError",
}
DEFAULT_CLIENT_ERROR = "InvalidArgumentError"  # 405, 409, 413, 415: the request as sent cannot be served
DEFAULT_SERVER_ERROR = "InternalError"


def chroma_error_name(status: int) -> str:
    default = DEFAULT_CLIENT_ERROR if status < 500 else DEFAULT_SERVER_ERROR
    return CHROMA_ERROR_NAMES.get(status, default)


def chroma_error_body(error: GatewayError) -> bytes:
    """Chroma's two keys, which its client reads, and the gateway's own `code` and `param` beside them, for what
    reads more than Chroma's client does (which parameter a 400 names, `upstream_timeout` or `upstream_unavailable`)."""
    return orjson.dumps(
        {
            "error": chroma_error_name(error.status_code),
            "message": error.message,
            "code": error.code,
            "param": error.param,
        }
    )
