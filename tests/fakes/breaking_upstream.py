"""A fake OpenAI upstream whose answers break off: raw sockets on loopback, in a thread of its own.

The request's `model` picks the answer, `{framing}-{end}[-nousage][-json]`:

- framing: `chunked` (Transfer-Encoding: chunked, never its last chunk), `length` (a Content-Length larger than what
  is sent), `close` (neither: the body ends with the connection);
- end: `fin` (the connection closed), `rst` (reset: SO_LINGER 0), `silent` (nothing more, the connection held
  open until the gateway gives up on it);
- `nousage`: the stream has no usage chunk before it breaks off; `json`: a plain completion cut in the middle
  instead of an event stream.

A request without a body (a GET) is answered as `without_body` says.

Before the break the stream has two content deltas and (unless `nousage`) the usage chunk, and the upstream
waits a moment, so that the gateway has read them all before the break (a reset drops unread bytes).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from types import TracebackType

from tests.fakes.openai_upstream import USAGE, chunk, completion

BEFORE_THE_BREAK_SECONDS = 0.3
SILENT_AT_MOST_SECONDS = 15.0
DELTAS = ["Hello", ", wor"]


class BreakingUpstream:
    """`with BreakingUpstream() as upstream:` serves at `upstream.url`; `closed_by_gateway` counts silent answers
    the gateway hung up on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self.closed_by_gateway = 0
        self.without_body = "chunked-fin-json"  # the answer to a request without a body (a GET)
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> BreakingUpstream:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        ).result(10)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lengths = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            body = await reader.readexactly(lengths[0]) if lengths else b""
            model = json.loads(body)["model"] if body else self.without_body
            await self._answer(str(model), reader, writer)
        finally:
            writer.close()

    async def _answer(self, model: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framing, end, *flags = model.split("-")
        if "json" in flags:
            whole = json.dumps(completion(model)).encode()
            pieces = [whole[: len(whole) // 2]]
            content_type = b"application/json"
        else:
            pieces = [chunk(model, delta) for delta in DELTAS]
            if "nousage" not in flags:
                pieces.append(chunk(model, None, usage=USAGE))
            content_type = b"text/event-stream"
        head = b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\n"
        if framing == "chunked":
            head += b"transfer-encoding: chunked\r\n"
            pieces = [b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces]
        elif framing == "length":
            head += b"content-length: %d\r\n" % (sum(map(len, pieces)) + 1000)
        else:
            assert framing == "close", model
            head += b"connection: close\r\n"
        writer.write(head + b"\r\n")
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        await asyncio.sleep(BEFORE_THE_BREAK_SECONDS)
        if end == "rst":
            sock: socket.socket = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif end == "silent":
            try:
                async with asyncio.timeout(SILENT_AT_MOST_SECONDS):
                    while await reader.read(65536):
                        pass
                self.closed_by_gateway += 1
            except TimeoutError:
                pass
        else:
            assert end == "fin", model
