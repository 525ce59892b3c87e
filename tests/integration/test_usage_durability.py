"""Usage durability: every request a client got a complete answer for is a row in `usage_events`, exactly once.

Real processes and sockets throughout, no mocks:

- 10,000 requests through the official `openai` client (half of them streamed) give exactly 10,000 events with the
  fake upstream's tokens, and the three usage routes add up to the same totals. This runs with the full 10,000
  on both backends, the embedded SQLite and Postgres (the `gateway_env` parametrisation).
- Postgres made unreachable for 20 seconds under load, through a TCP proxy that is cut (listener closed and every
  open connection dropped) and restored: requests keep being answered meanwhile, and every one answered is in the
  table once the journal has been replayed, which leaves no row in the journal. Postgres only: SQLite cannot be
  made unreachable this way.
- `gateway serve` sent SIGTERM mid-load: every request it answered is in the table once the process has exited.
  Postgres only, so that the rows are read by another client while nothing of the gateway is left running.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from gateway.app import JOURNAL_FOLDER
from gateway.db.engine import Database
from gateway.db.migrate import upgrade
from gateway.db.models import UsageEvent
from gateway.settings import Settings
from tests.conftest import UPSTREAM_OPENAI_KEY, GatewayFactory, PostgresServer
from tests.fakes.openai_upstream import USAGE, FakeOpenAI
from tests.serving import (
    GATEWAY,
    LiveServer,
    clean_env,
    gateway_process,
    serving,
)
from tests.tcp_proxy import TcpProxy

# Minutes of load: `-m 'not soak'` leaves them out of a quick run; .ci/run runs them on their own.
pytestmark = pytest.mark.soak

MODEL = "gpt-4o-mini"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
OPENAI_CLIENT_REQUESTS = 10_000
OPENAI_CLIENT_CONCURRENCY = 32
OUTAGE_SECONDS = 20.0
REPLAY_WAIT_SECONDS = 20.0
LOAD_CONCURRENCY = 16
# Segments holding rows that tell an outage: with the database there, one open and at most one being written.
KEPT_SEGMENTS = 4
# Through the outage the gateway must keep answering: no pause between two answers longer than this.
MAX_PAUSE_DURING_OUTAGE_SECONDS = 2.0


# --- reading the table ---------------------------------------------------------------------------------------


async def recorded_events(
    database_url: str, request_ids: Iterable[str] | None = None, **where: Any
) -> list[Any]:
    """(request_id, status, is_stream, input, output, total tokens) of the rows matching `where` / `request_ids`."""
    database = Database(database_url)
    database.open()
    columns = (
        UsageEvent.request_id,
        UsageEvent.status,
        UsageEvent.is_stream,
        UsageEvent.input_tokens,
        UsageEvent.output_tokens,
        UsageEvent.total_tokens,
    )
    try:
        async with database.session() as session:
            query = select(*columns).filter_by(**where)
            if request_ids is None:
                return list((await session.execute(query)).all())
            ids, rows = list(request_ids), list[Any]()
            for start in range(0, len(ids), 1000):
                chunk = query.where(UsageEvent.request_id.in_(ids[start : start + 1000]))
                rows.extend((await session.execute(chunk)).all())
            return rows
    finally:
        await database.close()


async def event_count(database_url: str, **where: Any) -> int:
    database = Database(database_url)
    database.open()
    try:
        async with database.session() as session:
            return int(
                await session.scalar(select(func.count()).select_from(UsageEvent).filter_by(**where)) or 0
            )
    finally:
        await database.close()


async def poll(check: Callable[[], Awaitable[bool]], *, within: float, every: float = 0.25) -> bool:
    """Whether `check()` came true within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)


def journal_segments(data_dir: Path) -> list[Path]:
    """The journal's segments that hold rows (the open one is empty when nothing is waiting)."""
    folder = data_dir / JOURNAL_FOLDER
    holding = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            if path.stat().st_size:
                holding.append(path)
        except FileNotFoundError:
            continue  # written and deleted meanwhile
    return holding


# --- 1. ten thousand requests through the official client ----------------------------------------------------


