"""compose.yaml and the Dockerfile: valid Compose, wired as a user relies on, and running what they describe.

No Docker engine runs here, so the stack cannot boot; instead the `migrate` and `gateway` services' own
commands and healthchecks run as real processes on this machine, with the service environment and a fresh
Postgres database.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.serving import LiveServer, free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
# A copy of the Compose specification's schema (shared/reference/), so that a fresh clone is self-contained.
SCHEMA_FILE = REPO / "tests" / "reference" / "compose-spec.schema.json"
SERVICES = {"postgres", "chroma", "migrate", "gateway"}
SHARED_SECRETS = ("PLATFORM_JWT_SECRET", "TOKEN_HASH_KEY", "VAULT_MASTER_KEY", "LOG_SIGNING_KEY")
CONTAINER_PORT = 8080
CHROMA_PORT = 8000
STARTUP_SECONDS = 30.0
SHUTDOWN_SECONDS = 15.0
COMMAND_SECONDS = 120.0
# Compose's interpolation: $$ (a literal $), $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ...
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A `${VAR:?message}` whose variable is not set, as `docker compose` refuses it."""


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """`node` (a compose document or any part of it) with every `${...}` in its strings taken from `env`."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        value, operator, argument = env.get(name), match["operator"] or "", match["argument"] or ""
        missing = value is None or (operator.startswith(":") and value == "")
        if missing and operator.endswith("-"):
            return argument
        if missing and operator.endswith("?"):
            raise InterpolationError(f"required variable {name} is missing a value: {argument}")
        return value or ""

    return INTERPOLATION.sub(substitute, node)


def random_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def host_env() -> dict[str, str]:
    """What an operator exports before `docker compose up`: the shared secrets, no upstream keys."""
    return {name: random_key() for name in SHARED_SECRETS}


def load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as file:
        document: dict[str, Any] = yaml.safe_load(file)
    return document


def resolved_compose(env: Mapping[str, str]) -> dict[str, Any]:
    resolved: dict[str, Any] = interpolate(load_compose(), env)
    return resolved


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_values(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions() if name == keyword]


def healthcheck_argv(test: str | list[str]) -> list[str]:
    """The process a compose or Dockerfile healthcheck `test` runs."""
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *rest = test
    assert kind in ("CMD", "CMD-SHELL"), f"healthcheck test starts with {kind!r}"
    return rest if kind == "CMD" else ["/bin/sh", "-c", *rest]


def dockerfile_healthcheck_argv() -> list[str]:
    """The image's own HEALTHCHECK (exec form: `HEALTHCHECK [OPTIONS] CMD ["executable", ...]`)."""
    [healthcheck] = dockerfile_values("HEALTHCHECK")
    _options, keyword, command = healthcheck.partition("CMD ")
    assert keyword, f"HEALTHCHECK without CMD: {healthcheck}"
    argv: list[str] = json.loads(command)
    return argv


def on_this_machine(argv: list[str], *, port: int) -> list[str]:
    """`argv` as run here: this venv's `gateway` and `python`, and `port` instead of the container's port."""
    executables = {"gateway": str(Path(sys.executable).parent / "gateway"), "python": sys.executable}
    result = [executables.get(argv[0], argv[0]), *argv[1:]]
    for index, arg in enumerate(result):
        if index > 0 and result[index - 1] == "--port":
            assert arg == str(CONTAINER_PORT), f"listens on {arg}, not on the published {CONTAINER_PORT}"
            result[index] = str(port)
        else:
            result[index] = arg.replace(f"127.0.0.1:{CONTAINER_PORT}/", f"127.0.0.1:{port}/")
    return result


