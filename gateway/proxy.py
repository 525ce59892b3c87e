"""The generic streaming reverse proxy: one ASGI app per upstream route, bodies streamed both ways.

httpx's (and aiohttp's) errors become ours here and nowhere else, by phase: anything that fails before the upstream
accepted the request is 502, waiting too long for its response headers is 504. Once the response has started, a
failure can only end the stream. When the client goes away the upstream response is closed at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import GatewayError, UpstreamTimeoutError, UpstreamUnavailableError
from gateway.headers import forwarded_for, request_headers_for_upstream, response_headers_for_client
from gateway.middleware.context import RequestContext
from gateway.upstreams import Upstream, UpstreamClients

logger = logging.getLogger("gateway.proxy")

# Failures of the upstream connection, whatever the client library calls them.
TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError, OSError)


class ReverseProxy:
    """Forwards each request to `path` on one upstream and streams the answer back unchanged."""

    def __init__(self, upstream: Upstream, *, clients: UpstreamClients, path: str) -> None:
        self.upstream = upstream
        self.clients = clients
        self.url = upstream.url(path)
        self.timeout = clients.timeout.as_dict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        client = self.clients[self.upstream.name]
        exchange = _Exchange(scope, receive, send, upstream=self.upstream.name)
        request = httpx.Request(
            scope["method"],
            self._target(scope),
            headers=self._headers(scope),
            content=await exchange.request_body(),
            extensions={"timeout": self.timeout},
        )
        await exchange.run(client, request)

    def _target(self, scope: Scope) -> str:
        query: bytes = scope.get("query_string", b"")
        return f"{self.url}?{query.decode('latin-1')}" if query else self.url

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        client_headers: list[tuple[bytes, bytes]] = scope["headers"]
        headers = request_headers_for_upstream(client_headers)
        client = scope.get("client")
        chain = forwarded_for(client_headers, client[0] if client else None)
        if chain:
            headers.append((b"x-forwarded-for", chain))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
        context = RequestContext.of(scope)
        if context is not None:
            headers.append((b"x-request-id", context.request_id.encode("ascii")))
        if self.upstream.credential is not None:
            headers.append(self.upstream.credential)
        return headers


class _Exchange:
    """One request's trip to the upstream and back, watching the client for a disconnect all along."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, *, upstream: str) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.upstream = upstream
        self.body_read = anyio.Event()
        self.cancel_scope = anyio.CancelScope()

    async def request_body(self) -> bytes | AsyncIterator[bytes]:
        """The body as bytes when it came in one message (the common case), else a stream of it."""
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.cancel_scope.cancel()
            return b""
        if not message.get("more_body", False):
            self.body_read.set()
            return bytes(message.get("body", b""))
        return self._stream_body(message)

    async def _stream_body(self, first: Message) -> AsyncIterator[bytes]:
        yield bytes(first.get("body", b""))
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.cancel_scope.cancel()
                return
            yield bytes(message.get("body", b""))
            if not message.get("more_body", False):
                self.body_read.set()
                return

    async def run(self, client: httpx.AsyncClient, request: httpx.Request) -> None:
        """Forward `request` and stream the answer; raises a `GatewayError` only before the answer starts."""
        failure: GatewayError | None = None
        with self.cancel_scope:
            async with anyio.create_task_group() as watchers:
                watchers.start_soon(self._cancel_on_disconnect)
                try:
                    await self._forward(client, request)
                except GatewayError as exc:
                    failure = exc
                finally:
                    watchers.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _cancel_on_disconnect(self) -> None:
        await self.body_read.wait()
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.cancel_scope.cancel()

    async def _forward(self, client: httpx.AsyncClient, request: httpx.Request) -> None:
        try:
            response = await client.send(request, stream=True)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # httpx-aiohttp reports a refused connection as ConnectTimeout: connecting failed either way.
            self._log_failure("could not connect", exc)
            raise UpstreamUnavailableError() from exc
        except httpx.TimeoutException as exc:
            self._log_failure("sent no response headers in time", exc)
            raise UpstreamTimeoutError() from exc
        except TRANSPORT_ERRORS as exc:
            self._log_failure("failed before answering", exc)
            raise UpstreamUnavailableError() from exc

        try:
            await self.send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": response_headers_for_client(response.headers.raw),
                }
            )
            try:
                async for chunk in response.aiter_raw():
                    await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TRANSPORT_ERRORS as exc:
                self._log_failure("broke off its response", exc)
                if "content-length" in response.headers:
                    # A short body under a Content-Length cannot end cleanly: dropping the connection
                    # is the only honest signal left.
                    raise
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    def _log_failure(self, what: str, exc: BaseException) -> None:
        context = RequestContext.of(self.scope)
        logger.warning(
            "upstream %s %s: %s (request %s)",
            self.upstream,
            what,
            type(exc.__cause__ or exc).__name__,
            context.request_id if context else "-",
        )
