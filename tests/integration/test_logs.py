"""The log of a real `gateway serve`, as an operator reads it and as an attacker would like to fill it: a client that
goes away is one INFO line, a refused WebSocket one INFO line, a 500 a traceback without the statement's values,
and LOG_FORMAT=json one JSON object per line carrying the request id."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.db.migrate import upgrade
from gateway.settings import Settings, sqlite_url
from tests.conftest import PostgresServer, add_user
from tests.fakes.openai_upstream import FakeOpenAI
from tests.serving import LiveServer, clean_env, serving

PASSWORD = "correct horse battery staple"
UPSTREAM_KEY = "sk-upstream-never-logged-4f1c"
# A value sent in a statement that fails: it must not reach the log.
CANARY = "canary-token-name-7d2e9b"
LOG_SECONDS = 5.0


@contextmanager
def gateway(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer], **variables: str
) -> Iterator[tuple[str, Path]]:
    """`gateway serve` in front of the fake OpenAI upstream; yields its URL and its log file."""
    env = clean_env(
        DATA_DIR=str(tmp_path / "data"),
        OPENAI_API_KEY=UPSTREAM_KEY,
        OPENAI_BASE_URL=f"{fake_openai_server[1].url}/v1",
        **variables,
    )
    database_url = Settings.from_env(env, env_file=None).database_url
    if "DATABASE_URL" in variables:
        asyncio.run(upgrade(database_url))
    with serving(tmp_path, env=env) as url:
        asyncio.run(add_user(database_url, email="logs@example.com", password=PASSWORD))
        yield url, tmp_path / "serve.log"


def access_token(url: str) -> str:
    response = httpx.post(
        f"{url}/api/v1/auth/login", json={"email": "logs@example.com", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def wait_for(log: Path, found: Callable[[str], bool]) -> str:
    """The log once `found` holds for it (a line is written a moment after the connection it tells of ends)."""
    deadline = time.monotonic() + LOG_SECONDS
    while not found(content := log.read_text()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not in the log in time:\n{content}")
        time.sleep(0.05)
    return content


def send_and_leave(url: str, request: bytes, *, read: bool = False) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(request)
        if read:
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)


def lines_about(content: str, words: str) -> list[str]:
    return [line for line in content.splitlines() if words in line]


def test_a_client_that_leaves_in_the_middle_of_an_upload_is_one_info_line(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    with gateway(tmp_path, fake_openai_server) as (url, log):
        token = access_token(url)
        agent = httpx.post(f"{url}/v1/agents", json={}, headers={"authorization": f"Bearer {token}"}).json()
        path = f"/v1/agents/{agent['id']}/files"
        send_and_leave(
            url,
            (
                f"POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: 100000\r\n\r\n"
                '--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nthe first bytes'
            ).encode(),
        )
        content = wait_for(log, lambda content: path in content)

    [line] = lines_about(content, path)
    assert line.startswith(f"INFO:     POST {path}: the connection ended before the response (request ")
    assert "Traceback" not in content and "ERROR" not in content


def test_a_client_that_leaves_in_the_middle_of_a_stream_is_one_info_line(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    body = json.dumps(
        {"model": "endless-stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    with gateway(tmp_path, fake_openai_server) as (url, log):
        token = access_token(url)
        send_and_leave(
            url,
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n"
                f"X-Request-ID: left-mid-stream\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode(),
            read=True,
        )
        content = wait_for(log, lambda content: "connection ended" in content)

    assert lines_about(content, "connection ended") == [
        "INFO:     POST /v1/chat/completions: the connection ended during the response (request left-mid-stream)"
    ]
    assert "Traceback" not in content and "ERROR" not in content


WEBSOCKET_HANDSHAKE = {
    "connection": "upgrade",
    "upgrade": "websocket",
    "sec-websocket-version": "13",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_a_refused_websocket_is_one_info_line(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    with gateway(tmp_path, fake_openai_server) as (url, log):
        token = access_token(url)
        agent = httpx.post(f"{url}/v1/agents", json={}, headers={"authorization": f"Bearer {token}"}).json()
        path = f"/v1/agents/{agent['id']}/chat"
        for credential in ("gw_not-a-token", "not.a.jwt"):
            response = httpx.get(
                f"{url}{path}",
                headers={**WEBSOCKET_HANDSHAKE, "sec-websocket-protocol": f"bearer, {credential}"},
            )
            assert response.status_code == 401
        content = wait_for(log, lambda content: len(lines_about(content, path)) >= 2)
        time.sleep(0.3)  # any echo of the refusal would be written by now
        content = log.read_text()

    refusals = lines_about(content, path)
    assert len(refusals) == 2 and all(line.startswith("INFO:") for line in refusals), content
    assert "connection rejected" not in content
    assert "ERROR" not in content and "Traceback" not in content


def make_token_names_unique(database_url: str) -> None:
    """A database altered behind the gateway's back (a botched manual migration): token names made unique, so
    that a second token of the same name fails its insert. The gateway answers 500, a fault, not an outage; on
    Postgres the error's text quotes the duplicated value."""

    async def alter() -> None:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("CREATE UNIQUE INDEX token_names ON api_tokens (name)"))
        finally:
            await engine.dispose()

    asyncio.run(alter())


