"""Keep-alive connections to one upstream origin, and the request/response exchange over one of them.

Connections are reused newest first (the one most likely still open), at most `max_connections` at a time;
waiting for a free one is bounded by `pool_timeout` (then `PoolTimeout`). Idle connections are closed by one timer
per pool once idle for `keepalive_seconds`, and an idle connection is checked before reuse: one found closed, or
with the upstream's FIN or RST (or stray bytes) waiting on its socket, is closed and the next one tried.

The idle check is `Connection.is_stale`: the protocol's own flags, then one zero-timeout `poll` of the socket,
because the upstream's FIN may have arrived a moment ago and the loop not have handled it yet. Measured on uvloop:
0.6-0.8 µs per reuse, of the 23-25 µs of CPU a whole request costs this pool and a trivial in-process upstream.

A request goes out whole, its body in hand: every chain has read the client's body before the proxy (to rewrite
it, namespace it, or hold it to the size limit), so the request line, headers and body leave in one write, framed
by Content-Length. A request is sent again only when the upstream cannot have received it: the connection turned
out closed as that write was made, so none of it left us (then once, on another connection). Once any byte is
written, a connection that ends without an answer is `BrokenOff` (the proxy's 502): an upstream may read a POST,
act on it (a paid completion) and close without answering, and a resend would act twice.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

from gateway.http1.connection import Connection
from gateway.http1.errors import BrokenOff, ConnectFailed, PoolTimeout

Headers = list[tuple[bytes, bytes]]
# Methods whose requests carry a body by definition: an empty one is announced as `content-length: 0`.
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class Response:
    """An upstream response whose headers are in; the body is read chunk by chunk, then `release` or `close`."""

    __slots__ = ("_connection", "_pool", "close_delimited", "has_length", "headers", "status")

    def __init__(self, connection: Connection, pool: HttpPool) -> None:
        self._connection: Connection | None = connection
        self._pool = pool
        self.status = connection.status
        self.headers = connection.headers
        self.has_length = connection.has_length  # framed by Content-Length (a short body cannot end cleanly)
        # The body ends when the upstream closes (no Content-Length, not chunked): a FIN is its end, an RST is not.
        self.close_delimited = connection.until_close

    async def read_chunk(self) -> bytes:
        """The next body bytes; `b""` at the end. Raises `BrokenOff` or `BodyTimeout`."""
        if self._connection is None:
            return b""
        return await self._connection.read_chunk()

    @property
    def ended(self) -> bool:
        """The whole body has been read: the next `read_chunk` would return `b""`."""
        return self._connection is None or self._connection.drained

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool when it can carry another exchange."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._put_back(connection)

    def close(self) -> None:
        """Abandon the response: the connection is closed now, so the upstream sees the exchange end."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            self._pool._put_back(connection)


