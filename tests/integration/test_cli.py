"""The `gateway` command as an operator runs it: `serve` on the embedded default, `migrate`, bad settings."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.serving import GATEWAY, clean_env, free_port, serving


def test_serve_starts_on_the_embedded_sqlite_with_migrations_applied(tmp_path: Path) -> None:
    with serving(tmp_path, env=clean_env()) as url:
        response = httpx.get(f"{url}/health?deep=1")

    assert response.status_code == 200
    assert response.json()["checks"]["database"]["status"] == "ok"
    database = tmp_path / "data" / "gateway.db"
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() is not None


def test_serve_reads_a_dot_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATA_DIR=state\n")

    with serving(tmp_path, env=clean_env()) as url:
        assert httpx.get(f"{url}/health").status_code == 200

    assert (tmp_path / "state" / "gateway.db").is_file()


def test_serve_with_two_workers_answers(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "2", env=clean_env()) as url:
        statuses = {httpx.get(f"{url}/health").status_code for _ in range(10)}

    assert statuses == {200}


def test_serve_writes_an_access_line_per_response_with_its_request_id(tmp_path: Path) -> None:
    """One line per response, uvicorn's format plus the request id; the path is logged as the client sent it
    (percent-encoded), so no request can write a line of its own into the log."""
    with serving(tmp_path, env=clean_env()) as url:
        assert httpx.get(f"{url}/health?deep=1", headers={"X-Request-ID": "trace-1"}).status_code == 200
        missing = httpx.get(f"{url}/nowhere")
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as raw:
            raw.sendall(b"GET /a%0d%0aINFO:forged HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while raw.recv(65536):
                pass

    lines = (tmp_path / "serve.log").read_text().splitlines()
    assert any(line.endswith('"GET /health?deep=1 HTTP/1.1" 200 trace-1') for line in lines), lines
    request_id = missing.headers["x-request-id"]
    assert any(line.endswith(f'"GET /nowhere HTTP/1.1" 404 {request_id}') for line in lines), lines
    assert any('"GET /a%0d%0aINFO:forged HTTP/1.1" 404' in line for line in lines), lines
    assert not any(line.startswith("INFO:forged") for line in lines)


def test_serve_without_access_log_writes_no_access_lines(tmp_path: Path) -> None:
    with serving(tmp_path, env={**clean_env(), "ACCESS_LOG": "0"}) as url:
        assert httpx.get(f"{url}/health", headers={"X-Request-ID": "trace-2"}).status_code == 200

    assert "trace-2" not in (tmp_path / "serve.log").read_text()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_REQUEST_BYTES", "ten"),
        ("UPSTREAM_READ_TIMEOUT", "-1"),
        ("API_AUTH_REQUIRED", "maybe"),
        ("OPENAI_BASE_URL", "api.openai.com"),
        ("DATABASE_URL", "mysql://root@localhost/db"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    result = subprocess.run(
        [GATEWAY, "serve", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(**{variable: value}),
        timeout=30,
    )

    assert result.returncode == 2
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_applies_the_migrations_to_postgres(tmp_path: Path, postgres_url: str) -> None:
    plain_url = postgres_url.replace("postgresql+asyncpg://", "postgres://")  # the plain form is accepted
    result = subprocess.run(
        [GATEWAY, "migrate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(DATABASE_URL=plain_url),
    )

    assert result.returncode == 0, result.stderr
    assert "migrations applied" in result.stderr
