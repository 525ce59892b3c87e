"""Settings: defaults, aliases, the `.env` file, and bad values that name their variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings.from_env({}, env_file=None)

    assert settings.openai_base_url == "https://api.openai.com"
    assert settings.mistral_base_url == "https://api.mistral.ai"
    assert settings.mistral_ocr_model == "mistral-ocr-latest"
    assert settings.max_request_bytes == 10 * 1024 * 1024
    assert settings.upstream_connect_timeout == 10 and settings.upstream_read_timeout == 300
    assert settings.api_auth_required is False
    assert settings.database_url == "sqlite+aiosqlite:///data/gateway.db"
    assert settings.is_embedded_database


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, "text"), ("", "text"), ("json", "json"), (" JSON ", "json")]
)
def test_log_format_is_text_or_json(raw: str | None, expected: str) -> None:
    settings = Settings.from_env({} if raw is None else {"LOG_FORMAT": raw}, env_file=None)

    assert settings.log_format == expected


def test_the_fault_settings_default_to_the_documented_values() -> None:
    settings = Settings.from_env({}, env_file=None)

    assert settings.shutdown_timeout == 30
    assert settings.usage_journal_fsync_ms == 1000
    assert settings.usage_max_queue == 100_000
    assert settings.usage_required is True
    assert settings.auth_cache_seconds == 30
    assert settings.metrics_api_key is None


def test_the_fault_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            "SHUTDOWN_TIMEOUT": "3.5",
            "USAGE_JOURNAL_FSYNC_MS": "250",
            "USAGE_MAX_QUEUE": "10",
            "USAGE_REQUIRED": "0",
            "AUTH_CACHE_SECONDS": "2",
            "METRICS_API_KEY": "scrape-key",
        },
        env_file=None,
    )

    assert settings.shutdown_timeout == 3.5 and settings.usage_journal_fsync_ms == 250
    assert settings.usage_max_queue == 10 and settings.usage_required is False
    assert settings.auth_cache_seconds == 2 and settings.metrics_api_key == "scrape-key"
    assert "scrape-key" not in repr(settings)


def test_the_database_defaults_into_the_data_dir() -> None:
    assert Settings.from_env({"DATA_DIR": "/srv/gw"}, env_file=None).database_url == (
        "sqlite+aiosqlite:////srv/gw/gateway.db"
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgres://u@h:5432/d", "postgresql+asyncpg://u@h:5432/d"),
        ("postgresql://u:p@h/d", "postgresql+asyncpg://u:p@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_database_url_forms_mean_the_async_drivers(given: str, expected: str) -> None:
    settings = Settings.from_env({"DATABASE_URL": given}, env_file=None)

    assert settings.database_url == expected
    assert settings.is_embedded_database == expected.startswith("sqlite")


def test_base_url_aliases() -> None:
    settings = Settings.from_env(
        {"OPENAI_API_BASE": "http://llm.local:8000/v1/", "MISTRAL_API_BASE": "https://m.local"}, env_file=None
    )

    assert settings.openai_base_url == "http://llm.local:8000/v1"
    assert settings.mistral_base_url == "https://m.local"


def test_the_primary_name_wins_over_its_alias() -> None:
    settings = Settings.from_env(
        {"OPENAI_BASE_URL": "https://a.test", "OPENAI_API_BASE": "https://b.test"}, env_file=None
    )

    assert settings.openai_base_url == "https://a.test"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("0", False), ("false", False), ("", False)],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert Settings.from_env({"API_AUTH_REQUIRED": raw}, env_file=None).api_auth_required is expected


def test_dot_env_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MISTRAL_OCR_MODEL=from-file\nMAX_REQUEST_BYTES=1000\n")

    settings = Settings.from_env({"MAX_REQUEST_BYTES": "2000"}, env_file=env_file)

    assert settings.mistral_ocr_model == "from-file"
    assert settings.max_request_bytes == 2000


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_REQUEST_BYTES", "ten"),
        ("MAX_REQUEST_BYTES", "0"),
        ("UPSTREAM_CONNECT_TIMEOUT", "soon"),
        ("UPSTREAM_READ_TIMEOUT", "0"),
        ("UPSTREAM_READ_TIMEOUT", "inf"),
        ("UPSTREAM_READ_TIMEOUT", "nan"),
        ("API_AUTH_REQUIRED", "sometimes"),
        ("SHUTDOWN_TIMEOUT", "0"),
        ("USAGE_JOURNAL_FSYNC_MS", "often"),
        ("USAGE_MAX_QUEUE", "0"),
        ("USAGE_REQUIRED", "maybe"),
        ("AUTH_CACHE_SECONDS", "-1"),
        ("OPENAI_BASE_URL", "ftp://files.example"),
        ("OPENAI_API_BASE", "not a url"),
        ("MISTRAL_BASE_URL", "https://"),
        ("DATABASE_URL", "mysql://root@h/db"),
        ("DATABASE_URL", "gateway.db"),
        ("DATABASE_URL", "postgresql:///nohost"),
        ("LOG_FORMAT", "yaml"),
        ("LOG_FORMAT", "json,text"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value}, env_file=None)

    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")


def test_secrets_stay_out_of_the_repr() -> None:
    settings = Settings.from_env(
        {"OPENAI_API_KEY": "sk-secret-1", "MISTRAL_API_KEY": "mk-secret-2"}, env_file=None
    )

    assert "sk-secret-1" not in repr(settings) and "mk-secret-2" not in repr(settings)
    assert settings.openai_api_key == "sk-secret-1"


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({}, env_file=None)

    with pytest.raises(AttributeError):
        settings.max_request_bytes = 1  # type: ignore[misc]
