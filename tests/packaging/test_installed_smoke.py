"""The gateway installed from its wheel (not editable), run the way the Dockerfile runs it: from a working
directory without the source tree, DATA_DIR elsewhere, as an unprivileged user (when the tests run as root).

An operator's first hour, end to end: `gateway migrate` on Postgres, `gateway users create`, `gateway serve`,
login, an API token, chat through the `openai` client (plain and streamed) to a fake upstream, Chroma through a
real `chroma run`, one agent chat turn over WebSocket, and `gateway verify-proof` on that turn's proof.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
import httpx
import pytest
from openai import OpenAI

from tests.conftest import UPSTREAM_OPENAI_KEY, PostgresServer
from tests.fakes.chat_provider import FakeChatProvider
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.agents_support import User, turn_frames
from tests.packaging.unprivileged import Account, unprivileged_account
from tests.serving import LiveServer, clean_env, serving

EMAIL = "operator@example.com"
PASSWORD = "correct horse battery staple"
PROVIDER_KEY = "workers-ai-platform-secret"
CHROMA_KEY = "chroma-upstream-key"
COMMAND_SECONDS = 120


@dataclass(frozen=True)
class Install:
    """The installed gateway and the account it runs as."""

    venv: Path
    account: Account

    def command(self, executable: str, *args: str) -> list[str]:
        return self.account.command(str(self.venv / "bin" / executable), *args)

    def run(
        self, *args: str, cwd: Path, env: dict[str, str], stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`gateway ARGS` from the install, as its account."""
        return subprocess.run(
            self.command("gateway", *args),
            cwd=cwd,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
        )


@dataclass(frozen=True)
class Deployment:
    """A served installed gateway, its places, and its operator logged in."""

    install: Install
    url: str
    workdir: Path
    data_dir: Path
    files: Path  # where the tests put what the gateway's account must read (a proof)
    operator: User


@pytest.fixture(scope="module")
def places() -> Iterator[Path]:
    """A folder every user can enter (pytest's own temporary folders are the tests' user's alone)."""
    root = Path(tempfile.mkdtemp(prefix="gateway-smoke-"))
    try:
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def install(installed_venv: Path, places: Path) -> Install:
    """The wheel's install, checked to be one: the account imports the gateway from the venv, not a checkout."""
    installed = Install(installed_venv, unprivileged_account())
    found = subprocess.run(
        installed.command("python", "-c", "import gateway.http1, gateway.migrations as m; print(m.__file__)"),
        cwd=places,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
    )
    assert found.returncode == 0, found.stderr
    site_packages = sorted((installed_venv / "lib").glob("python3*/site-packages"))
    assert Path(found.stdout.strip()).is_relative_to(site_packages[0]), found.stdout
    assert not list(site_packages[0].glob("__editable__*")), "an editable install, not the wheel's"
    return installed


@pytest.fixture(scope="module")
def provider() -> Iterator[LiveServer]:
    """The agents' chat provider (Workers AI's place)."""
    with LiveServer(FakeChatProvider().app) as server:
        yield server


@pytest.fixture(scope="module")
def deployment(
    install: Install,
    places: Path,
    postgres_server: PostgresServer,
    fake_openai_server: tuple[FakeOpenAI, LiveServer],
    chroma_url: str,
    provider: LiveServer,
) -> Iterator[Deployment]:
    workdir = places / "work"
    workdir.mkdir(mode=0o755)
    files = places / "files"
    files.mkdir(mode=0o755)
    data_dir = places / "data"
    data_dir.mkdir()
    install.account.own(data_dir)  # the account's only writable place, as /data in the image
    database_url = postgres_server.create_database().replace("postgresql+asyncpg://", "postgresql://", 1)
    env = clean_env(
        HOME=str(data_dir),
        DATA_DIR=str(data_dir),
        DATABASE_URL=database_url,
        OPENAI_API_KEY=UPSTREAM_OPENAI_KEY,
        OPENAI_BASE_URL=f"{fake_openai_server[1].url}/v1",
        CHROMA_BASE_URL=chroma_url,
        CHROMA_API_KEY=CHROMA_KEY,  # `chroma run` asks for none; the gateway sends one all the same
        WORKERS_AI_BASE_URL=f"{provider.url}/ai/v1",
        WORKERS_AI_API_KEY=PROVIDER_KEY,
    )

    migrated = install.run("migrate", cwd=workdir, env=env)
    assert migrated.returncode == 0, migrated.stderr
    created = install.run("users", "create", "--email", EMAIL, cwd=workdir, env=env, stdin=f"{PASSWORD}\n")
    assert created.returncode == 0, created.stderr

    with serving(workdir, env=env, gateway=install.command("gateway")) as url:
        login = httpx.post(f"{url}/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
        assert login.status_code == 200, login.text
        operator = User(url, EMAIL, login.json()["access_token"])
        yield Deployment(install, url, workdir, data_dir, files, operator)


@pytest.fixture(scope="module")
def api_token(deployment: Deployment) -> str:
    """A chat-scoped API token, created through the API."""
    return deployment.operator.api_token(["chat"])


def test_a_chat_completion_through_the_openai_client(
    deployment: Deployment, api_token: str, fake_openai: FakeOpenAI
) -> None:
    client = OpenAI(base_url=f"{deployment.url}/v1", api_key=api_token, max_retries=0)

    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello?"}]
    )

    assert completion.choices[0].message.content == "Hello, world"
    assert completion.usage is not None and completion.usage.total_tokens == 18
    [upstream] = fake_openai.recorder.requests
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"