def schema_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator of the class the schema's `$schema` names (the compose schema writes draft-07 as https)."""
    dialect = re.sub(r"^https://", "http://", schema["$schema"]).rstrip("#")
    validator_class = jsonschema.validators.validator_for({"$schema": dialect}, default=None)
    assert validator_class is not None, f"no validator for {schema['$schema']}"
    validator_class.check_schema(schema)
    resource = referencing.jsonschema.specification_with(dialect).create_resource(schema)
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(schema["$id"], resource)
    resolver = registry.resolver(base_uri=schema["$id"])
    for reference in sorted(set(references(schema))):
        resolver.lookup(reference)  # raises Unresolvable
    return validator_class(schema, registry=registry)


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = schema_validator(schema)
    return sorted(f"{error.json_path}: {error.message}" for error in validator.iter_errors(document))


# --- the file is valid Compose ------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification() -> None:
    assert schema_errors(load_compose()) == []


def test_the_schema_check_catches_a_misspelt_key() -> None:
    document = copy.deepcopy(load_compose())
    document["services"]["gateway"]["depends_no"] = document["services"]["gateway"].pop("depends_on")
    assert any("depends_no" in error for error in schema_errors(document))


def test_compose_file_has_no_obsolete_version_key() -> None:
    assert "version" not in load_compose()


# --- the stack is wired as a user relies on -----------------------------------------------------------------


def test_the_four_services_exist() -> None:
    assert set(load_compose()["services"]) >= SERVICES


