"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio protocol fed to httptools' response parser.

The parser's callbacks fill in the exchange in progress (status, raw headers, body chunks) and wake whoever waits
for it; body chunks are buffered up to a bound, past which the socket stops being read until the proxy has passed
them on. One exchange at a time; whether the connection can serve another is decided when this one ends.

A response never ends cleanly unless its framing says so: a body framed by Content-Length or chunked encoding that
the connection cuts short (FIN or RST) is `BrokenOff`, and so is a body delimited by the connection's end that ends
in a reset rather than a FIN. The response head (status lines and headers, interim responses included) is bounded
by `MAX_HEAD_BYTES`, counted as bytes arrive, so an upstream cannot make us buffer an endless header.
"""

from __future__ import annotations

import asyncio
import select
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from gateway.http1.errors import BodyTimeout, BrokenOff, HeadersTimeout, HeadersTooLarge

# Buffered response bytes past which the socket is no longer read; it is read again once the proxy has taken them
# (`read_chunk` hands out everything buffered at once).
HIGH_WATER = 256 * 1024
NO_BODY_STATUSES = (204, 304)
# The most bytes of response head (status lines and headers, 1xx interim responses included) taken from an
# upstream; past it the exchange fails (issue 16). Twice the default limit on the heads of the requests the gateway
# serves (MAX_HEADER_BYTES): generous for any API's answer, small enough that no upstream can make us hoard.
MAX_HEAD_BYTES = 64 * 1024


class Connection(asyncio.Protocol):
    """A connection and the exchange it carries; `on_close` tells its pool when it is gone."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, read_timeout: float, on_close: Callable[[Connection], None]
    ) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self._readable: select.poll | None = None  # polls the socket without reading it (`is_stale`)
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._busy = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wait_deadline = 0.0
        self._timeout_error: type[Exception] = HeadersTimeout
        self._reset(head_request=False)

    def _reset(self, *, head_request: bool) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.has_length = False
        self.headers_done = False
        self.done = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.request_written = False  # the request went to the socket: the upstream may have read it
        self._head_bytes = 0
        self._head_request = head_request
        self._interim = False
        self._surplus = False
        self.until_close = False  # the body ends with the connection (no length, not chunked)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False

    # The exchange, as the pool drives it.

    def begin(self, *, head_request: bool) -> None:
        self._reset(head_request=head_request)
        self._busy = True

    def write(self, data: bytes) -> None:
        """Hand the whole request (head and body, in one write) to the socket. `BrokenOff` when the connection is
        closing; `request_written` is then still False: none of this request left us, and it is safe to send it
        elsewhere."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise BrokenOff("the connection closed before the request was sent")
        transport.write(data)
        if transport.is_closing():
            # The transport tries the socket at once when nothing is queued; a reset or broken pipe there closes
            # it before this returns, and the bytes of this call were not taken.
            raise BrokenOff("the connection was reset as the request was being sent")
        self.request_written = True

    async def response_started(self) -> None:
        """Wait for the response headers: `HeadersTimeout` after the read timeout, `BrokenOff` if the
        connection ends first."""
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait(HeadersTimeout)

    async def read_chunk(self) -> bytes:
        """The body bytes buffered so far, waiting for some if there are none; `b""` once the body is complete."""
        while True:
            if self._chunks:
                chunks = self._chunks
                chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._reading_paused and self.transport is not None and not self.closed:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return chunk
            if self.done:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait(BodyTimeout)

    def is_stale(self) -> bool:
        """An idle connection that cannot carry another exchange: closed, closing, or its socket readable. Nothing
        may arrive on an idle connection, so readable means the upstream's FIN or RST (or stray bytes) is waiting
        for the loop to notice it: the keep-alive race, caught before a request is written rather than after.
        One `poll` with a zero timeout on the socket, registered once per connection (urllib3's
        `is_connection_dropped` and httpcore's `is_readable` make the same check): about a microsecond."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return True
        return self._readable is not None and bool(self._readable.poll(0))

    @property
    def drained(self) -> bool:
        """The response is complete and every body byte has been handed out."""
        return self.done and not self._chunks

    def finish(self) -> bool:
        """Ends the exchange; True when the connection can carry another."""
        self._busy = False
        reusable = (
            self.done and self.keep_alive and self.request_written and not self.closed and self.error is None
        )
        if not reusable:
            self.close()
        return reusable

    def close(self) -> None:
        self._stop_timer()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    async def _wait(self, timeout_error: type[Exception]) -> None:
        waiter = self._waiter = self.loop.create_future()
        self._wait_deadline = self.loop.time() + self.read_timeout
        self._timeout_error = timeout_error
        if self._timer is None:
            self._timer = self.loop.call_at(self._wait_deadline, self._check_deadline)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_deadline(self) -> None:
        """The read timeout, one timer per connection rather than one per wait: when it fires it fails the wait in
        progress if that wait is over its deadline, else it is set again for that wait's deadline."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait sets the timer again
        if self.loop.time() >= self._wait_deadline:
            waiter.set_exception(
                self._timeout_error(f"nothing from the upstream for {self.read_timeout:g} s")
            )
        else:
            self._timer = self.loop.call_at(self._wait_deadline, self._check_deadline)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as `asyncio.Transport`: a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._readable = select.poll()
            self._readable.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if not self._busy or self.done:
            # Nothing may follow a complete response: whatever an idle connection sends, it is not ours to reuse.
            self.close()
            return
        try:
            if self.headers_done:
                self.parser.feed_data(data)
            elif (head_bytes := self._head_bytes + len(data)) <= MAX_HEAD_BYTES:
                self._head_bytes = head_bytes
                self.parser.feed_data(data)
            else:
                self._feed_past_head_limit(data)
        except httptools.HttpParserUpgrade:
            self._fail(BrokenOff("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(BrokenOff(f"the upstream's response could not be parsed ({exc})"))

    def _feed_past_head_limit(self, data: bytes) -> None:
        """Bytes that take an incomplete response head past `MAX_HEAD_BYTES`: those within the limit are parsed,
        and the rest only if the head ended there (they are body, or the next exchange's surplus)."""
        room = MAX_HEAD_BYTES - self._head_bytes
        self._head_bytes += len(data)
        if room > 0:
            self.parser.feed_data(data[:room])
        if not self.headers_done:
            self._fail(HeadersTooLarge(f"the upstream's response head is over {MAX_HEAD_BYTES} bytes"))
            return
        self.parser.feed_data(data[room:])

    def eof_received(self) -> bool:
        self.closed = True  # the upstream is done with this connection; the transport closes it
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        if self.headers_done and not self.done and self.until_close and exc is None:
            self.done = True  # a body delimited by the end of the connection
        elif self._busy and not self.done and self.error is None:
            self.error = BrokenOff("the upstream closed the connection before the response was complete")
        self._wake()
        self.on_close(self)

    # httptools' callbacks. Nothing may follow a complete response in the same read either: a second message
    # is not parsed into the first, and the connection is not reused after it.

    def on_message_begin(self) -> None:
        if self.done:
            self._surplus = True
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._surplus:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._surplus:
            return
        status = self.parser.get_status_code()
        if status < 200:  # an interim response (100 Continue, 103 Early Hints): the real one follows
            self._interim = True
            self.headers = []
            return
        self.status = status
        self.headers_done = True
        framing = _framing(self.headers)
        self.has_length = framing == b"content-length"
        if self._head_request:
            self.done = True  # no body follows, whatever the headers say; the parser cannot know that
        elif framing is None and status not in NO_BODY_STATUSES:
            self.until_close = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._surplus:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._surplus:
            return
        if self._interim:
            self._interim = False
            return
        self.done = True
        # A HEAD response leaves the parser expecting a body: the connection is not reused after one.
        self.keep_alive = self.parser.should_keep_alive() and not self._head_request and not self.until_close
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.close()
        self._wake()


def _framing(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """How the body's end is marked: `b"chunked"`, `b"content-length"`, or None (by closing the connection)."""
    framing = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding" and b"chunked" in value.lower():
            return b"chunked"
        if lowered == b"content-length":
            framing = b"content-length"
    return framing
