"""The registry of chat providers agents may use: each a base URL, a platform key and how it streams.

Built from the same upstream definitions as the proxied routes (`gateway.upstreams`), so `openai` here is the
`/v1/chat/completions` route's upstream, with the same pooled client.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.settings import Settings
from gateway.upstreams import MISTRAL, OPENAI, WORKERS_AI, Upstream, bearer, configured_upstreams

OPENAI_CHAT_PATH = "/v1/chat/completions"  # openai and mistral: their upstreams are rooted without /v1
COMPATIBLE_CHAT_PATH = "/chat/completions"  # the others: rooted at their API root (`compatible_root`)


@dataclass(frozen=True, slots=True)
class ChatProvider:
    """One provider of streamed OpenAI-style chat completions."""

    name: str
    upstream: Upstream | None  # None: known, but not configured here (workers-ai without its base URL)
    chat_path: str = COMPATIBLE_CHAT_PATH
    # OpenAI sends usage in a stream only when asked (stream_options.include_usage); Mistral always sends it
    # and refuses the option. Servers that refuse unknown fields are configured without it.
    asks_for_stream_usage: bool = True

    @property
    def is_configured(self) -> bool:
        return self.upstream is not None

    @property
    def chat_url(self) -> str:
        """The absolute URL of the provider's chat completions. Precondition: `is_configured`."""
        assert self.upstream is not None, f"provider {self.name!r} is not configured"
        return self.upstream.url(self.chat_path)

    def request_body(self, *, model: str, messages: Sequence[Mapping[str, str]]) -> dict[str, Any]:
        """A streaming chat completion request for `messages` (each `{"role", "content"}`)."""
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
        if self.asks_for_stream_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def request_headers(self, byok_key: str | None) -> list[tuple[bytes, bytes]]:
        """The headers of a chat request: the agent's own (BYOK) key when it has one, else the platform key."""
        headers = [(b"content-type", b"application/json"), (b"accept", b"text/event-stream")]
        credential = bearer(byok_key) if byok_key else (self.upstream.credential if self.upstream else None)
        if credential is not None:
            headers.append(credential)
        return headers


class ProviderRegistry(Mapping[str, ChatProvider]):
    """Provider name → `ChatProvider`; `openai`, `mistral` and `workers-ai` are always known."""

    def __init__(self, providers: Sequence[ChatProvider]) -> None:
        self._providers = {provider.name: provider for provider in providers}

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        upstreams = configured_upstreams(settings)
        providers = [
            ChatProvider(OPENAI, upstreams[OPENAI], OPENAI_CHAT_PATH),
            ChatProvider(MISTRAL, upstreams[MISTRAL], OPENAI_CHAT_PATH, asks_for_stream_usage=False),
            ChatProvider(WORKERS_AI, upstreams.get(WORKERS_AI)),
        ]
        providers += [
            ChatProvider(extra.name, upstreams[extra.name], asks_for_stream_usage=extra.stream_usage)
            for extra in settings.extra_providers
        ]
        return cls(providers)

    def __getitem__(self, name: str) -> ChatProvider:
        return self._providers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)
