"""The database as an operator gets it wrong or the network loses it, against real `gateway` processes and the
real Postgres: concurrent migrates, a wrong DATABASE_URL, an unmigrated or downgraded schema, a database cut or
partitioned away (tests/tcp_proxy.py between the gateway and Postgres)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from websockets.exceptions import ConnectionClosed

from gateway.auth.authenticator import LAST_USED_FLUSH_SECONDS
from gateway.auth.tokens import TokenCodec
from gateway.db.engine import STATEMENT_TIMEOUT_SECONDS
from gateway.db.migrate import downgrade, head_revision, upgrade
from gateway.keys import load_server_keys
from gateway.settings import Settings
from tests.conftest import UPSTREAM_OPENAI_KEY, PostgresServer, add_user, usage_rows
from tests.fakes.chat_provider import FakeChatProvider
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.agents_support import User, new_user, next_frame, send_message, turn_frames
from tests.serving import GATEWAY, LiveServer, clean_env, free_port, serving
from tests.tcp_proxy import TcpProxy

CONCURRENT_MIGRATE_RUNS = 5
# A partitioned database must be seen as down within a few seconds: the engine's connect (3 s) and statement
# (6 s client side) bounds, and a dropped connection's goodbye (2 s), with room for a loaded machine.
PARTITION_ANSWER_SECONDS = 15.0


def plain(database_url: str, **changes: Any) -> str:
    """`database_url` as an operator writes it (postgresql://), with `changes` (host, port, database...)."""
    url = make_url(database_url).set(drivername="postgresql", **changes)
    return url.render_as_string(hide_password=False)


def run_gateway(
    cwd: Path, *args: str, database_url: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(DATABASE_URL=database_url, DATA_DIR=str(cwd / "data")),
    )


def ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/ready", timeout=PARTITION_ANSWER_SECONDS + 5)


def wait_for_ready_status(url: str, status: int, within: float = 10.0) -> httpx.Response:
    """/ready once it answers `status` (the usage recorder notices a migration at its next write)."""
    deadline = time.monotonic() + within
    while (response := ready(url)).status_code != status and time.monotonic() < deadline:
        time.sleep(0.25)
    return response


# --- gateway migrate ------------------------------------------------------------------------------------------


def migrate_twice_at_once(cwd: Path, database_url: str) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(run_gateway, cwd, "migrate", database_url=database_url) for _ in range(2)]
        return [run.result() for run in runs]


def test_two_concurrent_migrates_both_succeed(tmp_path: Path, postgres_server: PostgresServer) -> None:
    for run in range(CONCURRENT_MIGRATE_RUNS):
        database_url = plain(postgres_server.create_database())
        results = migrate_twice_at_once(tmp_path, database_url)

        for result in results:
            assert result.returncode == 0, f"run {run}: {result.stderr}"
            assert "Traceback" not in result.stderr


def test_two_concurrent_migrates_of_one_sqlite_file_both_succeed(tmp_path: Path) -> None:
    for run in range(CONCURRENT_MIGRATE_RUNS):
        database_url = f"sqlite:///{tmp_path}/run{run}.db"
        results = migrate_twice_at_once(tmp_path, database_url)

        assert [result.returncode for result in results] == [0, 0], [result.stderr for result in results]


# --- a DATABASE_URL that cannot be used -------------------------------------------------------------------------


UNUSABLE = {  # the fault: what the one line must say of its cause
    "nothing listens on the port": "Connect call failed",
    "no such database": "does not exist",
    "no such role": "does not exist",  # the server refuses the credentials (the tests' Postgres trusts any password)
    "the network drops packets": "TimeoutError",
}