def test_gateway_starts_after_migrations_succeed_and_its_dependencies_are_healthy() -> None:
    services = load_compose()["services"]
    assert services["gateway"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["gateway"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["chroma"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_migrate_is_a_one_shot_gateway_migrate() -> None:
    migrate = load_compose()["services"]["migrate"]
    assert migrate["command"] == ["gateway", "migrate"]
    assert migrate["restart"] == "no"


def test_every_long_running_service_has_a_healthcheck() -> None:
    services = load_compose()["services"]
    long_running = {name for name, service in services.items() if service.get("restart") != "no"}
    assert long_running == SERVICES - {"migrate"}
    for name in long_running:
        healthcheck = services[name].get("healthcheck", {})
        assert healthcheck.get("test") and not healthcheck.get("disable"), f"{name} has no healthcheck"


def test_migrate_and_gateway_are_built_from_the_dockerfile_with_one_environment() -> None:
    services = load_compose()["services"]
    for name in ("migrate", "gateway"):
        build = services[name]["build"]
        assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO
        assert (REPO / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    assert services["migrate"]["environment"] == services["gateway"]["environment"]


def test_gateway_is_published_on_8080_and_runs_what_the_image_runs() -> None:
    gateway = resolved_compose(host_env())["services"]["gateway"]
    assert f"8080:{CONTAINER_PORT}" in gateway["ports"]
    assert gateway["command"] == ["gateway", "serve", "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]
    assert [json.loads(command) for command in dockerfile_values("CMD")] == [gateway["command"]]
    assert dockerfile_values("EXPOSE") == [str(CONTAINER_PORT)]


def test_the_image_runs_as_an_unprivileged_user_with_data_in_data() -> None:
    assert dockerfile_values("FROM") == ["python:3.11-slim"]
    users = dockerfile_values("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "DATA_DIR=/data" in dockerfile_values("ENV")
    assert any(run.startswith("pip install --no-cache-dir .") for run in dockerfile_values("RUN"))


def test_the_gateway_environment_points_at_the_stack_services() -> None:
    services = resolved_compose({**host_env(), "POSTGRES_PASSWORD": "s3cret"})["services"]
    env, postgres = services["gateway"]["environment"], services["postgres"]["environment"]
    database = urlsplit(env["DATABASE_URL"])
    assert (database.scheme, database.hostname, database.port) == ("postgresql", "postgres", 5432)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"] == "s3cret"
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    assert env["CHROMA_BASE_URL"] == f"http://chroma:{CHROMA_PORT}"
    assert env["DATA_DIR"] == "/data"


def test_upstream_keys_come_from_the_host_and_may_be_left_out() -> None:
    env = resolved_compose({**host_env(), "OPENAI_API_KEY": "sk-host"})["services"]["gateway"]["environment"]
    assert env["OPENAI_API_KEY"] == "sk-host"
    assert env["MISTRAL_API_KEY"] == ""


@pytest.mark.parametrize("secret", SHARED_SECRETS)
def test_compose_refuses_to_start_without_a_shared_secret(secret: str) -> None:
    env = host_env()
    secrets_given = resolved_compose(env)["services"]["gateway"]["environment"]
    assert secrets_given[secret] == env[secret]
    del env[secret]
    with pytest.raises(InterpolationError, match=secret):
        resolved_compose(env)


def test_declared_volumes_cover_the_ones_services_mount() -> None:
    document = load_compose()
    mounted = {
        volume.split(":", 1)[0]
        for service in document["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert mounted <= set(document.get("volumes", {}))


# --- the stack starts the processes it describes ------------------------------------------------------------


def run(argv: list[str], *, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=COMMAND_SECONDS, check=False
    )


def wait_until_answering(url: str, server: subprocess.Popen[bytes], log: Path) -> httpx.Response:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert server.poll() is None, f"gateway serve exited with {server.returncode}:\n{log.read_text()}"
        try:
            return httpx.get(url, timeout=2.0)
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"gateway serve did not answer:\n{log.read_text()}"
            time.sleep(0.1)


async def applied_revision(database_url: str) -> str | None:
    connection = await asyncpg.connect(database_url)
    try:
        revision: str | None = await connection.fetchval("SELECT version_num FROM alembic_version")
        return revision
    finally:
        await connection.close()


def test_the_stack_runs_migrate_and_serve_as_it_describes(postgres_url: str, tmp_path: Path) -> None:
    services = resolved_compose(host_env())["services"]
    migrate, gateway = services["migrate"], services["gateway"]
    port = free_port()
    database_url = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        **gateway["environment"],
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
    }

    migrated = run(on_this_machine(migrate["command"], port=port), env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert asyncio.run(applied_revision(database_url))

    log = tmp_path / "serve.log"
    healthchecks = [
        on_this_machine(healthcheck_argv(gateway["healthcheck"]["test"]), port=port),
        on_this_machine(dockerfile_healthcheck_argv(), port=port),
    ]
    with log.open("wb") as output:
        server = subprocess.Popen(
            on_this_machine(gateway["command"], port=port),
            env=env,
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            response = wait_until_answering(f"http://127.0.0.1:{port}/health", server, log)
            assert response.status_code == 200
            assert response.json()["status"] == "ok"
            for healthcheck in healthchecks:
                checked = run(healthcheck, env=env, cwd=tmp_path)
                assert checked.returncode == 0, f"{healthcheck}: {checked.stderr}"
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(SHUTDOWN_SECONDS)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    # uvicorn shuts down gracefully, then re-raises the signal (a container's PID 1 ignores it and exits 0).
    assert server.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
    for healthcheck in healthchecks:
        assert run(healthcheck, env=env, cwd=tmp_path).returncode != 0, "healthcheck passes with no server"


@contextmanager
def fake_chroma(status_code: int) -> Iterator[LiveServer]:
    async def heartbeat(request: Request) -> JSONResponse:
        return JSONResponse({"nanosecond heartbeat": time.time_ns()}, status_code=status_code)

    with LiveServer(Starlette(routes=[Route("/api/v2/heartbeat", heartbeat)])) as server:
        yield server


@pytest.mark.parametrize(("status_code", "healthy"), [(200, True), (503, False)])
def test_chroma_healthcheck_asks_for_the_heartbeat(status_code: int, healthy: bool, tmp_path: Path) -> None:
    test = resolved_compose(host_env())["services"]["chroma"]["healthcheck"]["test"]
    with fake_chroma(status_code) as chroma:
        argv = [
            arg.replace(f"/dev/tcp/127.0.0.1/{CHROMA_PORT}", f"/dev/tcp/127.0.0.1/{chroma.port}")
            for arg in healthcheck_argv(test)
        ]
        assert argv != healthcheck_argv(test), "the healthcheck does not connect to 127.0.0.1:8000"
        checked = run(argv, env={"PATH": os.environ.get("PATH", os.defpath)}, cwd=tmp_path)
    assert (checked.returncode == 0) is healthy, checked.stderr
