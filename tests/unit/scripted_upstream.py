"""A scripted HTTP/1.1 upstream on loopback, and a pool pointed at it: the scaffolding of the `gateway.http1` tests.

The upstream is `asyncio.start_server` and raw bytes: a handler reads each request as it came over the wire and
writes whatever response bytes (or FIN, or RST) the test scripts, and every connection it accepted is kept with
what arrived on it, so a test can say how many times the upstream saw a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvloop

from gateway.http1 import HttpPool, Response

# The most bytes one read from a socket hands to the protocol (asyncio's selector transports).
MAX_READ = 256 * 1024


# A scripted upstream.


@dataclass
class Request:
    """One request as the upstream received it."""

    line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes  # as long as its Content-Length says (the pool sends no other framing)
    raw: bytes  # every byte of this request as it came over the wire

    @property
    def target(self) -> bytes:
        return self.line.split(b" ")[1]

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


class Peer:
    """One connection the upstream accepted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()  # everything that came in
        self.requests: list[Request] = []
        self.eof = asyncio.Event()  # the client closed its side
        self._buffer = bytearray()  # received, not yet parsed

    async def _fill(self) -> bool:
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        if not data:
            self.eof.set()
            return False
        self.received += data
        self._buffer += data
        return True

    async def _until(self, marker: bytes) -> bytes | None:
        while (at := self._buffer.find(marker)) < 0:
            if not await self._fill():
                return None
        return self._take(at + len(marker))

    async def _exactly(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            if not await self._fill():
                return None
        return self._take(size)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def read_request(self) -> Request | None:
        """The next whole request, or None when the connection ends first."""
        head = await self._until(b"\r\n\r\n")
        if head is None:
            return None
        line, *fields = head[:-4].split(b"\r\n")
        headers = []
        for field in fields:
            name, _, value = field.partition(b":")
            headers.append((name, value.strip()))
        request = Request(line, headers, b"", head)
        lengths = request.values(b"content-length")
        if lengths:
            body = await self._exactly(int(lengths[0]))
            if body is None:
                return None
            request.body = body
            request.raw += body
        self.requests.append(request)
        return request

    async def read_until_eof(self) -> None:
        """Take whatever else comes, until the client closes the connection."""
        while await self._fill():
            pass

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def reset(self) -> None:
        """Abort the connection with a TCP reset (as a crashing upstream or a middlebox does), not a clean close."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()


Handler = Callable[[Peer], Awaitable[None]]


class Upstream:
    """A loopback server whose every connection is served by `handler`; it counts the connections it accepts."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def accepted(self) -> int:
        return len(self.peers)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0.01)  # the transports' closing callbacks run


def answering(response: bytes) -> Handler:
    """Answers every request on a connection with `response`, until the client closes it."""

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            peer.send(response)

    return handler


def ok(body: bytes = b"hello") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


@contextlib.asynccontextmanager
async def pool_to(
    origin: str,
    *,
    max_connections: int = 4,
    keepalive_seconds: float = 5.0,
    connect_timeout: float = 1.0,
    read_timeout: float = 1.0,
    pool_timeout: float = 1.0,
) -> AsyncIterator[HttpPool]:
    pool = HttpPool(
        origin,
        max_connections=max_connections,
        keepalive_seconds=keepalive_seconds,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        pool_timeout=pool_timeout,
    )
    try:
        yield pool
    finally:
        await pool.aclose()
        await asyncio.sleep(0.01)  # the transports' closing callbacks run


async def read_all(response: Response) -> bytes:
    body = b""
    while chunk := await response.read_chunk():
        body += chunk
    return body


async def get_text(pool: HttpPool, target: bytes = b"/") -> bytes:
    """One GET read to its end and released."""
    response = await pool.request(b"GET", target, [], None)
    body = await read_all(response)
    response.release()
    return body


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# The event loops the pool runs on: uvloop serves the gateway, asyncio's own loop runs most tests. The races of the
# resend rule and of a body's end depend on how a loop orders its callbacks, so those tests run on both.

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run_on(loop: str, scenario: Coroutine[Any, Any, None]) -> None:
    """Run a test's scenario to its end on a new event loop of the kind named (a key of `LOOPS`)."""
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario)