@pytest.mark.parametrize("fault", list(UNUSABLE))
@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", "0"], ["users", "list"]])
def test_an_unusable_database_is_one_line_naming_database_url(
    tmp_path: Path, postgres_url: str, fault: str, command: list[str]
) -> None:
    target = make_url(postgres_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        if fault == "nothing listens on the port":
            database_url = plain(postgres_url, password="hunter2", port=free_port())
        elif fault == "no such database":
            database_url = plain(postgres_url, password="hunter2", database="gateway_nowhere")
        elif fault == "no such role":
            database_url = plain(postgres_url, password="hunter2", username="gateway_nobody")
        else:
            proxy.partition()
            database_url = plain(postgres_url, password="hunter2", host="127.0.0.1", port=proxy.port)

        result = run_gateway(tmp_path, *command, database_url=database_url, timeout=30)

    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL=" in lines[0] and "127.0.0.1" in lines[0]
    assert "hunter2" not in result.stderr
    assert UNUSABLE[fault] in lines[0]


# --- the schema's revision ------------------------------------------------------------------------------------


def test_serve_on_an_unmigrated_database_says_what_to_run_and_is_not_ready_until_migrated(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    database_url = plain(postgres_server.create_database())
    env = clean_env(DATABASE_URL=database_url, DATA_DIR=str(tmp_path / "data"))

    with serving(tmp_path, env=env) as url:
        before = ready(url)
        assert run_gateway(tmp_path, "migrate", database_url=database_url).returncode == 0
        after = wait_for_ready_status(url, 200)

    warnings = [
        line for line in (tmp_path / "serve.log").read_text().splitlines() if "gateway migrate" in line
    ]
    assert len(warnings) == 1, (tmp_path / "serve.log").read_text()
    assert before.status_code == 503
    assert before.json()["checks"]["database"]["reason"] == "database_not_migrated"
    assert after.status_code == 200, after.text
    assert after.json()["checks"]["database"]["status"] == "ok"


@pytest.mark.parametrize("schema", ["never migrated", "one revision behind"])
def test_a_database_not_at_head_is_not_ready_until_migrated_and_keeps_every_row(
    tmp_path: Path,
    postgres_server: PostgresServer,
    fake_openai_server: tuple[FakeOpenAI, LiveServer],
    schema: str,
) -> None:
    """The gateway deployed before its migration, or on a database no one migrated: the rows the database refuses
    for a missing table or column wait in the journal, and all arrive once `gateway migrate` has run (measured
    before: every one dropped, /ready 200, and still 0 rows after the migration)."""
    database_url = postgres_server.create_database()
    if schema == "one revision behind":
        asyncio.run(upgrade(database_url))
        asyncio.run(downgrade(database_url, "-1"))
    env = clean_env(
        DATABASE_URL=plain(database_url),
        DATA_DIR=str(tmp_path / "data"),
        OPENAI_API_KEY=UPSTREAM_OPENAI_KEY,
        OPENAI_BASE_URL=f"{fake_openai_server[1].url}/v1",
    )

    with serving(tmp_path, env=env) as url:
        request_ids = {f"behind-{number}" for number in range(BEHIND_REQUESTS)}
        for request_id in sorted(request_ids):
            answer = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-request-id": request_id},
            )
            assert answer.status_code == 200, answer.text
        behind = wait_for_ready_status(url, 503)
        assert run_gateway(tmp_path, "migrate", database_url=plain(database_url)).returncode == 0
        migrated = wait_for_ready_status(url, 200)
        deadline = time.monotonic() + 15
        while (rows := asyncio.run(usage_rows(database_url, request_ids))) != request_ids and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)

    assert behind.status_code == 503
    database = behind.json()["checks"]["database"]
    assert database["reason"] == "database_not_migrated"
    assert database["expected_revision"] == head_revision() != database["revision"]
    assert migrated.status_code == 200, migrated.text
    assert rows == request_ids, (
        f"{len(request_ids - rows)} of {BEHIND_REQUESTS} answered requests are not rows"
    )


BEHIND_REQUESTS = 20


# --- the database cut or partitioned away ---------------------------------------------------------------------


