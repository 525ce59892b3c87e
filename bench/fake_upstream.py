"""A fake OpenAI-compatible `POST /v1/chat/completions`, fast enough never to be the benchmark's bottleneck.

A bare asyncio Protocol on uvloop with httptools' parser and canned answers: no framework, no per-request
JSON encoding. It answers a JSON completion with a `usage` object or, when the request says `"stream": true`,
an SSE stream of a few deltas, a usage chunk and `data: [DONE]`, each event its own HTTP chunk written on its
own loop turn, so that a proxy sees the stream arrive in pieces as it would from a real provider.

Run: `python bench/fake_upstream.py --port 9101`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from collections import deque
from typing import cast

import httptools
import orjson
import uvloop

CREATED = 1_795_000_000
MODEL = "gpt-4o-mini"
USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
WORDS = ["Hello", "!", " How", " can", " I", " help", "?"]


def _completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
            "system_fingerprint": "fp_bench",
        }
    )


def _stream_events() -> list[bytes]:
    """The SSE events of one stream, each already framed as an HTTP/1.1 chunk."""

    def chunk(choices: list[object], usage: object = None) -> dict[str, object]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": choices,
            "usage": usage,
        }

    payloads = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    payloads += [chunk([{"index": 0, "delta": {"content": w}, "finish_reason": None}]) for w in WORDS]
    payloads.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    payloads.append(chunk([], USAGE))
    events = [b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads] + [b"data: [DONE]\n\n"]
    return [f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in events] + [b"0\r\n\r\n"]


COMPLETION = _completion_body()
COMPLETION_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req-bench\r\n"
    b"content-length: " + str(len(COMPLETION)).encode() + b"\r\n"
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"x-request-id: req-bench\r\ntransfer-encoding: chunked\r\n"
)
STREAM_EVENTS = _stream_events()
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
PATH = b"/v1/chat/completions"


class ChatCompletions(asyncio.Protocol):
    """One keep-alive connection. Requests that arrive while a stream is still going out wait their turn."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.pending: deque[tuple[bytes, bytes, bool]] = deque()
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(BAD_REQUEST)
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.pending.append((self.url, b"".join(self.body), self.parser.should_keep_alive()))
        if not self.streaming:
            self._answer_pending()

    def _answer_pending(self) -> None:
        while self.pending and not self.streaming and self.transport is not None:
            url, body, keep_alive = self.pending.popleft()
            connection = b"\r\n" if keep_alive else b"connection: close\r\n\r\n"
            if url.split(b"?", 1)[0] != PATH:
                self.transport.write(NOT_FOUND)
                self._finish(keep_alive)
            elif _wants_stream(body):
                self.streaming = True
                self.transport.write(STREAM_HEAD + connection + STREAM_EVENTS[0])
                asyncio.get_running_loop().call_soon(self._write_event, 1, keep_alive)
            else:
                self.transport.write(COMPLETION_HEAD + connection + COMPLETION)
                self._finish(keep_alive)

    def _write_event(self, index: int, keep_alive: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(STREAM_EVENTS[index])
        if index + 1 < len(STREAM_EVENTS):
            asyncio.get_running_loop().call_soon(self._write_event, index + 1, keep_alive)
            return
        self.streaming = False
        self._finish(keep_alive)
        self._answer_pending()

    def _finish(self, keep_alive: bool) -> None:
        if not keep_alive and self.transport is not None:
            self.transport.close()


def _wants_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and document.get("stream") is True


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ChatCompletions, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
