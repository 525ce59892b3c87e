"""schemathesis against a live gateway, from its own `/openapi.json`, on SQLite and on Postgres: no 5xx, and every
answer (status, content type, headers, body) as the document says.

Authenticated as a user with every scope (an API token holding all of them; a platform JWT for the routes that take
only one), in front of the fake chat and OCR upstreams and the tests' real Chroma. Bounded: a few examples per
operation and generation mode (valid and invalid data), no shrinking, so each database takes well under a minute.
From outside the suite: `schemathesis run http://127.0.0.1:8080/openapi.json -H "Authorization: Bearer gw_..."`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.cli import uvicorn_options
from gateway.db.engine import prepare_data_dir
from gateway.db.migrate import upgrade
from gateway.principals import KNOWN_SCOPES
from gateway.settings import Settings, sqlite_url
from tests.conftest import UPSTREAM_MISTRAL_KEY, UPSTREAM_OPENAI_KEY, PostgresServer, add_user
from tests.fakes.mistral_ocr import FakeMistral
from tests.fakes.openai_upstream import FakeOpenAI
from tests.serving import LiveServer

EXAMPLES = 8  # per operation and generation mode: about 30 s a database
SOAK_EXAMPLES = 100  # the soak run's: rarer inputs (a NUL, a lone surrogate) come up
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
LOGIN = {"email": "fuzz@example.com", "password": "correct horse battery staple"}
# Taken by a platform JWT only (the API token is refused there, 403). Everything else gets the API token, logout
# included, so that the JWT's session is not ended by the fuzzer.
PLATFORM_ONLY = {
    "GET /v1/agents",
    "GET /v1/api-tokens",
    "POST /v1/api-tokens",
    "DELETE /v1/api-tokens/{token_id}",
}


@pytest.fixture(params=["sqlite", "postgres"])
def fuzzed_gateway(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_server: PostgresServer,
    fake_openai_server: tuple[FakeOpenAI, LiveServer],
    fake_mistral_server: tuple[FakeMistral, LiveServer],
    chroma_url: str,
) -> Iterator[str]:
    """A gateway of its own (its own database: the fuzzer's rows stay out of other tests' way)."""
    database = (
        postgres_server.create_database() if request.param == "postgres" else sqlite_url(tmp_path / "gw.db")
    )
    settings = Settings.from_env(
        {
            "DATABASE_URL": database,
            "DATA_DIR": str(tmp_path / "data"),
            "OPENAI_API_KEY": UPSTREAM_OPENAI_KEY,
            "OPENAI_BASE_URL": f"{fake_openai_server[1].url}/v1",
            "MISTRAL_API_KEY": UPSTREAM_MISTRAL_KEY,
            "MISTRAL_BASE_URL": fake_mistral_server[1].url,
            "CHROMA_BASE_URL": chroma_url,
            "CHROMA_API_KEY": "chroma-fuzz-key",
            "UPSTREAM_CONNECT_TIMEOUT": "2",
            "UPSTREAM_READ_TIMEOUT": "10",
            "ACCESS_LOG": "0",
        },
        env_file=None,
    )
    prepare_data_dir(settings)
    asyncio.run(upgrade(settings.database_url))
    asyncio.run(add_user(settings.database_url, **LOGIN))
    options = uvicorn_options(settings)
    options.pop("log_config")
    with LiveServer(create_app(settings), **options) as server:
        yield server.url


def credentials(url: str) -> tuple[str, str]:
    """(a platform JWT, an API token with every scope) for the fuzzing user."""
    login = httpx.post(f"{url}/api/v1/auth/login", json=LOGIN)
    assert login.status_code == 200, login.text
    jwt = login.json()["access_token"]
    created = httpx.post(
        f"{url}/v1/api-tokens",
        json={"name": "fuzz", "scopes": sorted(KNOWN_SCOPES)},
        headers={"authorization": f"Bearer {jwt}"},
    )
    assert created.status_code == 201, created.text
    return jwt, created.json()["token"]


def fuzz(operation: Any, mode: GenerationMode, *, url: str, headers: dict[str, str], examples: int) -> None:
    """`examples` cases of `operation`, each sent and checked; raises schemathesis' report of the first failure
    (with the curl command that reproduces it)."""

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=15)

    run()


@pytest.mark.parametrize("examples", [EXAMPLES, pytest.param(SOAK_EXAMPLES, marks=pytest.mark.soak)])
def test_no_server_error_and_every_answer_as_documented(fuzzed_gateway: str, examples: int) -> None:
    url = fuzzed_gateway
    jwt, api_token = credentials(url)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures = []
    began = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        credential = jwt if label in PLATFORM_ONLY else api_token
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(
                    operation,
                    mode,
                    url=url,
                    headers={"authorization": f"Bearer {credential}"},
                    examples=examples,
                )
            except hypothesis.errors.Unsatisfiable:
                pass  # nothing in it to make invalid (no parameters, or unconstrained strings)
            except (
                Exception,
                BaseExceptionGroup,
            ) as failure:  # schemathesis' report: what was sent, what came back, how to replay
                failures.append(f"--- {label} ({mode.value})\n{failure}")
    elapsed = time.monotonic() - began
    assert not failures, f"{len(failures)} operations failed in {elapsed:.0f} s:\n" + "\n".join(failures)