class HttpPool:
    """The connections to one origin (`scheme://host[:port]`); `request` sends one exchange over one of them.

    `connect_timeout` bounds making a connection (then `ConnectFailed`); `pool_timeout` bounds waiting for a free
    one when `max_connections` are all in use (then `PoolTimeout`); `read_timeout` bounds each wait for the
    response's headers (`HeadersTimeout`) or its next body bytes (`BodyTimeout`)."""

    def __init__(
        self,
        origin: str,
        *,
        max_connections: int,
        keepalive_seconds: float,
        connect_timeout: float,
        read_timeout: float,
        pool_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc.rpartition("@")[2].encode("idna")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._reserved = 0  # connections being made
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._expiry: asyncio.TimerHandle | None = None  # closes idle connections past their keep-alive
        self._closed = False

    async def request(self, method: bytes, target: bytes, headers: Headers, body: bytes | None) -> Response:
        """Send a request and wait for its response headers. `target` is the path and query; `headers` must not
        carry Host, Content-Length or Transfer-Encoding: the pool writes Host, and the body's length."""
        if body is not None:
            length: int | None = len(body)
        else:
            length = 0 if method in BODY_METHODS else None
        head = request_head(method, target, self.host_header, headers, length)
        message = head + body if body else head
        connection = await self._acquire()
        try:
            await self._exchange(connection, method, message)
        except BrokenOff:
            if connection.request_written:
                self._put_back(connection)
                raise
            # Closed before any byte of the request left us (the keep-alive race, lost after the idle check): the
            # upstream never saw it. Once more, on a new connection, which takes the broken one's room (unless
            # the pool had already heard it close and passed the room on).
            connection.close()
            if connection in self._open:
                self._open.discard(connection)
                connection = await self._connect()
            else:
                connection = await self._acquire()
            try:
                await self._exchange(connection, method, message)
            except BaseException:
                connection.close()
                self._put_back(connection)
                raise
        except BaseException:
            connection.close()
            self._put_back(connection)
            raise
        return Response(connection, self)

    async def _exchange(self, connection: Connection, method: bytes, message: bytes) -> None:
        connection.begin(head_request=method == b"HEAD")
        connection.write(message)
        await connection.response_started()

    async def aclose(self) -> None:
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the gateway is shutting down"))

    async def _acquire(self) -> Connection:
        if self._closed:
            raise ConnectFailed("the gateway is shutting down")
        if self._idle:
            # The expiry timer may run late on a busy loop: the keep-alive is checked here too.
            expired = asyncio.get_running_loop().time() - self.keepalive_seconds
            while self._idle:
                connection = self._idle.pop()
                if connection.idle_since > expired and not connection.is_stale():
                    return connection
                connection.close()
                self._forget(connection)
        if len(self._open) + self._reserved >= self.max_connections:
            handed = await self._wait_for_connection()
            if handed is not None:
                if not handed.is_stale():
                    return handed
                handed.close()
                self._open.discard(handed)  # its room is ours: a new connection takes it
        return await self._connect()

    async def _wait_for_connection(self) -> Connection | None:
        """Wait for a connection someone releases (or for room to make one: None)."""
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.pool_timeout):
                return await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())  # handed over just as we gave up: the next in line takes it
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(f"no free connection within {self.pool_timeout:g} s") from None
            raise

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        self._reserved += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop, read_timeout=self.read_timeout, on_close=self._forget),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"no connection within {self.connect_timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, resolution and TLS failures
            raise ConnectFailed(f"could not connect ({type(exc).__name__})") from exc
        finally:
            self._reserved -= 1
        if self._closed:
            connection.close()
            raise ConnectFailed("the gateway is shutting down")
        self._open.add(connection)
        return connection

    def _put_back(self, connection: Connection) -> None:
        """An exchange ended: keep the connection for the next one, or hand it (or its room) to a waiter."""
        if connection.finish() and not self._closed:
            connection.idle_since = asyncio.get_running_loop().time()
            if not self._hand_over(connection):
                self._keep_idle(connection)
        else:
            self._forget(connection)

    def _keep_idle(self, connection: Connection) -> None:
        self._idle.append(connection)
        if self._expiry is None:
            expires = connection.idle_since + self.keepalive_seconds
            self._expiry = asyncio.get_running_loop().call_at(expires, self._close_expired)

    def _close_expired(self) -> None:
        """The keep-alive timer, one per pool and set only while connections are idle: it closes those idle for
        `keepalive_seconds`, then sets itself for the oldest one left (a connection put back later expires later,
        so it never needs to be set earlier)."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        expired = loop.time() - self.keepalive_seconds
        kept = [connection for connection in self._idle if connection.idle_since > expired]
        if len(kept) < len(self._idle):
            gone = [connection for connection in self._idle if connection.idle_since <= expired]
            self._idle = kept
            for connection in gone:
                connection.close()
                self._forget(connection)
        if kept:
            oldest = min(connection.idle_since for connection in kept)
            self._expiry = loop.call_at(oldest + self.keepalive_seconds, self._close_expired)

    def _forget(self, connection: Connection) -> None:
        """A connection closed: it no longer counts against the limit."""
        if connection in self._open:
            self._open.discard(connection)
            if connection in self._idle:
                self._idle.remove(connection)
            self._hand_over(None)

    def _pass_on(self, connection: Connection | None) -> None:
        if connection is None:
            self._hand_over(None)
        elif not self._hand_over(connection):
            self._keep_idle(connection)

    def _hand_over(self, connection: Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False


def request_head(method: bytes, target: bytes, host: bytes, headers: Headers, length: int | None) -> bytes:
    """The request line and headers. A CR or LF inside any of them would let one header smuggle another (or a
    second request): none can arrive through the server's parser, and this refuses the bytes if one ever does."""
    lines = [method + b" " + target + b" HTTP/1.1", b"host: " + host]
    lines += [name + b": " + value for name, value in headers]
    if length is not None:
        lines.append(b"content-length: %d" % length)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if head.count(b"\n") != len(lines) + 1 or head.count(b"\r") != len(lines) + 1:
        raise ValueError("a request line or header holds a CR or LF")
    return head
