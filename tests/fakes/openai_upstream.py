"""A fake OpenAI chat completions upstream: a real Starlette app whose behaviour the request's `model` picks.

- any model: a completion (or an SSE stream: three deltas, the usage chunk when asked for, `[DONE]`);
- `slow-stream`: five deltas 0.3 s apart, marking `last_chunk_sent` just before the last;
- `gated-stream`: `part0`, then nothing until the test calls `release()` (10 s at most), then `part1` to `part4`,
  marking `last_chunk_sent` just before the last;
- `endless-stream`: a delta every 0.1 s until the client goes, marking `disconnected`;
- `never-answer`: no response headers at all until the client goes, marking `disconnected`;
- `rate-limited`: the upstream's own 429 error, with its own headers;
- `usage-then-endless`: the usage chunk first (when asked for), then a delta every 0.1 s until the client goes.
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
from starlette.types import Receive, Scope, Send

from tests.fakes.recording import Recorder

UPSTREAM_REQUEST_ID = "req_upstream_123"
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
DELTAS = ["Hello", ", ", "world"]


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(DELTAS)},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }


def chunk(model: str, content: str | None, *, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": choices,
        "usage": usage,
    }
    return f"data: {json.dumps(body)}\n\n".encode()


GATE_SECONDS = 10.0  # how long a `gated-stream` waits for its release at most


class FakeOpenAI:
    def __init__(self) -> None:
        self.recorder = Recorder()
        self._released = threading.Event()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat_completions, methods=["POST"])])

    def reset(self) -> None:
        """Forget what was recorded; the next `gated-stream` waits for its release again."""
        self.recorder.reset()
        self._released.clear()

    def release(self) -> None:
        """Let the `gated-stream`s go on past their first delta."""
        self._released.set()

    async def chat_completions(self, request: Request) -> Response:
        recorded = await self.recorder.record(request)
        body = recorded.json()
        model = body.get("model", "gpt-4o-mini")
        headers = {"x-request-id": UPSTREAM_REQUEST_ID, "set-cookie": "__cf_bm=tracker; Path=/"}
        if model == "never-answer":
            return NeverAnswer(self.recorder)  # type: ignore[return-value]
        if model == "rate-limited":
            error = {
                "error": {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                    "param": None,
                }
            }
            return JSONResponse(error, status_code=429, headers={**headers, "retry-after": "7"})
        if not body.get("stream"):
            return JSONResponse(completion(model), headers=headers)
        options = body.get("stream_options")  # anything, from the fuzzer: not an object asks for nothing
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return StreamingResponse(
            self.stream(model, include_usage=include_usage), headers=headers, media_type="text/event-stream"
        )

    async def stream(self, model: str, *, include_usage: bool) -> AsyncIterator[bytes]:
        try:
            if model == "usage-then-endless" and include_usage:
                yield chunk(model, None, usage=USAGE)
            if model in ("endless-stream", "usage-then-endless"):
                while True:
                    yield chunk(model, "tick")
                    await asyncio.sleep(0.1)
            deltas = [f"part{i} " for i in range(5)] if model in ("slow-stream", "gated-stream") else DELTAS
            for index, delta in enumerate(deltas):
                if model == "gated-stream" and index == 1:
                    await asyncio.to_thread(self._released.wait, GATE_SECONDS)
                if model == "slow-stream" and index > 0:
                    await asyncio.sleep(0.3)
                if model in ("slow-stream", "gated-stream") and index == len(deltas) - 1:
                    self.recorder.mark("last_chunk_sent")
                yield chunk(model, delta)
            if include_usage:
                yield chunk(model, None, usage=USAGE)
            yield b"data: [DONE]\n\n"
        finally:
            # Starlette cancels this generator when the client (the gateway) disconnects.
            self.recorder.mark("stream_closed")
            if model == "endless-stream":
                self.recorder.mark("disconnected")


class NeverAnswer:
    """Holds the request open without sending a byte; marks when the other side hangs up."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.recorder.mark("disconnected")