def create_a_token_twice(url: str, log: Path, database_url: str, request_id: str) -> str:
    """The second creation fails on the unique index; returns the log once the fault is in it."""
    headers = {"authorization": f"Bearer {access_token(url)}"}
    make_token_names_unique(database_url)
    first = httpx.post(f"{url}/v1/api-tokens", json={"name": CANARY}, headers=headers)
    assert first.status_code == 201, first.text
    second = httpx.post(
        f"{url}/v1/api-tokens", json={"name": CANARY}, headers={**headers, "x-request-id": request_id}
    )
    assert second.status_code == 500, second.text
    return wait_for(log, lambda content: "Traceback" in content)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_500_logs_its_traceback_without_the_statement_parameters(
    tmp_path: Path,
    fake_openai_server: tuple[FakeOpenAI, LiveServer],
    postgres_server: PostgresServer,
    backend: str,
) -> None:
    # A database of its own: the test alters its schema, which the worker's shared `postgres_url` must not see
    # (test_migrations compares that one with the models).
    database_url = (
        sqlite_url(tmp_path / "own.db") if backend == "sqlite" else postgres_server.create_database()
    )
    with gateway(tmp_path, fake_openai_server, DATABASE_URL=database_url) as (url, log):
        content = create_a_token_twice(url, log, database_url, "fault-1")

    assert "unhandled IntegrityError on POST /v1/api-tokens (request fault-1)" in content
    assert "Traceback" in content and "INSERT INTO api_tokens" in content
    assert "[SQL parameters hidden due to hide_parameters=True]" in content
    assert CANARY not in content and UPSTREAM_KEY not in content and PASSWORD not in content
    if not database_url.startswith("sqlite"):
        assert "DETAIL:  [hidden: it may quote the statement's values]" in content


def check_token_names_as_numbers(database_url: str) -> None:
    """Another botched change behind the gateway's back: a trigger that reads each new token's name as a number.
    Postgres' error then quotes the value in its first line ('invalid input syntax for type integer: "..."'),
    where no DETAIL filter looks."""

    async def alter() -> None:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text(
                        "CREATE FUNCTION names_as_numbers() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$ BEGIN PERFORM NEW.name::integer; RETURN NEW; END $$"
                    )
                )
                await connection.execute(
                    text(
                        "CREATE TRIGGER names_as_numbers BEFORE INSERT ON api_tokens "
                        "FOR EACH ROW EXECUTE FUNCTION names_as_numbers()"
                    )
                )
        finally:
            await engine.dispose()

    asyncio.run(alter())


def test_a_500_whose_database_error_quotes_a_value_logs_it_hidden(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer], postgres_server: PostgresServer
) -> None:
    database_url = postgres_server.create_database()
    with gateway(tmp_path, fake_openai_server, DATABASE_URL=database_url) as (url, log):
        headers = {"authorization": f"Bearer {access_token(url)}", "x-request-id": "quoted-1"}
        check_token_names_as_numbers(database_url)
        response = httpx.post(f"{url}/v1/api-tokens", json={"name": CANARY}, headers=headers)
        assert response.status_code == 500, response.text
        content = wait_for(log, lambda content: "Traceback" in content)

    assert "unhandled DBAPIError on POST /v1/api-tokens (request quoted-1)" in content
    assert "invalid input syntax for type integer: [hidden: a value]" in content
    assert CANARY not in content


def test_json_logs_are_one_object_per_line_with_the_request_id(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    with gateway(tmp_path, fake_openai_server, LOG_FORMAT="json") as (url, log):
        database_url = Settings.from_env({"DATA_DIR": str(tmp_path / "data")}, env_file=None).database_url
        create_a_token_twice(url, log, database_url, "json-fault")
        refused = httpx.get(
            f"{url}/v1/agents/agt_0123456789abcdef01234567/chat",
            headers={
                **WEBSOCKET_HANDSHAKE,
                "sec-websocket-protocol": "bearer, gw_not-a-token",
                "x-request-id": "ws-1",
            },
        )
        assert refused.status_code == 401
        time.sleep(0.3)  # the access line of the turn is written at its end
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line is one JSON object

    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    assert not any("color_message" in record for record in records)
    access = [r for r in records if r["logger"] == "gateway.access" and r.get("target") == "/v1/api-tokens"]
    assert [(r["status"], r["method"]) for r in access] == [(201, "POST"), (500, "POST")]
    assert access[1]["request_id"] == "json-fault"
    [fault] = [record for record in records if record["level"] == "ERROR"]
    assert fault["request_id"] == "json-fault" and fault["logger"] == "gateway.errors"
    assert "Traceback" in fault["exc_info"] and CANARY not in fault["exc_info"]
    [handshake] = [r for r in records if r["logger"] == "gateway.access" and r.get("method") == "WebSocket"]
    assert handshake["request_id"] == "ws-1" and handshake["status"] == "401"
    assert any(record["logger"].startswith("uvicorn") for record in records)  # uvicorn's own lines too
    assert "Application shutdown complete." in {record["message"] for record in records}


@pytest.mark.parametrize(
    ("host", "variables", "warned"),
    [
        ("0.0.0.0", {}, True),
        ("127.0.0.1", {}, False),
        ("0.0.0.0", {"USAGE_API_KEY": "operator-usage-key"}, False),
    ],
)
def test_serving_beyond_loopback_without_a_usage_key_says_the_usage_routes_are_open(
    tmp_path: Path, host: str, variables: dict[str, str], warned: bool
) -> None:
    env = clean_env(DATA_DIR=str(tmp_path / "data"), **variables)
    with serving(tmp_path, "--host", host, env=env):
        pass
    lines = lines_about((tmp_path / "serve.log").read_text(), "USAGE_API_KEY")

    if warned:
        assert len(lines) == 1 and lines[0].startswith("WARNING:"), lines
        assert "usage routes" in lines[0] and "open to anyone" in lines[0] and "0.0.0.0" in lines[0]
    else:
        assert lines == []
