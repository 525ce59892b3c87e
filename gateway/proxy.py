"""The generic streaming reverse proxy: one ASGI app per upstream route, bodies streamed both ways.

It sends through the upstream's pooled aiohttp session (the one under its `httpx` client): on the hot path,
httpx's request and response models cost more than everything else the proxy does (docs/BENCHMARKS.md).
aiohttp's errors become ours here and nowhere else, by phase: anything that fails before the upstream answered
is 502, except waiting too long for its response headers, which is 504. Once the response has started, a failure
can only end the stream. When the client goes away the upstream response is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from gateway.errors import UpstreamTimeoutError, UpstreamUnavailableError
from gateway.headers import forwarded_for, request_headers_for_upstream, response_headers_for_client
from gateway.middleware.context import RequestContext
from gateway.upstreams import Upstream, UpstreamClients

logger = logging.getLogger("gateway.proxy")

# Failures of the upstream connection, whatever the client library calls them.
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)


class ReverseProxy:
    """Forwards each request to `path` on one upstream and streams the answer back unchanged."""

    def __init__(self, upstream: Upstream, *, clients: UpstreamClients, path: str) -> None:
        self.upstream = upstream
        self.clients = clients
        self.url = upstream.url(path)
        self._parsed_url = URL(self.url)
        self._credential = (
            (upstream.credential[0].decode("latin-1"), upstream.credential[1].decode("latin-1"))
            if upstream.credential is not None
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        session = self.clients.session(self.upstream.name)
        exchange = _Exchange(scope, receive, send, upstream=self.upstream.name)
        body = await exchange.request_body()
        if exchange.disconnected:
            return  # the client left before its body was in: nothing to send
        target = self._target(scope)
        url = self._parsed_url if target == self.url else URL(target)
        await exchange.run(session, url, self._headers(scope), body, timeouts=self.clients.session_timeout)

    def _target(self, scope: Scope) -> str:
        query: bytes = scope.get("query_string", b"")
        return f"{self.url}?{query.decode('latin-1')}" if query else self.url

    def _headers(self, scope: Scope) -> list[tuple[str, str]]:
        client_headers: list[tuple[bytes, bytes]] = scope["headers"]
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request_headers_for_upstream(client_headers)
        ]
        client = scope.get("client")
        chain = forwarded_for(client_headers, client[0] if client else None)
        if chain:
            headers.append(("x-forwarded-for", chain.decode("latin-1")))
        headers.append(("x-forwarded-proto", scope.get("scheme", "http")))
        context = RequestContext.of(scope)
        if context is not None:
            headers.append(("x-request-id", context.request_id))
        if self._credential is not None:
            headers.append(self._credential)
        return headers


class _Exchange:
    """One request's trip to the upstream and back, watching the client for a disconnect all along."""

    __slots__ = (
        "_task",
        "_watcher",
        "body_read",
        "disconnected",
        "finished",
        "receive",
        "scope",
        "send",
        "upstream",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, *, upstream: str) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.upstream = upstream
        self.body_read = False
        self.disconnected = False
        self.finished = False
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def request_body(self) -> bytes | AsyncIterator[bytes] | None:
        """The body as bytes when it came in one message (the common case), else a stream of it."""
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            return None
        if not message.get("more_body", False):
            self.body_read = True
            return bytes(message.get("body", b"")) or None
        return self._stream_body(message)

    async def _stream_body(self, first: Message) -> AsyncIterator[bytes]:
        yield bytes(first.get("body", b""))
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._client_left()
                return
            yield bytes(message.get("body", b""))
            if not message.get("more_body", False):
                self.body_read = True
                self._watch_for_disconnect()
                return

    def _client_left(self) -> None:
        self.disconnected = True
        if self._task is not None and not self.finished:
            self._task.cancel()

    def _watch_for_disconnect(self) -> None:
        """Once the body is in, the server's `receive` only returns when the client has gone (or the response
        ended): a task waits on it for the rest of the exchange."""
        if self._watcher is None and self._task is not None and not self.finished:
            self._watcher = asyncio.get_running_loop().create_task(self._cancel_on_disconnect())

    async def _cancel_on_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self._client_left()

    async def run(
        self,
        session: aiohttp.ClientSession,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        *,
        timeouts: aiohttp.ClientTimeout,
    ) -> None:
        """Forward the request and stream the answer; raises a `GatewayError` only before the answer starts.

        A disconnect cancels this task where it waits (for the upstream, or for the client to take a chunk);
        that cancellation is ours, so it is absorbed here and the request simply ends.
        """
        task = self._task = asyncio.current_task()
        if self.body_read:
            self._watch_for_disconnect()
        try:
            await self._forward(session, url, headers, body, timeouts)
        except asyncio.CancelledError:
            if not self.disconnected or task is None:
                raise
            task.uncancel()
        finally:
            self.finished = True
            if self._watcher is not None:
                self._watcher.cancel()

    async def _forward(
        self,
        session: aiohttp.ClientSession,
        url: URL,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        timeouts: aiohttp.ClientTimeout,
    ) -> None:
        try:
            response = await session.request(
                self.scope["method"],
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=timeouts,
            )
        except aiohttp.ConnectionTimeoutError as exc:
            # No free connection, or none made, in time: connecting failed.
            self._log_failure("could not connect", exc)
            raise UpstreamUnavailableError() from exc
        except aiohttp.ServerTimeoutError as exc:
            self._log_failure("sent no response headers in time", exc)
            raise UpstreamTimeoutError() from exc
        except TRANSPORT_ERRORS as exc:
            self._log_failure("failed before answering", exc)
            raise UpstreamUnavailableError() from exc

        complete = False
        try:
            await self.send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": response_headers_for_client(list(response.raw_headers)),
                }
            )
            content = response.content
            try:
                while chunk := await content.readany():
                    await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
                complete = True
            except TRANSPORT_ERRORS as exc:
                self._log_failure("broke off its response", exc)
                if "content-length" in response.headers:
                    # A short body under a Content-Length cannot end cleanly: dropping the connection
                    # is the only honest signal left.
                    raise
            self.finished = True
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if complete:
                response.release()  # read to its end: the connection goes back to the pool
            else:
                response.close()  # cut off: the upstream sees the connection close now, and stops

    def _log_failure(self, what: str, exc: BaseException) -> None:
        context = RequestContext.of(self.scope)
        logger.warning(
            "upstream %s %s: %s (request %s)",
            self.upstream,
            what,
            type(exc).__name__,
            context.request_id if context else "-",
        )