async def drive_openai_client(url: str, api_token: str, request_ids: list[str]) -> list[str]:
    """Sends one request per id (odd positions streamed) through `AsyncOpenAI`; returns the problems seen."""
    problems: list[str] = []
    work = iter(enumerate(request_ids))

    async def worker(client: openai.AsyncOpenAI) -> None:
        for index, request_id in work:
            headers = {"x-request-id": request_id}
            try:
                if index % 2:
                    stream = await client.chat.completions.create(
                        model=MODEL,
                        messages=MESSAGES,
                        stream=True,
                        extra_headers=headers,
                    )
                    usage = None
                    async for chunk in stream:
                        usage = chunk.usage or usage
                else:
                    completion = await client.chat.completions.create(
                        model=MODEL,
                        messages=MESSAGES,
                        extra_headers=headers,
                    )
                    usage = completion.usage
            except openai.OpenAIError as exc:
                problems.append(f"{request_id}: {exc!r}")
                continue
            if usage is None or usage.total_tokens != USAGE["total_tokens"]:
                problems.append(f"{request_id}: usage {usage!r}")

    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key=api_token, max_retries=0, timeout=30
    ) as client:
        await asyncio.gather(*(worker(client) for _ in range(OPENAI_CLIENT_CONCURRENCY)))
    return problems


def test_ten_thousand_requests_through_the_openai_client_give_exactly_ten_thousand_events(
    gateway_env: dict[str, str], start_gateway: GatewayFactory, api_token: str, fake_openai: FakeOpenAI
) -> None:
    dataset = f"durability_{uuid.uuid4().hex[:12]}"  # this test's rows only, in the shared database
    database_url = Settings.from_env(gateway_env, env_file=None).database_url
    request_ids = [f"load-{uuid.uuid4().hex}" for _ in range(OPENAI_CLIENT_REQUESTS)]

    with start_gateway(ANALYTICS_DATASET=dataset) as gateway:
        problems = asyncio.run(drive_openai_client(gateway.url, api_token, request_ids))
        assert problems == [], problems[:10]

        async def all_recorded() -> bool:
            return await event_count(database_url, dataset=dataset) >= OPENAI_CLIENT_REQUESTS

        assert asyncio.run(poll(all_recorded, within=REPLAY_WAIT_SECONDS))
        time.sleep(1.0)  # two more flush intervals: nothing else may arrive
        usage = [
            httpx.get(f"{gateway.url}{path}", timeout=30)
            for path in ("/v1/usage?hours=1", "/v1/usage/daily?days=2", "/v1/usage/rollups")
        ]

    rows = asyncio.run(recorded_events(database_url, dataset=dataset))
    assert len(rows) == OPENAI_CLIENT_REQUESTS
    assert sorted(row.request_id for row in rows) == sorted(request_ids)  # each exactly once
    assert {(row.status, row.input_tokens, row.output_tokens, row.total_tokens) for row in rows} == {
        (200, USAGE["prompt_tokens"], USAGE["completion_tokens"], USAGE["total_tokens"])
    }
    streamed = {request_ids[index] for index in range(1, OPENAI_CLIENT_REQUESTS, 2)}
    assert {row.request_id for row in rows if row.is_stream} == streamed

    for response in usage:
        assert response.status_code == 200, response.text
    summary, daily, rollups = (response.json() for response in usage)
    expected = {
        "requests": OPENAI_CLIENT_REQUESTS,
        "errors": 0,
        "input_tokens": OPENAI_CLIENT_REQUESTS * USAGE["prompt_tokens"],
        "output_tokens": OPENAI_CLIENT_REQUESTS * USAGE["completion_tokens"],
        "total_tokens": OPENAI_CLIENT_REQUESTS * USAGE["total_tokens"],
    }
    assert {key: summary["totals"][key] for key in expected} == expected
    assert [(row["type"], row["requests"]) for row in summary["by_type"]] == [
        ("chat", OPENAI_CLIENT_REQUESTS)
    ]
    assert [(row["model"], row["requests"]) for row in summary["top_models"]] == [
        (MODEL, OPENAI_CLIENT_REQUESTS)
    ]
    daily_totals = {key: sum(bucket[key] for bucket in daily["daily"]) for key in expected if key != "errors"}
    assert daily_totals == {key: value for key, value in expected.items() if key != "errors"}
    for rollup in rollups["rollups"]:
        assert {key: rollup["totals"][key] for key in expected} == expected, rollup["window"]


