"""One streamed chat completion from a provider, for agent chat: the deltas as they arrive, then the usage.

It goes through the provider's upstream client (`gateway.upstream_client`), whose one error map the proxy shares:
its errors become `ProviderError` with their code and status (`upstream_unavailable` 502, `upstream_timeout` 504,
`upstream_busy` 503, `upstream_incomplete` 502 for an answer that breaks off); the provider's own error status is
`upstream_error`. The response is closed when the block ends, however it ends (cancellation too).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.agents.providers import ChatProvider
from gateway.errors import UpstreamError
from gateway.upstream_client import UpstreamClient, UpstreamResponse
from gateway.usage.sse import EventStreamParser

logger = logging.getLogger("gateway.agents")

MAX_JSON_BODY_BYTES = 4 * 1024 * 1024  # a provider that answers a stream request with plain JSON
DONE = b"[DONE]"


class ProviderError(Exception):
    """The provider gave no usable answer. `code` and `message` are safe to show; `status` is for analytics."""

    def __init__(self, code: str, message: str, *, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    @classmethod
    def from_upstream(cls, error: UpstreamError) -> ProviderError:
        """The upstream client's error (its one map), as the turn reports it."""
        return cls(error.code, error.message, status=error.status_code)


@dataclass(slots=True)
class CompletionUsage:
    """The tokens the provider reported; None where it said nothing."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    def as_json(self) -> dict[str, int | None]:
        total = self.total_tokens
        if total is None and self.prompt_tokens is not None and self.completion_tokens is not None:
            total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }


@dataclass(slots=True)
class StreamedCompletion:
    """An open completion: iterate `deltas()`; `usage` and `model` fill in as the provider reports them."""

    response: UpstreamResponse
    usage: CompletionUsage = field(default_factory=CompletionUsage)
    model: str | None = None

    async def deltas(self) -> AsyncIterator[str]:
        """Each non-empty content delta, as it arrives. Raises `ProviderError` if the stream breaks or carries
        an error."""
        content_type = self.response.header(b"content-type") or b""
        try:
            if content_type.startswith(b"text/event-stream"):
                async for delta in self._event_stream():
                    yield delta
            else:
                text = await self._json_body()
                if text:
                    yield text
        except UpstreamError as exc:  # the answer broke off (the client logged how)
            raise ProviderError.from_upstream(exc) from exc

    async def _event_stream(self) -> AsyncIterator[str]:
        parser = EventStreamParser()
        while chunk := await self.response.read_chunk():
            for data in parser.feed(chunk):
                if data.strip() == DONE:
                    return
                text = self._read_chunk(data)
                if text:
                    yield text

    async def _json_body(self) -> str | None:
        body = await self.response.read_all(MAX_JSON_BODY_BYTES)
        if body is None:
            raise ProviderError("upstream_error", "The provider's answer is too large.", status=502)
        document = _json(body)
        if document is None:
            raise ProviderError("upstream_error", "The provider's answer is not JSON.", status=502)
        self._read_meta(document)
        return _first_choice_content(document, "message")

    def _read_chunk(self, data: bytes) -> str | None:
        document = _json(data)
        if document is None:
            return None  # not ours to judge: skip what cannot be read
        if isinstance(document.get("error"), dict):
            raise ProviderError("upstream_error", "The provider reported an error mid-stream.", status=502)
        self._read_meta(document)
        return _first_choice_content(document, "delta")

    def _read_meta(self, document: dict[str, Any]) -> None:
        if self.model is None and isinstance(document.get("model"), str):
            self.model = document["model"]
        usage = document.get("usage")
        if isinstance(usage, dict):
            self.usage = CompletionUsage(
                prompt_tokens=_count(usage.get("prompt_tokens", usage.get("input_tokens"))),
                completion_tokens=_count(usage.get("completion_tokens", usage.get("output_tokens"))),
                total_tokens=_count(usage.get("total_tokens")),
            )


@asynccontextmanager
async def stream_completion(
    client: UpstreamClient,
    provider: ChatProvider,
    *,
    model: str,
    messages: Sequence[Mapping[str, str]],
    byok_key: str | None,
    request_id: str,
) -> AsyncIterator[StreamedCompletion]:
    """Send a streaming chat request over the provider's client and yield the open completion once the provider
    answered 2xx.

    Precondition: `provider.is_configured`, and `client` is its upstream's. Raises `ProviderError` before
    yielding when there is no answer.
    """
    try:
        response = await client.request(
            b"POST",
            client.upstream.target(provider.chat_path),
            [*provider.request_headers(byok_key), (b"x-request-id", request_id.encode("ascii"))],
            orjson.dumps(provider.request_body(model=model, messages=messages)),
            request_id=request_id,
        )
    except UpstreamError as exc:  # the client logged how
        raise ProviderError.from_upstream(exc) from exc
    try:
        if not 200 <= response.status < 300:
            logger.warning("provider %s answered %d", provider.name, response.status)
            raise ProviderError(
                "upstream_error",
                f"The provider answered with status {response.status}.",
                status=response.status,
            )
        yield StreamedCompletion(response)
    finally:
        if response.ended:
            response.release()  # read to its end: the connection serves the next turn
        else:
            response.close()  # cut short (an error, a cancelled turn): the provider sees it end now


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, 2**31 - 1)


def _first_choice_content(document: dict[str, Any], field: str) -> str | None:
    """`choices[0][field].content` (a whole answer's `message`, a stream chunk's `delta`) when it is text."""
    choices = document.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        part = choices[0].get(field)
        if isinstance(part, dict) and isinstance(part.get("content"), str):
            return str(part["content"])
    return None
