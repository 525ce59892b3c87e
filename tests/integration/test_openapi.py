"""`GET /openapi.json`: a valid OpenAPI 3.1 document of exactly the routes the gateway serves."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from gateway.openapi import ANY_METHODS, HASH, TEXT, document
from tests.serving import LiveServer

PARAMETER = re.compile(r"\{(\w+)(?::\w+)?\}")


@pytest.fixture(scope="module")
def served(gateway: LiveServer) -> dict[str, object]:
    response = httpx.get(f"{gateway.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    return body


def routes_served(gateway: LiveServer) -> set[tuple[str, str]]:
    """(path, method) for every HTTP route of the app, read from Starlette's own route list."""
    found = set()
    for route in gateway.server.config.app.routes:
        if isinstance(route, Route):
            methods = route.methods - {"HEAD"} if route.methods is not None else set(ANY_METHODS)
            found |= {(PARAMETER.sub(r"{\1}", route.path), method.lower()) for method in methods}
    return found


def test_the_document_is_valid_openapi_3_1(served: dict[str, object]) -> None:
    assert served["openapi"] == "3.1.0"
    validate(served)


def test_every_route_is_documented_and_nothing_else(gateway: LiveServer, served: dict[str, object]) -> None:
    paths = served["paths"]
    assert isinstance(paths, dict)
    documented = {(path, method) for path, item in paths.items() for method in item}
    assert documented == routes_served(gateway)
    assert ("/openapi.json", "get") in documented


def test_every_documented_operation_is_answered_by_its_route(
    gateway: LiveServer, served: dict[str, object]
) -> None:
    """A route that does not take a documented method would answer 405; one that is gone, 404 not_found with
    no route behind it: neither happens for any documented (path, method)."""
    paths = served["paths"]
    assert isinstance(paths, dict)
    with httpx.Client(base_url=gateway.url) as client:
        for path, item in paths.items():
            for method in item:
                response = client.request(method, PARAMETER.sub("x", path))
                assert response.status_code != 405, (method, path, response.text)
        # And a method no route takes is refused, undocumented.
        assert client.put("/health").status_code == 405
    assert "put" not in paths["/health"]


def test_every_error_answer_is_the_envelope(served: dict[str, object]) -> None:
    paths = served["paths"]
    assert isinstance(paths, dict)
    for path, item in paths.items():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    schema = response["content"]["application/json"]["schema"]
                    if path.startswith("/v1/chroma"):  # Chroma's own error format, for Chroma's clients
                        assert schema["required"] == ["error", "message"]
                    else:
                        assert schema == {"$ref": "#/components/schemas/Error"}


def test_a_route_declared_without_its_operation_is_refused() -> None:
    async def endpoint(request: object) -> None: ...

    with pytest.raises(TypeError, match="/undocumented"):
        document([Route("/undocumented", endpoint)])


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/v1/api-tokens", {"GET", "HEAD", "POST"}),
        ("PUT", "/v1/agents/ocs_x", {"DELETE", "GET", "HEAD", "PATCH"}),
        ("POST", "/v1/agents/ocs_x/files/file_x", {"DELETE", "GET", "HEAD"}),
        ("PUT", "/health", {"GET", "HEAD"}),
    ],
)
def test_a_method_no_route_takes_is_405_allowing_every_method_of_the_path(
    gateway: LiveServer, method: str, path: str, allowed: set[str]
) -> None:
    """A path served by several routes (one per method) answers 405 with all their methods in Allow, as
    RFC 9110 asks and the document lists them, not only those of the first route that matched."""
    response = httpx.request(method, f"{gateway.url}{path}")
    assert response.status_code == 405, response.text
    assert set(response.headers["allow"].split(", ")) == allowed
    assert response.json()["error"]["code"] is not None


@pytest.mark.parametrize(
    ("path", "name"),
    [("/verify/proof/{hash}", "hash"), ("/v1/agents/{agent_id}/proofs/{leaf_hash}", "leaf_hash")],
)
def test_a_hash_in_a_path_is_documented_with_its_form(served: dict[str, Any], path: str, name: str) -> None:
    """What the route takes, so that a request valid by the document is not refused as malformed (400)."""
    parameters = served["paths"][path]["get"]["parameters"]
    (parameter,) = [p for p in parameters if p["name"] == name]
    assert parameter["schema"] == HASH


@pytest.mark.parametrize("field", ["agent_name", "model", "model_provider", "governance_mode"])
def test_agent_fields_are_documented_as_the_routes_take_them(served: dict[str, Any], field: str) -> None:
    for method, path in (("post", "/v1/agents"), ("patch", "/v1/agents/{agent_id}")):
        schema = served["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["properties"][field]["pattern"] == TEXT["pattern"]  # not blank, no NUL
    modes = served["paths"]["/v1/agents"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert modes["properties"]["governance_mode"]["enum"] == ["enforcing", "transparent"]


@pytest.mark.parametrize(
    ("path", "method", "name", "valid", "malformed"),
    [
        ("/v1/usage", "get", "user_id", "usr_" + "0" * 24, "usr_x"),
        ("/v1/usage/daily", "get", "user_id", "usr_" + "0" * 24, "E"),
        ("/v1/usage/rollups", "get", "user_id", "usr_" + "0" * 24, ""),
        ("/v1/agents/{agent_id}/vault", "delete", "provider", "openai", ""),
    ],
)
def test_query_parameters_are_documented_with_the_form_their_route_takes(
    served: dict[str, Any], path: str, method: str, name: str, valid: str, malformed: str
) -> None:
    (parameter,) = [p for p in served["paths"][path][method]["parameters"] if p["name"] == name]
    pattern = parameter["schema"]["pattern"]
    assert re.search(pattern, valid) and not re.search(pattern, malformed)
