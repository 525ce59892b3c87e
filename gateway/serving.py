"""How uvicorn serves the gateway: its httptools protocol, with the writes of one loop turn sent together.

uvicorn writes a response's status line and headers with one `transport.write` and its body with another: two
system calls for every proxied response, the first of them the costliest line of the gateway's profile
(BENCHMARKS.md). A connection's writes are held until the end of the loop turn they were made in, so that a
response whose body is already at hand leaves in one. A streamed body still leaves chunk by chunk, a turn later.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PROTOCOL = "gateway.serving:GatewayHttpProtocol"  # what uvicorn's `http` option names
# Past this much held, the bytes go at once: a body sent in a tight loop (no await that yields) must meet the
# transport's own flow control, not pile up here until the turn ends.
HOLD_AT_MOST = 64 * 1024


class CoalescingTransport:
    """A transport that joins the writes made during one turn of the event loop into one write.

    Everything else is the wrapped transport's own; closing sends what is held first, aborting drops it (as the
    transport drops its own buffer)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._transport.is_closing():
            self._transport.write(data)  # the transport's own answer to a late write
            return
        chunk = bytes(data)
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        if self._held_bytes >= HOLD_AT_MOST:
            self._send_held()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._end_of_turn)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def is_closing(self) -> bool:  # asked once a request by uvicorn: spelled out, not through __getattr__
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def close(self) -> None:
        self._send_held()
        self._transport.close()

    def write_eof(self) -> None:
        self._send_held()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self._held_bytes = 0
        self._transport.abort()

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self._send_held()

    def _send_held(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        if held and not self._transport.is_closing():  # closing already: the connection is gone
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `CoalescingTransport`; WebSocket upgrades hand it on as they find it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