# --- a steady load of anonymous chat requests, for the outage and the SIGTERM -------------------------------


@dataclass(slots=True)
class Answer:
    request_id: str
    sent_at: float
    answered_at: float


@dataclass
class ChatLoad:
    """Workers sending chat requests (no credential, so auth needs no database) until stopped. Only complete
    200 answers count as answered: a JSON body with the usage, or a stream through to `[DONE]`."""

    url: str
    concurrency: int = LOAD_CONCURRENCY
    slow_streams: bool = False
    answered: list[Answer] = field(default_factory=list)
    failures: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _numbers: count[int] = field(default_factory=count)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.concurrency)))

    def answered_between(self, start: float, end: float) -> list[Answer]:
        return [answer for answer in self.answered if start <= answer.answered_at <= end]

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            number = next(self._numbers)
            request_id = f"steady-{uuid.uuid4().hex}"
            model = "slow-stream" if self.slow_streams and number % 4 == 3 else MODEL
            body = {"model": model, "messages": MESSAGES, "stream": number % 2 == 1}
            sent_at = time.monotonic()
            try:
                complete = await self._send(client, body, request_id)
            except httpx.HTTPError:
                complete = False
            if complete:
                self.answered.append(Answer(request_id, sent_at, time.monotonic()))
            else:
                self.failures += 1
                await asyncio.sleep(0.05)  # e.g. a gateway that is shutting down: do not spin

    @staticmethod
    async def _send(client: httpx.AsyncClient, body: dict[str, Any], request_id: str) -> bool:
        headers = {"x-request-id": request_id}
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            content = await response.aread()
        if response.status_code != 200:
            return False
        if body["stream"]:
            return content.rstrip().endswith(b"data: [DONE]")
        return bool(response.json().get("usage") == USAGE)


def gateway_process_env(data_dir: Path, database_url: str, fake_openai_url: str) -> dict[str, str]:
    return clean_env(
        DATA_DIR=str(data_dir),
        DATABASE_URL=database_url,
        OPENAI_API_KEY=UPSTREAM_OPENAI_KEY,
        OPENAI_BASE_URL=f"{fake_openai_url}/v1",
        UPSTREAM_CONNECT_TIMEOUT="2",
        UPSTREAM_READ_TIMEOUT="30",
    )


def plain_url(database_url: str, **changes: Any) -> str:
    return make_url(database_url).set(**changes).render_as_string(hide_password=False)


# --- 2. the database away for 20 seconds ---------------------------------------------------------------------


def test_a_database_outage_under_load_loses_no_event_and_never_stalls_the_requests(
    tmp_path: Path,
    postgres_server: PostgresServer,
    fake_openai_server: tuple[FakeOpenAI, LiveServer],
) -> None:
    database_url = postgres_server.create_database()
    asyncio.run(upgrade(database_url))
    target = make_url(database_url)
    data_dir = tmp_path / "data"

    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        env = gateway_process_env(
            data_dir, plain_url(database_url, host="127.0.0.1", port=proxy.port), fake_openai_server[1].url
        )
        with serving(tmp_path, env=env, log_name="outage.log") as url:
            load = ChatLoad(url)
            cut_at, restored_at, kept_during_outage = asyncio.run(outage_under(load, proxy, data_dir))
            answered = {answer.request_id for answer in load.answered}

            async def replayed() -> bool:  # by the running gateway, not by its shutdown
                rows = await recorded_events(database_url, answered)
                return len({row.request_id for row in rows}) == len(answered) and not journal_segments(
                    data_dir
                )

            replayed_in_time = asyncio.run(poll(replayed, within=REPLAY_WAIT_SECONDS, every=0.5))

    during = sorted(answer.answered_at for answer in load.answered_between(cut_at, restored_at))
    pauses = [
        later - earlier for earlier, later in zip([cut_at, *during], [*during, restored_at], strict=True)
    ]
    print(
        f"outage: {len(answered)} answered, {load.failures} failed, {len(during)} answered during the outage, "
        f"longest pause {max(pauses):.2f} s"
    )
    assert kept_during_outage, "the journal never grew: was the database really away?"
    assert len(during) >= 100, f"only {len(during)} requests answered while the database was away"
    assert max(pauses) < MAX_PAUSE_DURING_OUTAGE_SECONDS, f"requests stalled for {max(pauses):.1f} s"
    assert any(answer.sent_at > restored_at for answer in load.answered), "no load after the restore"

    rows = asyncio.run(recorded_events(database_url, answered))
    missing = answered - {row.request_id for row in rows}
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not recorded"
    assert replayed_in_time, "recorded only at shutdown, not replayed while the gateway ran"
    assert len(rows) == len(answered)  # none twice, though some were both inserted and replayed
    assert {(row.status, row.total_tokens) for row in rows} == {(200, USAGE["total_tokens"])}
    assert journal_segments(data_dir) == []


