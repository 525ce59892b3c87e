"""A fake OpenAI-compatible chat provider for agent chat, served on loopback; the request's `model` picks:

- any model: an SSE stream echoing the last user message in three deltas, then the usage chunk (always, as
  Mistral does, or only when `stream_options.include_usage` asks, as OpenAI does), then `[DONE]`;
- `gated`: the first delta, then nothing until the test calls `release()`, then the rest (so a test can see a
  chunk arrive before the provider has finished);
- `endless`: a delta every 0.05 s until the client goes, marking `disconnected`;
- `broken`: the provider's own 500 error;
- `fails-midway`: one delta, then an error event in the stream;
- `json`: a plain JSON completion although a stream was asked for;
- `nul`: a reply holding a NUL character (U+0000), which Postgres cannot store in text.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.recording import Recorder

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def sse(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


def delta(content: str) -> bytes:
    return sse(
        {
            "object": "chat.completion.chunk",
            "model": "fake",
            "choices": [{"index": 0, "delta": {"content": content}}],
        }
    )


class FakeChatProvider:
    """Serves `/v1/chat/completions` and `/ai/v1/chat/completions` (a Workers AI style root)."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self._released = threading.Event()
        routes = [
            Route(path, self.chat_completions, methods=["POST"])
            for path in ("/v1/chat/completions", "/ai/v1/chat/completions")
        ]
        self.app = Starlette(routes=routes)

    def reset(self) -> None:
        self.recorder.reset()
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def chat_completions(self, request: Request) -> Response:
        recorded = await self.recorder.record(request)
        body = recorded.json()
        model = body.get("model", "")
        if model == "broken":
            error = {"error": {"message": "boom", "type": "server_error", "code": None, "param": None}}
            return JSONResponse(error, status_code=500)
        last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        if model == "json":
            message = {"role": "assistant", "content": f"Echo: {last}"}
            return JSONResponse(
                {"model": model, "choices": [{"index": 0, "message": message}], "usage": USAGE}
            )
        asks = (body.get("stream_options") or {}).get("include_usage") is True
        return StreamingResponse(
            self.stream(model, last, usage="stream_options" not in body or asks),
            media_type="text/event-stream",
        )

    async def stream(self, model: str, last: str, *, usage: bool) -> AsyncIterator[bytes]:
        try:
            if model == "endless":
                while True:
                    yield delta("tick ")
                    await asyncio.sleep(0.05)
            yield delta("Echo")
            if model == "fails-midway":
                yield sse({"error": {"message": "overloaded", "type": "server_error"}})
                return
            if model == "nul":
                yield delta("\u0000")
            if model == "gated":
                self.recorder.mark("first_chunk_sent")
                await asyncio.to_thread(self._released.wait, 10)
            yield delta(": ")
            yield delta(last)
            if usage:
                yield sse({"object": "chat.completion.chunk", "model": model, "choices": [], "usage": USAGE})
            yield b"data: [DONE]\n\n"
            self.recorder.mark("finished")
        finally:
            self.recorder.mark("stream_closed")
            if model == "endless":
                self.recorder.mark("disconnected")
