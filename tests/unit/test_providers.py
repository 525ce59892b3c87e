"""The provider registry: which providers exist, where their chat lives, what they are sent; and their settings."""

from __future__ import annotations

import pytest

from gateway.agents.providers import ProviderRegistry
from gateway.settings import Settings, SettingsError
from gateway.upstreams import compatible_root


def registry(**env: str) -> ProviderRegistry:
    return ProviderRegistry.from_settings(Settings.from_mapping(env))


def test_the_built_in_providers_are_always_known() -> None:
    providers = registry()

    assert list(providers) == ["openai", "mistral", "workers-ai"]
    assert providers["openai"].chat_url == "https://api.openai.com/v1/chat/completions"
    assert providers["mistral"].chat_url == "https://api.mistral.ai/v1/chat/completions"
    assert not providers["workers-ai"].is_configured


def test_openai_and_mistral_follow_the_proxy_base_url_rule() -> None:
    providers = registry(
        OPENAI_BASE_URL="http://llm.internal:8000/v1", MISTRAL_API_BASE="http://mistral.internal/"
    )

    assert providers["openai"].chat_url == "http://llm.internal:8000/v1/chat/completions"
    assert providers["mistral"].chat_url == "http://mistral.internal/v1/chat/completions"


@pytest.mark.parametrize(
    ("base_url", "chat_url"),
    [
        (
            "https://api.cloudflare.com/client/v4/accounts/abc/ai/v1",
            "https://api.cloudflare.com/client/v4/accounts/abc/ai/v1/chat/completions",
        ),
        ("https://gateway.example/v1beta/openai/", "https://gateway.example/v1beta/openai/chat/completions"),
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1/chat/completions"),
    ],
)
def test_workers_ai_is_rooted_where_its_base_url_says(base_url: str, chat_url: str) -> None:
    providers = registry(WORKERS_AI_BASE_URL=base_url, WORKERS_AI_API_KEY="cf-key")

    assert providers["workers-ai"].is_configured
    assert providers["workers-ai"].chat_url == chat_url


def test_compatible_root() -> None:
    assert compatible_root("http://h:1") == "http://h:1/v1"
    assert compatible_root("http://h:1/") == "http://h:1/v1"
    assert compatible_root("http://h:1/openai/v1/") == "http://h:1/openai/v1"


def test_providers_declared_in_configuration() -> None:
    providers = registry(
        PROVIDER_GROQ_BASE_URL="https://api.groq.com/openai/v1",
        PROVIDER_GROQ_API_KEY="gsk-platform",
        PROVIDER_LOCAL_LLM_BASE_URL="http://127.0.0.1:8080",
        PROVIDER_LOCAL_LLM_STREAM_USAGE="0",
    )

    assert list(providers) == ["openai", "mistral", "workers-ai", "groq", "local-llm"]
    assert providers["groq"].chat_url == "https://api.groq.com/openai/v1/chat/completions"
    assert providers["groq"].request_headers(None)[-1] == (b"authorization", b"Bearer gsk-platform")
    assert providers["local-llm"].chat_url == "http://127.0.0.1:8080/v1/chat/completions"
    assert providers["local-llm"].request_headers(None) == [
        (b"content-type", b"application/json"),
        (b"accept", b"text/event-stream"),
    ]
    assert "stream_options" not in providers["local-llm"].request_body(model="m", messages=[])


def test_openai_is_asked_for_stream_usage_and_mistral_is_not() -> None:
    providers = registry()
    messages = [{"role": "user", "content": "hi"}]

    assert providers["openai"].request_body(model="gpt-4o-mini", messages=messages) == {
        "model": "gpt-4o-mini",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert "stream_options" not in providers["mistral"].request_body(model="mistral-small", messages=messages)


def test_a_byok_key_replaces_the_platform_key() -> None:
    openai = registry(OPENAI_API_KEY="sk-platform")["openai"]

    assert (b"authorization", b"Bearer sk-platform") in openai.request_headers(None)
    with_byok = openai.request_headers("sk-agents-own")
    assert (b"authorization", b"Bearer sk-agents-own") in with_byok
    assert not any(b"sk-platform" in value for _, value in with_byok)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PROVIDER_OPENAI_BASE_URL": "http://h"}, "PROVIDER_OPENAI_BASE_URL"),
        ({"PROVIDER_WORKERS_AI_BASE_URL": "http://h"}, "PROVIDER_WORKERS_AI_BASE_URL"),
        ({"PROVIDER_X_BASE_URL": "ftp://h"}, "PROVIDER_X_BASE_URL"),
        ({"PROVIDER_X_BASE_URL": "http://h", "PROVIDER_X_STREAM_USAGE": "maybe"}, "PROVIDER_X_STREAM_USAGE"),
        ({"WORKERS_AI_BASE_URL": "not a url"}, "WORKERS_AI_BASE_URL"),
        ({"GOVERNANCE_BLOCKED_PATTERNS": "secret"}, "GOVERNANCE_BLOCKED_PATTERNS"),
        ({"GOVERNANCE_BLOCKED_PATTERNS": '["ok", 5]'}, "GOVERNANCE_BLOCKED_PATTERNS"),
        ({"GOVERNANCE_BLOCKED_PATTERNS": '["(unclosed"]'}, "GOVERNANCE_BLOCKED_PATTERNS"),
        ({"GOVERNANCE_MAX_MESSAGE_CHARS": "0"}, "GOVERNANCE_MAX_MESSAGE_CHARS"),
    ],
)
def test_bad_agent_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_mapping(env)

    assert error.value.variable == variable


def test_governance_settings() -> None:
    settings = Settings.from_mapping(
        {
            "GOVERNANCE_BLOCKED_PATTERNS": '["(?i)secret plan", "\\\\bDROP\\\\b"]',
            "GOVERNANCE_MAX_MESSAGE_CHARS": "500",
        }
    )

    assert settings.governance_blocked_patterns == ("(?i)secret plan", "\\bDROP\\b")
    assert settings.governance_max_message_chars == 500
    assert Settings.from_mapping({}).governance_blocked_patterns == ()
