"""`gateway serve` stopped by a signal, as a real process: SIGTERM, SIGINT and SIGHUP each drain (requests in flight
finish, one line names the signal) and exit 0, with one worker or two; a request longer than SHUTDOWN_TIMEOUT is
cut; with Postgres partitioned away, the process is still gone within SHUTDOWN_TIMEOUT + 5 s, and every
request it answered is a row once it is started again with the network healed; and a write waiting for SQLite's
lock when the signal comes is finished, not cut."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from gateway.app import JOURNAL_FOLDER
from gateway.db.migrate import upgrade
from gateway.usage.journal import read_rows
from tests.conftest import UPSTREAM_OPENAI_KEY, PostgresServer, usage_rows
from tests.fakes.openai_upstream import FakeOpenAI
from tests.serving import GatewayProcess, LiveServer, clean_env, gateway_process
from tests.tcp_proxy import TcpProxy

SHUTDOWN_TIMEOUT = 3.0
EXIT_BOUND = SHUTDOWN_TIMEOUT + 5.0  # what the process is promised, whatever the database does
MESSAGES = [{"role": "user", "content": "Say hello"}]


def gateway_env(data_dir: Path, fake_openai_url: str, **variables: str) -> dict[str, str]:
    return clean_env(
        DATA_DIR=str(data_dir),
        OPENAI_API_KEY=UPSTREAM_OPENAI_KEY,
        OPENAI_BASE_URL=f"{fake_openai_url}/v1",
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        **variables,
    )


@dataclass
class Load:
    """Anonymous chat requests (no database on their path) from a few clients until the gateway goes away;
    `model` "slow-stream" takes ~1.2 s, so some are always in flight."""

    url: str
    model: str = "slow-stream"
    clients: int = 4
    answered: list[tuple[str, float]] = field(default_factory=list)  # (request id, when)
    cut: int = 0

    async def run(self, until: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            await asyncio.gather(*(self._client(client, until) for _ in range(self.clients)))

    async def _client(self, client: httpx.AsyncClient, until: asyncio.Event) -> None:
        while not until.is_set():
            request_id = f"drain-{uuid.uuid4().hex}"
            body = {"model": self.model, "messages": MESSAGES, "stream": True}
            try:
                async with client.stream(
                    "POST", "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
                ) as response:
                    content = await response.aread()
                if response.status_code == 200 and content.rstrip().endswith(b"data: [DONE]"):
                    self.answered.append((request_id, time.monotonic()))
                    continue
            except httpx.HTTPError:
                self.cut += 1
            await asyncio.sleep(0.05)  # refused or cut: the gateway is going away


async def signal_under_load(gateway: GatewayProcess, load: Load, sig: signal.Signals) -> tuple[float, float]:
    """Runs `load`, sends `sig` once requests flow, keeps the load on until the process exits; returns (when the
    signal was sent, how long the exit took)."""
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    try:
        deadline = time.monotonic() + 20
        while len(load.answered) < 4:
            assert time.monotonic() < deadline, "the load never got going"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # mid-stream
        sent_at = time.monotonic()
        took = await asyncio.to_thread(gateway.stop, sig)
    finally:
        stop.set()
        await running
    return sent_at, took


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda sig: sig.name)
def test_a_signal_under_load_drains_and_exits_0(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer], sig: signal.Signals, workers: str
) -> None:
    env = gateway_env(tmp_path / "data", fake_openai_server[1].url)
    with gateway_process(tmp_path, env, "--workers", workers) as gateway:
        load = Load(gateway.url)
        sent_at, took = asyncio.run(signal_under_load(gateway, load, sig))

    log = gateway.log.read_text()
    assert gateway.process.returncode == 0, log
    assert f"{sig.name} received: draining" in log
    assert took < EXIT_BOUND, f"{took:.1f} s"
    finished_after = [answered for answered in load.answered if answered[1] > sent_at]
    assert finished_after, "no request in flight finished after the signal: nothing drained"
    assert "Traceback" not in log, log
    # Every answered request is a row, in the database or, where the drain did not get to it, in the journal.
    answered = {request_id for request_id, _ in load.answered}
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'gateway.db'}"
    journaled = {
        row["request_id"]
        for segment in (tmp_path / "data" / JOURNAL_FOLDER).glob("*.jsonl")
        for row in read_rows(segment)
    }
    missing = answered - asyncio.run(usage_rows(database_url, answered)) - journaled
    assert not missing, f"{len(missing)} of {len(answered)} answered requests are neither rows nor journaled"


def test_a_request_longer_than_shutdown_timeout_is_cut_and_the_process_exits_in_time(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    env = gateway_env(tmp_path / "data", fake_openai_server[1].url)
    with gateway_process(tmp_path, env) as gateway:
        load = Load(gateway.url, model="endless-stream", clients=2)
        _, took = asyncio.run(signal_under_load_endless(gateway, load))

    log = gateway.log.read_text()
    assert gateway.process.returncode == 0, log
    assert SHUTDOWN_TIMEOUT - 0.5 < took < EXIT_BOUND, f"{took:.1f} s"
    assert load.cut == 2 and not load.answered  # each endless stream was cut, none ended as if complete


async def signal_under_load_endless(gateway: GatewayProcess, load: Load) -> tuple[float, float]:
    stop = asyncio.Event()
    stop_after_cut = asyncio.create_task(load.run(stop))
    await asyncio.sleep(1.5)  # both streams flowing
    stop.set()  # each client sends no second request once cut
    sent_at = time.monotonic()
    took = await asyncio.to_thread(gateway.stop, signal.SIGTERM)
    await stop_after_cut
    return sent_at, took


# --- SIGTERM with Postgres partitioned away ---------------------------------------------------------------------


def test_sigterm_during_a_partition_exits_in_time_and_loses_no_answered_request(
    tmp_path: Path, postgres_server: PostgresServer, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    database_url = postgres_server.create_database()
    asyncio.run(upgrade(database_url))
    target = make_url(database_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        proxied = make_url(database_url).set(drivername="postgresql", host="127.0.0.1", port=proxy.port)
        env = gateway_env(
            tmp_path / "data",
            fake_openai_server[1].url,
            DATABASE_URL=proxied.render_as_string(hide_password=False),
        )
        with gateway_process(tmp_path, env) as gateway:
            load = Load(gateway.url, model="gpt-4o-mini", clients=4)
            took = asyncio.run(partition_then_sigterm(gateway, load, proxy))
        log = gateway.log.read_text()
        assert took < EXIT_BOUND, f"exited {took:.1f} s after SIGTERM:\n{log}"
        assert gateway.process.returncode == 0, log
        assert "Traceback" not in log and "Application shutdown failed" not in log, log

        proxy.heal()
        answered = {request_id for request_id, _ in load.answered}
        assert answered
        with gateway_process(tmp_path, env, log_name="restart.log"):  # replays what the journal kept
            deadline = time.monotonic() + 30
            while (missing := answered - asyncio.run(usage_rows(database_url, answered))) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.5)

    assert not missing, f"{len(missing)} of {len(answered)} answered requests are not rows"


async def partition_then_sigterm(gateway: GatewayProcess, load: Load, proxy: TcpProxy) -> float:
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    try:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(proxy.partition)
        await asyncio.sleep(2.0)  # rows pile up for a writer that waits on a silent network
        took = await asyncio.to_thread(gateway.stop, signal.SIGTERM)
    finally:
        stop.set()
        await running
    return took


# --- SIGTERM while another process holds SQLite's write lock ---------------------------------------------------


def test_sigterm_while_sqlite_is_locked_a_moment_finishes_every_write_cleanly(
    tmp_path: Path, fake_openai_server: tuple[FakeOpenAI, LiveServer]
) -> None:
    """A write under way when the signal comes is finished, not cut: a cut one left its transaction open, and so
    SQLite's write lock held, until the connection was collected, and the drain behind it gave up."""
    env = gateway_env(tmp_path / "data", fake_openai_server[1].url, ACCESS_LOG="0")
    database = tmp_path / "data" / "gateway.db"
    with gateway_process(tmp_path, env) as gateway:
        load = Load(gateway.url, model="gpt-4o-mini", clients=4)
        took = asyncio.run(lock_then_sigterm(gateway, load, database, hold=1.5))

    log = gateway.log.read_text()
    assert gateway.process.returncode == 0, log
    assert took < EXIT_BOUND, f"{took:.1f} s"
    for trouble in ("Traceback", "left behind", "did not end", "failed", "rolled back"):
        assert trouble not in log, log
    answered = {request_id for request_id, _ in load.answered}
    database_url = f"sqlite+aiosqlite:///{database}"
    missing = answered - asyncio.run(usage_rows(database_url, answered))
    assert answered and not missing, f"{len(missing)} of {len(answered)} answered requests are not rows"


async def lock_then_sigterm(gateway: GatewayProcess, load: Load, database: Path, *, hold: float) -> float:
    """Load, then another connection takes the database's write lock for `hold` seconds (writes queue behind it),
    and SIGTERM comes while they wait."""
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    blocker = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.sleep(1.5)
        blocker.execute("BEGIN IMMEDIATE")
        released = asyncio.get_running_loop().call_later(hold, blocker.execute, "ROLLBACK")
        await asyncio.sleep(0.6)  # a flush (every 0.5 s) is waiting for the lock
        stop.set()
        took = await asyncio.to_thread(gateway.stop, signal.SIGTERM)
        released.cancel()
    finally:
        stop.set()
        await running
        blocker.close()
    return took
