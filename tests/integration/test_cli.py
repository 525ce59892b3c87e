"""The `gateway` command as an operator runs it: `serve` on the embedded default, `migrate`, bad settings."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.serving import free_port

GATEWAY = str(Path(sys.executable).parent / "gateway")
START_SECONDS = 20.0


def clean_env(**variables: str) -> dict[str, str]:
    """The process environment without any gateway setting, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR")}
    return {**env, **variables}


@contextmanager
def serving(cwd: Path, *args: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    log = cwd / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [GATEWAY, "serve", "--port", str(port), *args],
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"gateway serve did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells what stopped it.
    assert process.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()


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