@pytest.fixture
def proxied_gateway(tmp_path: Path, postgres_server: PostgresServer) -> Any:
    """(url, proxy, settings) of a `gateway serve` whose Postgres is behind a TcpProxy."""
    database_url = postgres_server.create_database()
    asyncio.run(upgrade(database_url))
    target = make_url(database_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        env = clean_env(
            DATABASE_URL=plain(database_url, host="127.0.0.1", port=proxy.port),
            DATA_DIR=str(tmp_path / "data"),
        )
        with serving(tmp_path, env=env) as url:
            yield url, proxy, Settings.from_env(env, env_file=None)


@pytest.fixture
def signed_in_gateway(tmp_path: Path, postgres_server: PostgresServer) -> Any:
    """(url, proxy, access token, log) of a `gateway serve` behind a TcpProxy, with a user signed in whose
    credential is in the gateway's cache; AUTH_CACHE_SECONDS long enough for the test to reach the routes."""
    database_url = postgres_server.create_database()
    asyncio.run(upgrade(database_url))
    asyncio.run(add_user(database_url, email="outage@example.com", password="correct horse battery"))
    target = make_url(database_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        env = clean_env(
            DATABASE_URL=plain(database_url, host="127.0.0.1", port=proxy.port),
            DATA_DIR=str(tmp_path / "data"),
            AUTH_CACHE_SECONDS="120",
        )
        with serving(tmp_path, env=env) as url:
            login = httpx.post(
                f"{url}/api/v1/auth/login",
                json={"email": "outage@example.com", "password": "correct horse battery"},
            )
            token = login.json()["access_token"]
            assert (
                httpx.get(f"{url}/v1/usage", headers={"authorization": f"Bearer {token}"}).status_code == 200
            )
            yield url, proxy, token, tmp_path / "serve.log"


# Refused connections surface from the driver as ConnectionRefusedError, silence as TimeoutError (service_unavailable);
# a dropped or timed-out statement through SQLAlchemy (database_unavailable); a credential no longer checkable
# (auth_unavailable).
AWAY_CODES = ("database_unavailable", "service_unavailable", "auth_unavailable")


@pytest.mark.parametrize("fault", ["cut", "partition"])
def test_routes_that_need_the_database_answer_503_while_it_is_away(
    signed_in_gateway: Any, fault: str
) -> None:
    """Usage reads and token creation during an outage: 503 `database_unavailable` in the envelope, within
    seconds, and one log line without a traceback (measured before: 500 and a traceback per request)."""
    url, proxy, token, log = signed_in_gateway
    headers = {"authorization": f"Bearer {token}"}

    getattr(proxy, fault)()
    answers = []
    for _ in range(2):
        for method, path, body in (
            ("GET", "/v1/usage", None),
            ("GET", "/v1/usage/daily", None),
            ("POST", "/v1/api-tokens", {"name": "during the outage"}),
        ):
            began = time.monotonic()
            response = httpx.request(
                method, f"{url}{path}", json=body, headers=headers, timeout=PARTITION_ANSWER_SECONDS + 5
            )
            answers.append((path, response, time.monotonic() - began))

    for path, response, seconds in answers:
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] in AWAY_CODES, response.text
        assert seconds < PARTITION_ANSWER_SECONDS, (path, seconds)
    text = log.read_text()
    assert "Traceback" not in text and "answered 503: a dependency is away" in text


def test_a_tokens_use_during_an_outage_is_recorded_once_the_database_is_back(signed_in_gateway: Any) -> None:
    """The last-used writer's flush that fails (the database cut) keeps its batch for the next flush rather than
    drop it (before: the token's `last_used_at` stayed null)."""
    url, proxy, access, log = signed_in_gateway
    created = httpx.post(
        f"{url}/v1/api-tokens",
        json={"name": "used", "scopes": ["usage:read"]},
        headers={"authorization": f"Bearer {access}"},
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert httpx.get(f"{url}/v1/usage", headers={"authorization": f"Bearer {token}"}).status_code == 200

    proxy.cut()  # before the writer's next flush, every LAST_USED_FLUSH_SECONDS
    deadline = time.monotonic() + LAST_USED_FLUSH_SECONDS + PARTITION_ANSWER_SECONDS
    while "could not record token last use" not in log.read_text():
        assert time.monotonic() < deadline, "no flush failed during the cut"
        time.sleep(0.2)
    proxy.restore()

    deadline = time.monotonic() + LAST_USED_FLUSH_SECONDS + PARTITION_ANSWER_SECONDS
    while True:
        listed = httpx.get(f"{url}/v1/api-tokens", headers={"authorization": f"Bearer {access}"})
        if listed.status_code == 200 and listed.json()["data"][0]["last_used_at"] is not None:
            break
        assert time.monotonic() < deadline, f"last_used_at not recorded: {listed.text}"
        time.sleep(0.5)


def test_ready_says_database_unreachable_when_the_database_is_cut(proxied_gateway: Any) -> None:
    url, proxy, _ = proxied_gateway
    assert ready(url).status_code == 200

    proxy.cut()
    response = ready(url)

    assert response.status_code == 503
    assert response.json()["checks"]["database"]["reason"] == "database_unreachable"


def test_ready_and_a_credential_lookup_answer_within_seconds_during_a_partition(proxied_gateway: Any) -> None:
    url, proxy, settings = proxied_gateway
    # A well-formed token the database does not know: checking it needs the database.
    token = TokenCodec(load_server_keys(settings).token_hash_key).new_api_token()
    assert ready(url).status_code == 200

    proxy.partition()
    began = time.monotonic()
    readiness = ready(url)
    ready_seconds = time.monotonic() - began
    began = time.monotonic()
    lookup = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {token}"},
        timeout=PARTITION_ANSWER_SECONDS + 5,
    )
    lookup_seconds = time.monotonic() - began

    assert readiness.status_code == 503
    assert readiness.json()["checks"]["database"]["reason"] == "database_unreachable"
    assert ready_seconds < PARTITION_ANSWER_SECONDS
    print(
        f"partition: /ready in {ready_seconds:.1f} s, lookup {lookup.status_code} in {lookup_seconds:.1f} s"
    )
    assert lookup.status_code >= 400  # an error (401, 503), not a hang
    assert lookup_seconds < PARTITION_ANSWER_SECONDS, f"the lookup took {lookup_seconds:.1f} s"


# --- an agent turn when the database goes silent --------------------------------------------------------------

# A turn meets the database several times (its claim, the transparency log's appends, the reply, the release):
# each bounded, so the turn ends, with a frame that says why, within a few of those bounds.
TURN_END_SECONDS = 30.0
HEALED_WITHIN_SECONDS = 15.0  # the pool finds its partitioned connections dead (bounded by their timeouts)
TURN_REQUEST_ID = "turn-in-a-partition"


@pytest.mark.parametrize("when", ["before the turn", "mid-reply"])
def test_an_agent_turn_during_a_partition_ends_with_a_frame_within_seconds(
    tmp_path: Path, postgres_server: PostgresServer, when: str
) -> None:
    """The transparency appends and the turn's own writes are database calls like the others: partitioned away,
    the chat's client gets an error frame within seconds, not a socket that never says anything again."""
    provider = FakeChatProvider()
    database_url = postgres_server.create_database()
    asyncio.run(upgrade(database_url))
    target = make_url(database_url)
    with (
        LiveServer(provider.app) as provider_server,
        TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy,
    ):
        env = clean_env(
            DATABASE_URL=plain(database_url, host="127.0.0.1", port=proxy.port),
            DATA_DIR=str(tmp_path / "data"),
            WORKERS_AI_BASE_URL=f"{provider_server.url}/ai/v1",
            WORKERS_AI_API_KEY="workers-ai-platform-secret",
        )
        with serving(tmp_path, env=env) as url:
            user = new_user(env, url)
            agent = user.running_agent(model="gated")
            try:
                frames, took = asyncio.run(turn_in_a_partition(user, agent["id"], proxy, provider, when))
            finally:
                provider.release()
                proxy.heal()
            after = asyncio.run(turn_when_healed(user, agent["id"]))
            # The running gateway writes the turn's journaled row once the network is back (a replay every 2 s),
            # not left to the SIGTERM's bounded drain, which may first wait out a write the partition held.
            deadline = time.monotonic() + HEALED_WITHIN_SECONDS
            while when == "mid-reply" and not asyncio.run(usage_rows(database_url, {TURN_REQUEST_ID})):
                assert time.monotonic() < deadline, (
                    "the turn's row was not written once the database was back"
                )
                time.sleep(0.5)
        rows = asyncio.run(usage_rows(database_url, {TURN_REQUEST_ID}))

    print(f"{when}: {[frame.get('type') for frame in frames]} in {took:.1f} s")
    assert took < TURN_END_SECONDS, f"the turn took {took:.1f} s to end"
    assert frames and frames[-1]["type"] == "error", frames
    assert frames[-1]["code"] in AWAY_CODES, frames[-1]
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log  # an outage is not a fault, nor is a shutdown's abandoned write
    if when == "mid-reply":  # the model answered: the turn has its usage row, though it could not be stored
        assert rows == {TURN_REQUEST_ID}
    # The database back, the agent answers at once: the claim the failed turn could not release is taken over.
    assert after[-1]["type"] == "stream_end", after


async def turn_when_healed(user: User, agent_id: str) -> list[dict[str, Any]]:
    """The frames of one turn once the database answers again (a few seconds for the pool to see it)."""
    deadline = time.monotonic() + HEALED_WITHIN_SECONDS
    while True:
        async with user.chat(agent_id) as socket:
            frames = await turn_frames(socket, "are you back?")
        if frames[-1].get("code") not in AWAY_CODES or time.monotonic() > deadline:
            return frames
        await asyncio.sleep(0.5)


async def turn_in_a_partition(
    user: User, agent_id: str, proxy: TcpProxy, provider: FakeChatProvider, when: str
) -> tuple[list[dict[str, Any]], float]:
    """The frames after the partition, up to the turn's last (an error frame, or the socket closed), and how
    long that took."""
    async with user.chat(agent_id, headers={"x-request-id": TURN_REQUEST_ID}) as socket:
        if when == "mid-reply":
            await send_message(socket, "hello")
            assert [(await next_frame(socket))["type"] for _ in range(3)] == [
                "governance",
                "stream_start",
                "stream_chunk",
            ]
        await asyncio.to_thread(proxy.partition)
        began = time.monotonic()
        if when == "mid-reply":
            provider.release()  # the reply ends: it is to be stored and appended to the log
        else:
            await send_message(socket, "hello")
        frames: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(TURN_END_SECONDS + 30):
                while not frames or frames[-1]["type"] not in ("error", "stream_end"):
                    frames.append(json.loads(await socket.recv()))
        except (ConnectionClosed, TimeoutError) as exc:
            frames.append({"type": "closed", "reason": repr(exc)})
        return frames, time.monotonic() - began


# --- a statement the database cancels ------------------------------------------------------------------------

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def usage_table_locked(database_url: str, *, seconds: float) -> Iterator[None]:
    """Another session holds `usage_events` locked against every reader and writer for `seconds` from entry."""
    held = threading.Event()

    async def hold() -> None:
        connection = await asyncpg.connect(plain(database_url))
        try:
            async with connection.transaction():
                await connection.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
                held.set()
                await asyncio.sleep(seconds)
        finally:
            await connection.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert held.wait(10), "the lock was not taken"
        yield
    finally:
        holder.join()


def test_a_statement_the_database_cancels_is_an_outage_not_a_fault(
    tmp_path: Path, postgres_server: PostgresServer, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    """A statement past the server's `statement_timeout` (here waiting on a lock another session holds) is
    cancelled by Postgres (SQLSTATE 57014): a read answers 503 `database_unavailable`, not a 500 with a
    traceback, and the usage writer keeps its row in the journal without an error line until the lock is gone
    (before: 500, and "writing to the database failed (DBAPIError)")."""
    database_url = postgres_server.create_database()
    asyncio.run(upgrade(database_url))
    env = clean_env(
        DATABASE_URL=plain(database_url),
        DATA_DIR=str(tmp_path / "data"),
        OPENAI_API_KEY=UPSTREAM_OPENAI_KEY,
        OPENAI_BASE_URL=f"{fake_openai_server[1].url}/v1",
    )
    request_id = "req_cancelled_statement"
    with serving(tmp_path, env=env) as url, httpx.Client(base_url=url, timeout=30) as client:
        with usage_table_locked(database_url, seconds=STATEMENT_TIMEOUT_SECONDS + 4):
            chat = client.post("/v1/chat/completions", json=CHAT_BODY, headers={"x-request-id": request_id})
            usage = client.get("/v1/usage")
        deadline = time.monotonic() + 30
        while not asyncio.run(usage_rows(database_url, {request_id})):
            assert time.monotonic() < deadline, "the row never arrived"
            time.sleep(0.25)

    assert chat.status_code == 200, chat.text
    assert usage.status_code == 503, usage.text
    assert usage.json()["error"]["code"] == "database_unavailable"
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log and "writing to the database failed" not in log, log
