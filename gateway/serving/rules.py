"""What the edge does with a response, whichever request cycle serves it (the lean cycle has these built in;
`EdgeExchange` lays them over uvicorn's own): the connection closed after a 413, a 431 or a 5xx; HTTP/1.0 bodies
close-delimited, never chunked; a response aborted after its start, or a connection that ended before its response
did (a client that went away), logged in one line, without a traceback."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import RequestContext
from gateway.errors import GatewayError

logger = logging.getLogger("gateway.serving")


def closes_connection(status: int) -> bool:
    """After a 413 or a 431 the rest of the request is not worth reading, so it is not read: the connection
    cannot carry another request. After a 5xx the server's state with this client is in doubt."""
    return status >= 500 or status == 413 or status == 431


def ended_quietly(exc: BaseException, scope: Scope, *, response_started: bool, disconnected: bool) -> bool:
    """Whether `exc`, raised by the app, is an expected end rather than a fault: a gateway error after the
    response started (an upstream's answer that broke off: the client's connection is aborted), or the app
    giving up on a client that left. Logs it in one line if so; the caller then aborts the response."""
    if response_started and isinstance(exc, GatewayError):
        logger.warning(
            "aborted the response to %s %s after its start: %s (%s)",
            scope["method"],
            scope["path"],
            exc.code,
            exc,
        )
        return True
    if disconnected and isinstance(exc, ClientDisconnect):
        log_connection_ended(scope, response_started=response_started)
        return True
    return False


def log_connection_ended(scope: Scope, *, response_started: bool) -> None:
    """One INFO line for a request whose connection ended before its response did: the client went away in the
    middle of its body or of the response (or the edge cut it off). No fault of ours, so no traceback."""
    context = RequestContext.of(scope)
    request_id = context.request_id if context is not None else "-"
    logger.info(
        "%s %s: the connection ended %s the response (request %s)",
        scope["method"],
        scope["path"].encode("unicode_escape").decode("ascii"),  # no line of a client's making
        "during" if response_started else "before",
        request_id,
        extra={"request_id": request_id},
    )


def _has_length(message: Message) -> bool:
    return any(
        name.lower() in (b"content-length", b"transfer-encoding") for name, _ in message.get("headers", ())
    )


class EdgeExchange:
    """One request served by uvicorn's own cycle, with the edge's rules: `send` watched for the response's
    status and framing, and an app's quiet failure turned into an abort without uvicorn's traceback."""

    __slots__ = ("app", "cycle")

    def __init__(self, app: ASGIApp, cycle: Any) -> None:
        self.app = app
        self.cycle = cycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle = self.cycle
        close_delimited = False

        async def send_under_edge_rules(message: Message) -> None:
            nonlocal close_delimited
            if message["type"] == "http.response.start":
                if closes_connection(message["status"]):
                    cycle.keep_alive = False
                if scope["http_version"] == "1.0" and not _has_length(message):
                    # uvicorn would frame it in chunks, which HTTP/1.0 does not know: the body ends at close.
                    close_delimited = True
                    cycle.chunked_encoding = False
            elif close_delimited and message["type"] == "http.response.body":
                cycle.expected_content_length = len(message.get("body", b""))  # uvicorn's check, kept at bay
            await send(message)

        try:
            await self.app(scope, receive, send_under_edge_rules)
        except Exception as exc:
            if not ended_quietly(
                exc, scope, response_started=cycle.response_started, disconnected=cycle.disconnected
            ):
                raise
            cycle.disconnected = True  # so that uvicorn's cycle neither writes nor complains any more
            cycle.transport.close()
        else:
            if cycle.disconnected and not cycle.response_complete:
                log_connection_ended(scope, response_started=cycle.response_started)
