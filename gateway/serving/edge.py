"""uvicorn's httptools protocol with the edge's limits (`EdgeLimits`): what a client may cost before any app code
runs. Stock uvicorn has none of them: a 64 MiB header was parsed whole (and held `/health` on another connection
for seconds), 100,000 headers were accepted, and connections that sent nothing, half a header or part of a body
were kept until the open-file limit had every new connection reset.

Header bytes are counted as they arrive and header fields as they are parsed, so an oversized header is refused
(431) as soon as it crosses the limit. One timer per connection, armed for the earliest deadline of what the
connection is doing and re-armed lazily when it fires (never per read): its headers (408 past `header_timeout`),
its body (408 past `body_timeout` between two reads, unless it is the server that stopped reading), its idle time
between requests (uvicorn's keep-alive timeout). Past `max_connections` (kept below the open-file limit) the
connection that has served no request for the longest is closed to make room; when there is none, 503.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.serving.limits import EdgeLimits
from gateway.serving.register import ConnectionRegister
from gateway.serving.rules import EdgeExchange

# What the connection is reading: a request's headers (or awaiting its first byte), its body, nothing (the
# request was read whole), or nothing ever again (refused, or handed to the WebSocket protocol).
HEADERS, BODY, DONE, FINISHED = range(4)


class TooManyHeadersError(Exception):
    """Raised from the parser's header callback to stop it at the field past `max_headers`."""


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the edge's limits, serving each request with uvicorn's own cycle."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: EdgeLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits = limits or EdgeLimits()
        self._max_headers = limits.max_headers
        self._register = ConnectionRegister.of(server_state, limits)
        self._reading = HEADERS
        self._since = 0.0  # when the headers began, the body was last read, or the connection fell idle
        self._header_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._refused = False  # past the cap: answered 503 and closed, never counted as a connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        register = self._register
        if len(self.connections) >= register.cap and not self._make_room():
            self.transport = transport
            self._refused = True
            transport.write(self._answer(503, "Too many connections."))
            transport.close()
            register.warn("refused", f"refused connections with 503: MAX_CONNECTIONS ({register.cap}) open")
            return
        super().connection_made(transport)
        register.reusable(self)
        self._since = self.loop.time()
        self._arm(self._since + self.limits.header_timeout)

    def _make_room(self) -> bool:
        victim = self._register.take_oldest()
        if victim is None:
            return False
        self.connections.discard(victim)  # counted out now: its transport closes on the next turn
        victim._stop_timer()
        victim.transport.close()
        self._register.warn(
            "shed",
            f"closed idle or half-sent connections to make room: MAX_CONNECTIONS ({self._register.cap}) open",
        )
        return True

    def _connection_ends(self) -> bool:
        """The edge's part of `connection_lost`; False when there is nothing else to do (a refused connection)."""
        self._stop_timer()
        self._register.forget(self)
        return not self._refused

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connection_ends():
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        reading = self._reading
        if reading == BODY:
            self._since = self.loop.time()
        elif reading != FINISHED:
            if reading == DONE:
                self._headers_begin()
            counted = self._header_bytes
            self._header_bytes = counted + len(data)
            limit = self.limits.max_header_bytes
            if self._header_bytes > limit and not _headers_end_within(data, limit - counted):
                self._refuse_headers("MAX_HEADER_BYTES", limit)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, TooManyHeadersError):
                self._refuse_headers("MAX_HEADERS", self._max_headers)
            else:
                self._register.warn("invalid", "refused requests with 400: invalid HTTP")
                self.send_400_response("Invalid HTTP request received.")
            return
        # A read that crossed the limit was let through when a header's end seemed within it; now it is known.
        if self._reading == HEADERS and self._header_bytes > self.limits.max_header_bytes:
            self._refuse_headers("MAX_HEADER_BYTES", self.limits.max_header_bytes)

    def _headers_begin(self) -> None:
        self._reading = HEADERS
        self._header_bytes = 0
        self._since = self.loop.time()
        self._arm(self._since + self.limits.header_timeout)

    def on_message_begin(self) -> None:
        if self._reading == DONE:  # a pipelined request, begun in the read that ended the one before it
            self._headers_begin()
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= self._max_headers:
            raise TooManyHeadersError
        name = name.lower()
        # llhttp keeps trailing whitespace, which RFC 9110 excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._request_begins()
        super().on_headers_complete()

    def _request_begins(self) -> None:
        self._reading = BODY
        self._since = self.loop.time()
        self._register.forget(self)

    def on_message_complete(self) -> None:
        self._reading = DONE
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._register.reusable(self)
        if self._reading == DONE:  # idle from now: uvicorn's keep-alive timeout runs
            self._since = self.loop.time()
            self._arm(self._since + self.timeout_keep_alive)
        elif self._reading == HEADERS:
            # The next request's headers, held back by the response: timed from now.
            self._since = self.loop.time()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        super()._start_asgi_task(cycle, EdgeExchange(app, cycle))  # type: ignore[arg-type]

    def handle_websocket_upgrade(self) -> None:
        self._reading = FINISHED
        self._stop_timer()
        self._register.forget(self)
        super().handle_websocket_upgrade()

    # The one timer.

    def _arm(self, deadline: float) -> None:
        """Makes sure the timer fires by `deadline`; an earlier one stays (when it fires it arms the next)."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer = self.loop.call_at(deadline, self._deadline_passed)
        self._timer_at = deadline

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline_passed(self) -> None:
        self._timer = None
        now = self.loop.time()
        reading = self._reading
        if reading == HEADERS:
            due = self._since + self.limits.header_timeout
            if not self._is_idle():
                due = now + self.limits.header_timeout  # the response before it first; then timed afresh
            elif now >= due:
                self._headers_timed_out()
                return
        elif reading == BODY:
            due = self._since + self.limits.body_timeout
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                due = now + self.limits.body_timeout  # it is the server that holds the body back
            elif now >= due:
                self._time_out("request body stalled past BODY_TIMEOUT", self.limits.body_timeout, "body")
                return
        elif reading == DONE and self._is_idle():
            due = self._since + self.timeout_keep_alive
            if now >= due:
                self.timeout_keep_alive_handler()
                return
        else:
            return  # serving the request: its response's end arms the timer again
        self._arm(due)

    def _is_idle(self) -> bool:
        """No request of this connection is being served."""
        cycle = self.cycle
        return (cycle is None or cycle.response_complete) and not self.pipeline

    # Refusals.

    def _headers_timed_out(self) -> None:
        if self._header_bytes == 0:
            # Nothing sent: closed without a word, as nginx does. A 408 here would be read as the answer to a
            # request a client sends on it just as it closes (a browser's preconnected socket, say).
            self.transport.close()
            return
        self._time_out(
            "request headers took longer than HEADER_TIMEOUT", self.limits.header_timeout, "header"
        )

    def _time_out(self, what: str, seconds: float, part: str) -> None:
        self._register.warn(what, f"closed connections with 408: {what} ({seconds:g} s)")
        self._refuse(408, f"Request {part} timed out.")

    def _refuse_headers(self, setting: str, limit: int) -> None:
        self._register.warn(
            "header-size", f"refused requests with 431: request headers over {setting} ({limit})"
        )
        self._refuse(431, "Request header fields too large.")

    def _refuse(self, status: int, text: str) -> None:
        """Answers `status` and closes the connection; only closes it when a response is under way on it."""
        cycle = self.cycle
        if self._reading == HEADERS:
            may_answer = cycle is None or cycle.response_complete
        else:
            may_answer = cycle is not None and not cycle.response_started and not self.pipeline
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app hears of it as of a client that left
            self._wake(cycle)
        self._reading = FINISHED  # nothing more is read
        self._stop_timer()
        if may_answer:
            self.transport.write(self._answer(status, text))
        self.transport.close()

    def _wake(self, cycle: Any) -> None:
        cycle.message_event.set()

    def _answer(self, status: int, text: str) -> bytes:
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        body = text.encode("ascii")
        content += (
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body),
            body,
        )
        return b"".join(content)


def _headers_end_within(data: bytes, allowed: int) -> bool:
    """Whether the headers being read may end within the first `allowed` bytes of `data`: a blank line there,
    or the end of one the read before began."""
    return (
        data.find(b"\n\r\n", 0, allowed) != -1
        or data.find(b"\n\n", 0, allowed) != -1
        or (allowed >= 1 and data[:1] == b"\n")
        or (allowed >= 2 and data[:2] == b"\r\n")
    )