async def outage_under(load: ChatLoad, proxy: TcpProxy, data_dir: Path) -> tuple[float, float, bool]:
    """Runs `load`; once it is steady, cuts the database away for `OUTAGE_SECONDS`, then restores it, and
    keeps the load on a few seconds more. Returns (cut at, restored at,
    whether the journal kept the rows during the outage)."""
    running = asyncio.create_task(load.run())
    try:

        async def warmed_up() -> bool:
            return len(load.answered) >= 200

        assert await poll(warmed_up, within=30), "the load never got going"
        cut_at = time.monotonic()
        await asyncio.to_thread(proxy.cut)

        async def kept() -> bool:  # a segment sealed at each flush, none deleted
            return len(journal_segments(data_dir)) >= KEPT_SEGMENTS

        kept_during_outage = await poll(kept, within=OUTAGE_SECONDS / 2)
        await asyncio.sleep(max(0.0, cut_at + OUTAGE_SECONDS - time.monotonic()))
        restored_at = time.monotonic()
        await asyncio.to_thread(proxy.restore)
        await asyncio.sleep(3.0)  # and the load goes on after the restore
    finally:
        load.stop()
        await running
    return cut_at, restored_at, kept_during_outage


# --- 3. SIGTERM mid-load ---------------------------------------------------------------------------------


def test_sigterm_mid_load_records_every_answered_request(
    tmp_path: Path,
    postgres_server: PostgresServer,
    fake_openai_server: tuple[FakeOpenAI, LiveServer],
) -> None:
    database_url = postgres_server.create_database()
    data_dir = tmp_path / "data"
    env = gateway_process_env(data_dir, database_url, fake_openai_server[1].url)
    migrated = subprocess.run(
        [GATEWAY, "migrate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr

    with gateway_process(tmp_path, env, log_name="sigterm.log") as gateway:
        load = ChatLoad(gateway.url, concurrency=32, slow_streams=True)
        terminated_at = asyncio.run(terminate_under(load, gateway.process))
    process, log = gateway.process, gateway.log
    output_log = log.read_text()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells what stopped it.
    assert process.returncode in (0, -signal.SIGTERM), output_log
    assert "Application shutdown complete" in output_log
    in_flight = [answer for answer in load.answered if answer.answered_at > terminated_at]
    print(
        f"sigterm: {len(load.answered)} answered ({len(in_flight)} after the signal), {load.failures} failed"
    )
    assert in_flight, "nothing was in flight when the signal came"

    answered = {answer.request_id for answer in load.answered}
    rows = asyncio.run(recorded_events(database_url, answered))  # at once: the process is gone
    missing = answered - {row.request_id for row in rows}
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not recorded"
    assert len(rows) == len(answered)
    assert {(row.status, row.total_tokens) for row in rows} == {(200, USAGE["total_tokens"])}
    assert journal_segments(data_dir) == []


async def terminate_under(load: ChatLoad, process: subprocess.Popen[bytes]) -> float:
    """Runs `load`; once it is steady, sends SIGTERM and keeps the load on until the process has exited.
    Returns when the signal was sent."""
    running = asyncio.create_task(load.run())
    try:

        async def warmed_up() -> bool:
            return len(load.answered) >= 300

        assert await poll(warmed_up, within=30), "the load never got going"
        terminated_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
    finally:
        load.stop()
        await running
    return terminated_at
