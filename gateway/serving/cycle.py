"""The lean request cycle: uvicorn's httptools protocol with the edge's limits (`EdgeProtocol`), each request
served by a cycle of ours.

uvicorn's request cycle cost a trivial app 19 µs of CPU a request where a bare protocol on the same parser spent
11 (BENCHMARKS.md): an `asyncio.Event` per request, a keep-alive timer armed and cancelled per request, two
regular expressions per response header, and a response's status line and headers written with one system call
and its body with another (for a proxied response the head's write was the costliest line of the gateway's
profile). `GatewayHttpProtocol` keeps uvicorn's connection handling (its parser setup, 400s, WebSocket
upgrades, pipelining, flow control, graceful shutdown) and the edge's, and serves each request with a
`RequestCycle`: the same ASGI behaviour and checks, and the edge's rules (`gateway.serving.rules`), with a
future made only when `receive` must wait, header names checked once per name, and the head held until the
body's first bytes (or the end of the loop turn), so that a response whose body is at hand leaves in one write.
Whether it pays for itself, against `EdgeProtocol` with uvicorn's own cycle: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE, HttpToolsProtocol

from gateway.serving.edge import DONE, EdgeProtocol
from gateway.serving.rules import closes_connection, ended_quietly, log_connection_ended

# Header names already found valid: a response's names come from a small set, so each is checked once. Bounded,
# so that names an app makes up per request cannot grow it without end.
_VALID_NAMES: set[bytes] = set()
_VALID_NAMES_AT_MOST = 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}


class GatewayHttpProtocol(EdgeProtocol):
    """uvicorn's httptools protocol with the edge's limits, each request served by a `RequestCycle`."""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._connection_ends():
            return
        self.connections.discard(self)
        cycle: RequestCycle | None = self.cycle  # type: ignore[assignment]
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.wake()
        if self.flow is not None:
            self.flow.resume_writing()
        if exc is None:
            self.transport.close()
        self.parser = None  # type: ignore[assignment]

    def on_headers_complete(self) -> None:
        self._request_begins()
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return  # uvicorn's data_received hands the connection to the WebSocket protocol
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = url.query or b""
        app = self.app
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        previous = self.cycle
        cycle = RequestCycle(
            self,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            expect_100_continue=self.expect_100_continue,
        )
        self.cycle = cycle  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            self._start_asgi_task(cycle, app)
        else:
            self.flow.pause_reading()  # pipelined: served once the response before it is complete
            self.pipeline.appendleft((cycle, app))  # type: ignore[arg-type]

    def on_body(self, body: bytes) -> None:
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # the WebSocket protocol takes the connection over
        cycle: RequestCycle = self.cycle  # type: ignore[assignment]
        if cycle.response_complete:
            return
        cycle.chunks.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        self._reading = DONE
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # the WebSocket protocol takes the connection over
        cycle: RequestCycle = self.cycle  # type: ignore[assignment]
        if cycle.response_complete:
            return
        cycle.more_body = False
        cycle.wake()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        HttpToolsProtocol._start_asgi_task(self, cycle, app)  # the cycle keeps the edge's rules itself

    def _wake(self, cycle: Any) -> None:
        cycle.wake()


class RequestCycle:
    """One request and its response on a connection: the ASGI `receive` and `send` uvicorn's cycle gives, with
    the same checks (message order, Content-Length kept to, header names and values valid, 100-continue,
    HEAD, write flow control), at less cost per request."""

    __slots__ = (
        "_app_returned",
        "_head",
        "_protocol",
        "_ready",
        "_waiter",
        "buffered",
        "chunked_encoding",
        "chunks",
        "close_delimited",
        "disconnected",
        "expected_content_length",
        "keep_alive",
        "more_body",
        "response_complete",
        "response_started",
        "scope",
        "waiting_for_100_continue",
    )

    def __init__(self, protocol: GatewayHttpProtocol, *, keep_alive: bool, expect_100_continue: bool) -> None:
        self._protocol = protocol
        self.scope: Any = protocol.scope
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.disconnected = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.close_delimited = False  # an HTTP/1.0 body without a length: it ends when the connection closes
        self.expected_content_length = 0
        self._ready = False  # something for `receive` happened since it last returned (an Event's flag)
        self._waiter: asyncio.Future[None] | None = None
        self._app_returned = False
        # The status line and headers, held until the body's first bytes go with them (or the turn ends).
        self._head: bytes | None = None

    def wake(self) -> None:
        """Body arrived, the request ended, the client left or the response is complete: `receive` may go on."""
        self._ready = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def run_asgi(self, app: Any) -> None:
        protocol = self._protocol
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if ended_quietly(
                exc, self.scope, response_started=self.response_started, disconnected=self.disconnected
            ):
                self.disconnected = True
                self._close()  # after the head, or some of the body: never the end of the message
                return
            protocol.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self._send_500_response()
            else:
                self._close()
        else:
            if result is not None:
                protocol.logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._close()
            elif self.disconnected:
                if not self.response_complete:
                    log_connection_ended(self.scope, response_started=self.response_started)
            elif not self.response_started:
                protocol.logger.error("ASGI callable returned without starting response.")
                await self._send_500_response()
            elif not self.response_complete:
                protocol.logger.error("ASGI callable returned without completing response.")
                self._close()
        finally:
            self._app_returned = True  # a response completed later no longer starts a pipelined request

    async def _send_500_response(self) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
        await self.send(
            {"type": "http.response.start", "status": 500, "headers": [*headers, (b"connection", b"close")]}
        )
        await self.send({"type": "http.response.body", "body": b"Internal Server Error", "more_body": False})

    async def receive(self) -> dict[str, Any]:
        protocol = self._protocol
        if self.waiting_for_100_continue and not protocol.transport.is_closing():
            protocol.transport.write(_CONTINUE)
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            protocol.flow.resume_reading()
            if not self._ready:
                waiter = self._waiter
                if waiter is None:
                    waiter = self._waiter = protocol.loop.create_future()
                await waiter
            self._ready = False
        if self.disconnected or self.response_complete:
            return dict(_DISCONNECT)
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Any) -> None:
        protocol = self._protocol
        flow = protocol.flow
        if flow.write_paused and not self.disconnected:
            await flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self.response_started = True
            self.waiting_for_100_continue = False
            status = message["status"]
            if closes_connection(status):
                self.keep_alive = False
            lines = [STATUS_LINE[status]]
            has_connection_close = False
            for headers in (protocol.server_state.default_headers, message.get("headers", ())):
                for name, value in headers:
                    if name not in _VALID_NAMES:
                        _check_name(name)
                    if _INVALID_VALUE(value):
                        raise RuntimeError("Invalid HTTP header value.")
                    name = name.lower()
                    if name == b"content-length" and self.chunked_encoding is None:
                        self.expected_content_length = int(value.decode())
                        self.chunked_encoding = False
                    elif name == b"transfer-encoding" and value.lower() == b"chunked":
                        self.expected_content_length = 0
                        self.chunked_encoding = True
                    elif name == b"connection" and b"close" in [t.lower().strip() for t in value.split(b",")]:
                        self.keep_alive = False
                        has_connection_close = True
                    lines += (name, b": ", value, b"\r\n")
            if not self.keep_alive and not has_connection_close:
                lines.append(b"connection: close\r\n")
            if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
                # Neither a length nor a coding given: chunks, which HTTP/1.0 does not know (its keep_alive is
                # False: the connection's close ends the body).
                if self.scope["http_version"] == "1.0":
                    self.close_delimited = True
                else:
                    self.chunked_encoding = True
                    lines.append(b"transfer-encoding: chunked\r\n")
            lines.append(b"\r\n")
            self._head = b"".join(lines)
            protocol.loop.call_soon(self._write_head)  # if no body comes this turn, the head goes alone
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                )
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
                data = b""
            elif self.chunked_encoding:
                data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
                if not more_body:
                    data += b"0\r\n\r\n"
            elif self.close_delimited:
                data = body
            else:
                if len(body) > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= len(body)
                data = body
            head = self._head
            if head is not None:
                self._head = None
                data = head + data
            if data:
                protocol.transport.write(data)
            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.wake()
                if not self.keep_alive:
                    protocol.transport.close()
                if not self._app_returned:
                    protocol.on_response_complete()
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
            )

    def _write_head(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self.disconnected:
                self._protocol.transport.write(head)

    def _close(self) -> None:
        self._write_head()
        self._protocol.transport.close()


_INVALID_VALUE = HEADER_VALUE_RE.search


def _check_name(name: bytes) -> None:
    if HEADER_RE.search(name):
        raise RuntimeError("Invalid HTTP header name.")
    if len(_VALID_NAMES) < _VALID_NAMES_AT_MOST:
        _VALID_NAMES.add(name)
