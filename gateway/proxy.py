"""The generic reverse proxy: one ASGI app per upstream route; the request goes whole, the answer streams back.

Every chain reads the client's body before the proxy (to rewrite it, namespace it, or hold it to the size limit)
and replays it in one message, so the proxy sends it in hand, with its length. It sends through the upstream's
client (`gateway.upstream_client`), whose errors are already ours: before the answer they are raised for the error
handler to render. Once the response has started, an answer that breaks off raises `UpstreamIncompleteError`
rather than ending the client's message: the server then aborts the connection, so the client sees an incomplete
response, never a clean end. When the client goes away the upstream connection is closed at once.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send

from gateway.context import RequestContext
from gateway.headers import ForwardingPolicy, response_headers_for_client
from gateway.upstream_client import UpstreamClient
from gateway.upstreams import Upstream, UpstreamClients

# How long an exchange runs before a task starts watching its client for a disconnect.
WATCH_AFTER_SECONDS = 0.02


class ReverseProxy:
    """Forwards each request to `path` on one upstream and streams the answer back unchanged."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        clients: UpstreamClients,
        path: str,
        forwarding: ForwardingPolicy | None = None,
    ) -> None:
        self.upstream = upstream
        self.forwarding = forwarding or ForwardingPolicy()  # by default: no proxy trusted, no org headers
        self.clients = clients
        self.url = upstream.url(path)
        self.path = (urlsplit(self.url).path or "/").encode("ascii")
        self._credential = upstream.credential

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        client = self.clients[self.upstream.name]
        exchange = _Exchange(scope, receive, send)
        body = await exchange.request_body()
        if exchange.disconnected:
            return  # the client left before its body was in: nothing to send
        await exchange.run(client, self._target(scope), self._headers(scope), body)

    def _target(self, scope: Scope) -> bytes:
        """The request target on the upstream: its path, and the client's query as it came."""
        query: bytes = scope.get("query_string", b"")
        return self.path + b"?" + query if query else self.path

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """The headers for the upstream: the forwarding policy's (which leaves the body's length to the pool), the
        request id and the upstream's credential."""
        client = scope.get("client")
        headers = self.forwarding.request_headers(
            scope["headers"], peer=client[0] if client else None, scheme=scope.get("scheme", "http")
        )
        context = RequestContext.of(scope)
        if context is not None:
            headers.append((b"x-request-id", context.request_id.encode("latin-1")))
        if self._credential is not None:
            headers.append(self._credential)
        return headers


class _Exchange:
    """One request's trip to the upstream and back, watching the client for a disconnect all along."""

    __slots__ = (
        "_task",
        "_watcher",
        "disconnected",
        "finished",
        "receive",
        "scope",
        "send",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.disconnected = False
        self.finished = False
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | asyncio.TimerHandle | None = None

    async def request_body(self) -> bytes | None:
        """The whole body (None when empty), or None with `disconnected` set if the client left first. In a chain
        it comes in one message, replayed by the middleware that read it and held it to `MAX_REQUEST_BYTES`."""
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            return None
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            body = await self._rest_of_body(body)
        return body or None

    async def _rest_of_body(self, first: bytes) -> bytes:
        """A body in several messages (the proxy served with no middleware in front) is gathered whole all the
        same, never sent on in pieces; empty, with `disconnected` set, if the client left first."""
        chunks = [first]
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return b""
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _client_left(self) -> None:
        self.disconnected = True
        if self._task is not None and not self.finished:
            self._task.cancel()

    def _watch_for_disconnect(self) -> None:
        """The body is in (`request_body` read it whole), so the server's `receive` only returns when the client
        has gone (or the response ended): a task waits on it for the rest of the exchange. Most exchanges are over
        in a few milliseconds, so the task is only started once this one has lasted `WATCH_AFTER_SECONDS` (a
        client that left earlier is seen then, at once: its `receive` has the disconnect waiting)."""
        self._watcher = asyncio.get_running_loop().call_later(WATCH_AFTER_SECONDS, self._start_watching)

    def _start_watching(self) -> None:
        if not self.finished:
            self._watcher = asyncio.get_running_loop().create_task(self._cancel_on_disconnect())

    async def _cancel_on_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self._client_left()

    async def run(
        self,
        client: UpstreamClient,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
    ) -> None:
        """Forward the request and stream the answer. Raises an `UpstreamError` before the answer starts (for the
        error handler to render), `UpstreamIncompleteError` when the answer breaks off after (for the server to
        abort the client's connection).

        A disconnect cancels this task where it waits (for the upstream, or for the client to take a chunk);
        that cancellation is ours, so it is absorbed here and the request simply ends.
        """
        task = self._task = asyncio.current_task()
        self._watch_for_disconnect()
        try:
            await self._forward(client, target, headers, body)
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
        client: UpstreamClient,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
    ) -> None:
        context = RequestContext.of(self.scope)
        response = await client.request(
            self.scope["method"].encode("ascii"),
            target,
            headers,
            body,
            request_id=context.request_id if context else None,
        )
        complete = False
        try:
            await self.send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": response_headers_for_client(response.headers),
                }
            )
            # The chunk that completes the body goes as the last message (most answers come whole). A body that
            # breaks off raises here, whatever its framing: the message is never ended as if it were whole.
            chunk = await response.read_chunk()
            while chunk and not response.ended:
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await response.read_chunk()
            complete = True
            self.finished = True
            await self.send({"type": "http.response.body", "body": chunk, "more_body": False})
        finally:
            if complete:
                response.release()  # read to its end: the connection goes back to the pool
            else:
                response.close()  # cut off: the upstream sees the connection close now, and stops