def test_a_streamed_chat_completion_through_the_openai_client(
    deployment: Deployment, api_token: str, fake_openai: FakeOpenAI
) -> None:
    client = OpenAI(base_url=f"{deployment.url}/v1", api_key=api_token, max_retries=0)

    with client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hello?"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)

    assert (
        "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "Hello, world"
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens == 18
    assert len(fake_openai.recorder.requests) == 1


def test_a_chroma_collection_through_the_chromadb_client(deployment: Deployment) -> None:
    token = deployment.operator.api_token(["chroma"])
    client = chromadb.HttpClient(
        host=f"{deployment.url}/v1/chroma",
        headers={"authorization": f"Bearer {token}"},
        settings=chromadb.Settings(anonymized_telemetry=False),
    )

    collection = client.create_collection("smoke", embedding_function=None)
    collection.add(ids=["1", "2"], embeddings=[[1.0, 0.0], [0.0, 1.0]], documents=["apple", "banana"])
    found = collection.query(query_embeddings=[[0.0, 1.0]], n_results=1)

    assert found["documents"] == [["banana"]]
    assert [c.name for c in client.list_collections()] == ["smoke"]


def test_an_agent_turn_over_websocket_with_a_proof_that_verify_proof_accepts(deployment: Deployment) -> None:
    operator = deployment.operator
    agent = operator.running_agent()

    async def one_turn() -> list[dict[str, Any]]:
        async with operator.chat(agent["id"]) as socket:
            return await turn_frames(socket, "Hello from the wheel")

    frames = asyncio.run(one_turn())

    assert [frame["type"] for frame in frames] == ["governance", "stream_start"] + ["stream_chunk"] * 3 + [
        "stream_end"
    ], frames
    assert "".join(frame["content"] for frame in frames[2:5]) == "Echo: Hello from the wheel"
    proof = operator.request("GET", f"/v1/agents/{agent['id']}/proofs/{frames[-1]['leaf_hash']}")
    assert proof.status_code == 200, proof.text
    key = httpx.get(f"{deployment.url}/v1/transparency/public-key").json()["verifier_key"]

    verdict = verify_proof(deployment, proof.json(), key)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr

    forged = proof.json()
    forged["proof"]["root_hash"] = "sha256:" + "0" * 64
    assert verify_proof(deployment, forged, key).returncode == 1


def verify_proof(deployment: Deployment, proof: dict[str, Any], key: str) -> subprocess.CompletedProcess[str]:
    """The installed `gateway verify-proof`, as the gateway's account, on `proof` kept in a file."""
    path = deployment.files / "proof.json"
    path.write_text(json.dumps(proof))
    path.chmod(0o644)
    return deployment.install.run(
        "verify-proof", str(path), "--public-key", key, cwd=deployment.workdir, env=clean_env()
    )


def test_the_gateway_keeps_its_state_in_data_dir_as_its_account(deployment: Deployment) -> None:
    """What `gateway serve` generated (its keys) is in DATA_DIR and the account's; the working directory got
    nothing but the log the test writes there."""
    written = [path for path in deployment.data_dir.rglob("*") if path.is_file()]

    assert written, "nothing in DATA_DIR"
    assert {path.stat().st_uid for path in written} == {deployment.install.account.uid}
    assert [path.name for path in deployment.workdir.iterdir()] == ["serve.log"]
