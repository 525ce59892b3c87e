"""`GET /health`, its deep form and `/ready`, on SQLite and on Postgres; and the app's JSON 404."""

from __future__ import annotations

import httpx
import pytest

from gateway import __version__
from tests.conftest import GatewayFactory
from tests.serving import LiveServer, free_port


def test_health_answers_ok_with_version_and_uptime(gateway: LiveServer) -> None:
    response = httpx.get(f"{gateway.url}/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert isinstance(body["uptime_s"], float) and body["uptime_s"] >= 0
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/health?deep=1", "/ready"])
def test_deep_health_checks_the_database(start_gateway: GatewayFactory, database_url: str, path: str) -> None:
    with start_gateway(DATABASE_URL=database_url) as gateway:
        response = httpx.get(gateway.url + path)

    assert response.status_code == 200
    assert response.json()["checks"]["database"]["status"] == "ok"
    assert response.json()["checks"]["usage"] == {"status": "ok"}


def test_deep_health_is_503_when_the_database_is_down(start_gateway: GatewayFactory) -> None:
    with start_gateway(
        migrate=False, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/gone"
    ) as gateway:
        shallow = httpx.get(f"{gateway.url}/health")
        deep = httpx.get(f"{gateway.url}/health?deep=1", timeout=10)

    assert shallow.status_code == 200  # liveness does not touch the database
    assert deep.status_code == 503
    assert deep.json()["status"] == "unavailable"
    assert deep.json()["checks"]["database"]["status"] == "unavailable"
    assert deep.json()["checks"]["database"]["reason"] == "database_unreachable"


def test_health_is_get_only(gateway: LiveServer) -> None:
    response = httpx.post(f"{gateway.url}/health")

    assert response.status_code == 405
    assert "GET" in response.headers["allow"]


def test_unknown_path_is_a_json_404(gateway: LiveServer) -> None:
    response = httpx.get(f"{gateway.url}/v1/unknown", headers={"x-request-id": "trace-404"})

    assert response.status_code == 404
    assert response.json() == {
        "error": {"message": "Not found.", "type": "not_found_error", "code": "not_found", "param": None}
    }
    assert response.headers["x-request-id"] == "trace-404"
