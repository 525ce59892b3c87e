"""The soak (`make soak`): ten minutes of mixed load on `gateway serve` in production, through one database outage
and one SIGTERM, and at the end every answered request counted against the usage rows in Postgres.

What runs: the gateway on a Postgres database of the run's own (created, migrated, dropped at the end), reached
through a TCP relay the run controls (tests/tcp_proxy.py); the tests' fake OpenAI and Mistral OCR upstreams
(bench/soak_upstream.py); a real `chroma run` (tests/chroma_server.py). A few clients send a mix of chat
completions (plain, streamed, and streams abandoned after their first chunks), OCR, Chroma (create collection,
add, query) and usage reads, each request with an `X-Request-ID` of its own; beside them a token churn creates an
API token, uses it, revokes it and checks that it is refused (401) within one second. About a third in, the relay
is cut (connections refused and dropped) for 20 s, then restored; about two thirds in, the gateway gets SIGTERM,
drains, and a new one is started on the same port and data directory.

At the end the gateway is stopped cleanly and the usage rows are matched to the requests by request id: every
proxied request answered (a response other than 401, 403 or 503) must have exactly one row, and no row may be
for a request the run did not send. Errors inside a fault's window (until `--grace` seconds after it ended) that a
fault explains (503 while the database is cut; no answer or 503 while the gateway restarts) are listed apart;
any other error is unexpected. The exit status is 1 on an unexpected error or a ledger mismatch. Progress goes
to stderr, the report (markdown, for docs/BENCHMARKS.md) to stdout.

    python bench/soak.py                 # ten minutes (SOAK_SECONDS or --seconds to change)
    SOAK_SECONDS=90 python bench/soak.py # a check of the harness: the faults scale with the run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from processes import Children, free_port, memory_kib
from run import gateway_source, stop_on_signals
from targets import BENCH_USER, BenchDatabase, GatewaySetup, gateway_command, prepare_gateway

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chroma_server import chroma_server  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402

# What the clients send, by weight.
MIX = {
    "chat": 30,
    "chat-stream": 28,
    "chat-abandoned": 5,
    "ocr": 12,
    "chroma-add": 9,
    "chroma-query": 9,
    "chroma-create": 2,
    "usage": 3,
    "usage-daily": 2,
}
# Routes whose every answered request is a usage row (the token churn's chat requests among them).
PROXIED = {"chat", "chat-stream", "chat-abandoned", "ocr", "chroma-add", "chroma-query", "chroma-create"}
PROXIED |= {"chroma-setup", "token-use", "token-revoked-use"}
# Statuses that leave no row, or may not: refused by auth, or unavailable (auth, usage, shutting down).
NO_ROW_STATUSES = {"401", "403", "503"}
# What each fault explains, inside its window: the database away is a 503 (the routes that need it); the gateway
# away is no connection, or a 503 while it stops. An upstream's 502 or 504 is never the faults' doing.
OUTAGE_EXPLAINS = frozenset({"503"})
RESTART_EXPLAINS = frozenset({"503", "transport"})
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
OCR = {
    "model": "mistral-ocr-latest",
    "document": {"type": "document_url", "document_url": "https://x.test/a.pdf"},
}
CHROMA = "/v1/chroma/api/v2/tenants/default_tenant/databases"
CHROMA_DATABASE = "soak"
CHROMA_COLLECTIONS = 8
REVOCATION_SECONDS = 1.0
HEALTH_TIMEOUT = 60.0
DONE = b"data: [DONE]\n\n"


@dataclass
class Sample:
    """One request: what it was, when it began (seconds into the load), how long it took, how it ended."""

    kind: str
    began: float
    seconds: float
    outcome: str  # the status ("200") or the transport error's name ("ConnectError")
    request_id: str
    ok: bool
    responded: bool  # the response's head arrived

    @property
    def ended(self) -> float:
        return self.began + self.seconds


@dataclass
class Fault:
    name: str
    explains: frozenset[str]  # statuses, and "transport" for a request that got no answer
    start: float
    end: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Memory:
    moment: str
    pid: int
    rss_kib: int
    hwm_kib: int


class GatewayProcess:
    """`gateway serve` on a fixed port and data directory; restarted in place, with a log per process."""

    def __init__(self, children: Children, env: dict[str, str], port: int) -> None:
        self.children = children
        self.env = env
        self.port = port
        self.generation = 0
        self.name = ""

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.children.procs[self.name]

    def start(self) -> None:
        self.generation += 1
        self.name = f"gateway-{self.generation}"
        argv = [*gateway_command(), "serve", "--port", str(self.port)]
        self.children.start(self.name, argv, cpu=None, env=self.env)

    async def wait_ready(self, http: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise SystemExit(f"soak: {self.name} did not start:\n{self.children.log_tail(self.name)}")

    async def terminate(self, within: float) -> tuple[int | None, float]:
        """SIGTERM, then wait up to `within` s for the exit; (exit status or None if it had to be killed, s)."""
        proc = self.proc
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(proc.wait, within)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
            code = None
        del self.children.procs[self.name]
        return code, time.monotonic() - began

    def memory(self, moment: str) -> Memory:
        found = memory_kib(self.proc.pid)
        return Memory(moment, self.proc.pid, found.get("VmRSS", 0), found.get("VmHWM", 0))


class Soak:
    """The load, the faults and what was seen."""

    def __init__(
        self, args: argparse.Namespace, gateway: GatewayProcess, proxy: TcpProxy, setup: GatewaySetup
    ) -> None:
        self.args = args
        self.gateway = gateway
        self.proxy = proxy
        self.setup = setup
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway.port}",
            timeout=30.0,
            limits=httpx.Limits(max_connections=args.clients + 4),
        )
        self.t0 = time.monotonic()
        self.samples: list[Sample] = []
        self.faults: list[Fault] = []
        self.memory: list[Memory] = []
        self.revocations: list[float] = []
        self.revocations_unchecked = 0
        self.collections: list[str] = []
        self.api_token = ""
        self.jwt = ""
        self.stopping = asyncio.Event()
        self.metrics: dict[str, float] = {}
        self.metrics_note = ""

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- requests -----------------------------------------------------------------------------------------

    async def call(
        self, kind: str, method: str, path: str, *, token: str, json: Any = None, ok: tuple[int, ...] = (200,)
    ) -> tuple[Sample, httpx.Response | None]:
        request_id = f"soak-{uuid.uuid4().hex}"
        headers = {"x-request-id": request_id} | ({"authorization": f"Bearer {token}"} if token else {})
        began = self.now()
        response: httpx.Response | None = None
        try:
            response = await self.http.request(method, path, json=json, headers=headers)
            outcome = str(response.status_code)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        good = response is not None and response.status_code in ok
        sample = Sample(kind, began, self.now() - began, outcome, request_id, good, response is not None)
        self.samples.append(sample)
        return sample, response

    async def stream(self, kind: str, *, abandon: bool) -> None:
        """A streamed chat completion read to `[DONE]`, or (`abandon`) dropped after its first two chunks."""
        request_id = f"soak-{uuid.uuid4().hex}"
        headers = {"authorization": f"Bearer {self.api_token}", "x-request-id": request_id}
        body = {**CHAT, "stream": True, **({"model": "endless-stream"} if abandon else {})}
        began = self.now()
        responded, good, outcome = False, False, ""
        try:
            async with self.http.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers
            ) as response:
                responded, outcome = True, str(response.status_code)
                received, chunks = b"", 0
                async for piece in response.aiter_raw():
                    received, chunks = received[-64:] + piece, chunks + 1
                    if abandon and chunks >= 2:
                        break  # leaving the block closes the connection mid-stream
                good = response.status_code == 200 and (chunks >= 2 if abandon else received.endswith(DONE))
                if response.status_code == 200 and not good:
                    outcome = "200 incomplete"
        except httpx.HTTPError as exc:
            outcome = f"{outcome} then {type(exc).__name__}" if responded else type(exc).__name__
        self.samples.append(Sample(kind, began, self.now() - began, outcome, request_id, good, responded))

    async def one(self, kind: str) -> None:
        token = self.api_token
        if kind == "chat":
            await self.call(kind, "POST", "/v1/chat/completions", token=token, json=CHAT)
        elif kind in ("chat-stream", "chat-abandoned"):
            await self.stream(kind, abandon=kind == "chat-abandoned")
        elif kind == "ocr":
            await self.call(kind, "POST", "/v1/ocr", token=token, json=OCR)
        elif kind == "chroma-create":
            await self.create_collection(kind, f"soak-{random.randrange(CHROMA_COLLECTIONS)}")
        elif kind == "chroma-add":
            await self.chroma_add(kind, random.choice(self.collections))
        elif kind == "chroma-query":
            body = {"query_embeddings": [embedding()], "n_results": 3}
            path = f"{CHROMA}/{CHROMA_DATABASE}/collections/{random.choice(self.collections)}/query"
            await self.call(kind, "POST", path, token=token, json=body)
        elif kind == "usage":
            await self.call(kind, "GET", "/v1/usage?hours=1", token=token)
        elif kind == "usage-daily":
            await self.call(kind, "GET", "/v1/usage/daily?days=2", token=token)

    async def create_collection(self, kind: str, name: str) -> None:
        path = f"{CHROMA}/{CHROMA_DATABASE}/collections"
        _, response = await self.call(
            kind, "POST", path, token=self.api_token, json={"name": name, "get_or_create": True}
        )
        if response is not None and response.status_code == 200:
            collection = response.json()["id"]
            if collection not in self.collections:
                self.collections.append(collection)
                await self.chroma_add("chroma-add", collection)  # a query never meets an empty collection

    async def chroma_add(self, kind: str, collection: str) -> None:
        ids = [uuid.uuid4().hex for _ in range(3)]
        body = {"ids": ids, "embeddings": [embedding() for _ in ids], "documents": [f"doc {i}" for i in ids]}
        path = f"{CHROMA}/{CHROMA_DATABASE}/collections/{collection}/add"
        await self.call(kind, "POST", path, token=self.api_token, json=body, ok=(200, 201))

    # --- the run ------------------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Log in, make the load's API token, and the Chroma database and first collection."""
        await self.login()
        scopes = ["chat", "ocr", "chroma", "usage:read"]
        created, response = await self.call(
            "token-create", "POST", "/v1/api-tokens", token=self.jwt, json={"name": "soak", "scopes": scopes},
            ok=(201,),
        )  # fmt: skip
        if response is None or response.status_code != 201:
            raise SystemExit(
                f"soak: could not create the load's API token: {created.outcome} {response and response.text}"
            )
        self.api_token = response.json()["token"]
        _, response = await self.call(
            "chroma-setup", "POST", CHROMA, token=self.api_token, json={"name": CHROMA_DATABASE}
        )
        if response is None or response.status_code not in (200, 409):
            raise SystemExit(f"soak: could not create the Chroma database: {response and response.text}")
        await self.create_collection("chroma-create", "soak-0")
        if not self.collections:
            raise SystemExit("soak: could not create a Chroma collection")

    async def login(self) -> None:
        body = {"email": BENCH_USER, "password": self.setup.password}
        login, response = await self.call("login", "POST", "/api/v1/auth/login", token="", json=body)
        if response is not None and response.status_code == 200:
            self.jwt = response.json()["access_token"]
        elif not self.jwt:
            raise SystemExit(f"soak: could not log in: {login.outcome} {response and response.text}")

    async def run(self) -> None:
        """The load from now on; the setup's requests are given negative times (and left out of the tables)."""
        shift = self.now()
        self.t0 += shift
        for sample in self.samples:
            sample.began -= shift
        self.record_memory("start (just ready)")
        tasks = [asyncio.create_task(self.client(i)) for i in range(self.args.clients)]
        tasks += [asyncio.create_task(self.churn()), asyncio.create_task(self.watch_memory())]
        try:
            await self.faults_on_schedule()
            await self.sleep_until(self.args.seconds)
        finally:
            self.stopping.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.record_memory("end (the new process, before its clean stop)")

    async def client(self, index: int) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        chooser = random.Random(index)
        while not self.stopping.is_set():
            await self.one(chooser.choices(kinds, weights)[0])
            await asyncio.sleep(self.args.pause)

    async def churn(self) -> None:
        """Create an API token, use it, revoke it, and use it until refused: 401 within a second."""
        number = 0
        while not self.stopping.is_set():
            number += 1
            await self.churn_once(number)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.args.churn_every)

    async def churn_once(self, number: int) -> None:
        body = {"name": f"churn-{number}", "scopes": ["chat"]}
        created, response = await self.call(
            "token-create", "POST", "/v1/api-tokens", token=self.jwt, json=body, ok=(201,)
        )
        if created.outcome == "401":
            await self.login()
        if response is None or response.status_code != 201:
            return
        token, token_id = response.json()["token"], response.json()["id"]
        await self.call("token-use", "POST", "/v1/chat/completions", token=token, json=CHAT)
        revoked, _ = await self.call(
            "token-revoke", "DELETE", f"/v1/api-tokens/{token_id}", token=self.jwt, ok=(204,)
        )
        if not revoked.ok:
            return
        revoked_at = revoked.ended
        while True:
            use, _ = await self.call(
                "token-revoked-use", "POST", "/v1/chat/completions", token=token, json=CHAT, ok=(401,)
            )
            late = use.ended - revoked_at > REVOCATION_SECONDS
            if use.ok:
                self.revocations.append(use.ended - revoked_at)
                return
            if use.outcome == "200":
                use.ok = not late  # accepted before the revocation arrived: allowed for one second
                use.outcome = "200 after revocation" if late else use.outcome
            if late:
                self.revocations_unchecked += use.outcome != "200 after revocation"
                return
            await asyncio.sleep(0.05)

    async def faults_on_schedule(self) -> None:
        args = self.args
        await self.sleep_until(args.outage_at)
        outage = Fault("database outage", OUTAGE_EXPLAINS, self.now())
        self.faults.append(outage)
        dropped = self.proxy.cut()
        print(f"soak: {outage.start:6.1f} s  database cut ({dropped} connections dropped)", file=sys.stderr)
        outage.notes.append(f"{dropped} open connections dropped")
        await self.sleep_until(outage.start + args.outage_seconds)
        self.proxy.restore()
        outage.end = self.now()
        print(f"soak: {outage.end:6.1f} s  database restored", file=sys.stderr)

        await self.sleep_until(args.sigterm_at)
        self.record_memory("before SIGTERM")
        restart = Fault("SIGTERM and restart", RESTART_EXPLAINS, self.now())
        self.faults.append(restart)
        print(f"soak: {restart.start:6.1f} s  SIGTERM to the gateway", file=sys.stderr)
        code, drained = await self.gateway.terminate(args.shutdown_timeout + 5)
        restart.notes.append(
            f"exited {drained:.1f} s after SIGTERM, status {code}"
            if code is not None
            else f"still running {drained:.0f} s after SIGTERM: killed (SIGKILL)"
        )
        if code is None:
            self.samples.append(Sample("shutdown", restart.start, drained, "killed", "", False, False))
        self.gateway.start()
        await self.gateway.wait_ready(self.http)
        restart.end = self.now()
        restart.notes.append(f"the new process answered {restart.end - restart.start:.1f} s after SIGTERM")
        print(f"soak: {restart.end:6.1f} s  new gateway ready", file=sys.stderr)
        self.record_memory("after the restart (new process)")

    async def sleep_until(self, moment: float) -> None:
        while (left := moment - self.now()) > 0:
            if self.gateway.proc.poll() is not None:
                raise SystemExit(
                    f"soak: the gateway exited with {self.gateway.proc.returncode}:\n"
                    + self.gateway.children.log_tail(self.gateway.name)
                )
            await asyncio.sleep(min(left, 1.0))

    async def watch_memory(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 10.0)
            if self.gateway.name in self.gateway.children.procs:
                self.record_memory("sample")

    def record_memory(self, moment: str) -> None:
        with contextlib.suppress(KeyError, OSError):
            self.memory.append(self.gateway.memory(moment))

    async def scrape_metrics(self) -> None:
        """A few of /metrics' figures, when the gateway serves it (it is not required)."""
        try:
            response = await self.http.get("/metrics")
        except httpx.HTTPError as exc:
            self.metrics_note = f"/metrics: {type(exc).__name__}"
            return
        if response.status_code != 200:
            self.metrics_note = f"/metrics answered {response.status_code}"
            return
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                name = sample.name
                if "usage" in name and any(w in name for w in ("written", "dropped", "journal", "queue")):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    self.metrics[f"{name}{{{labels}}}" if labels else name] = sample.value


def embedding() -> list[float]:
    return [random.random() for _ in range(3)]


# --- the ledger ---------------------------------------------------------------------------------------------


@dataclass
class Ledger:
    answered: int  # proxied requests answered (rows expected)
    rows: int
    missing: int  # answered without a row
    strangers: int  # rows for no request the run sent
    duplicates: int
    unsure_recorded: int  # rows for requests refused with 503 or whose answer the client never saw
    unsure: int
    journal: list[str]

    @property
    def holds(self) -> bool:
        return not (self.missing or self.strangers or self.duplicates)


async def read_ledger(database_url: str, samples: list[Sample], data_dir: Path) -> Ledger:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT request_id FROM usage_events")
    finally:
        await connection.close()
    recorded = Counter(row["request_id"] for row in rows)
    proxied = [s for s in samples if s.kind in PROXIED]
    expected = {s.request_id for s in proxied if s.responded and s.outcome.split()[0] not in NO_ROW_STATUSES}
    unsure = {s.request_id for s in proxied} - expected
    journal = await asyncio.to_thread(leftovers, data_dir)
    return Ledger(
        answered=len(expected),
        rows=len(rows),
        missing=len(expected - recorded.keys()),
        strangers=len(recorded.keys() - expected - unsure),
        duplicates=sum(n - 1 for n in recorded.values()),
        unsure_recorded=len(unsure & recorded.keys()),
        unsure=len(unsure),
        journal=journal,
    )


def leftovers(data_dir: Path) -> list[str]:
    """The usage journal's (or spill's) non-empty files left in the data directory, with their sizes."""
    return [
        f"{path.relative_to(data_dir)} ({path.stat().st_size} bytes)"
        for path in sorted(data_dir.rglob("*"))
        if path.is_file() and path.stat().st_size and any(w in str(path) for w in ("journal", "spill"))
    ]


# --- the report ---------------------------------------------------------------------------------------------


def explained(sample: Sample, faults: list[Fault], grace: float) -> bool:
    """Whether a fault explains this error: it overlapped the fault's window and is what the fault causes."""
    if sample.kind == "shutdown":
        return False
    outcome = "transport" if not sample.responded else sample.outcome
    return any(
        outcome in f.explains
        and sample.began <= (f.end if f.end is not None else float("inf")) + grace
        and sample.ended >= f.start
        for f in faults
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def report(
    soak: Soak, ledger: Ledger | None, args: argparse.Namespace, stop_note: str
) -> tuple[list[str], bool]:
    """The markdown report, and whether the run passed."""
    samples = [s for s in soak.samples if s.began >= 0]
    errors = [s for s in samples if not s.ok]
    expected = [s for s in errors if explained(s, soak.faults, args.grace)]
    unexpected = [s for s in errors if not explained(s, soak.faults, args.grace)]
    lines = [
        f"Soak of {args.seconds:g} s, {args.clients} clients (pause {args.pause * 1000:g} ms between requests), "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {gateway_source()}.",
        "",
        "| kind | requests | ok | errors (fault) | errors (unexpected) | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_kind[sample.kind].append(sample)
    for kind, group in sorted(by_kind.items(), key=lambda item: -len(item[1])):
        good = [s.seconds * 1000 for s in group if s.ok]
        p50, p99 = (f"{percentile(good, q):.1f}".replace("nan", "-") for q in (0.5, 0.99))
        lines.append(
            f"| {kind} | {len(group)} | {len(good)} | {sum(s in expected for s in group)} | "
            f"{sum(s in unexpected for s in group)} | {p50} | {p99} |"
        )
    lines.append(
        f"| all | {len(samples)} | {len(samples) - len(errors)} | {len(expected)} | {len(unexpected)} | | |"
    )
    seconds = max((s.ended for s in samples), default=0.0)
    lines += ["", f"{len(samples) / seconds if seconds else 0:.0f} requests/s on average.", ""]
    for title, group in (("Errors a fault explains", expected), ("Unexpected errors", unexpected)):
        counted = Counter((s.kind, s.outcome) for s in group)
        lines.append(f"{title}:" if counted else f"{title}: none.")
        if counted:
            lines += ["", "| kind | outcome | count | first at (s) |", "|---|---|---:|---:|"]
            for (kind, outcome), n in counted.most_common():
                first = min(s.began for s in group if (s.kind, s.outcome) == (kind, outcome))
                lines.append(f"| {kind} | {outcome} | {n} | {first:.1f} |")
        lines.append("")
    lines += ["| fault | from (s) | to (s) | what happened |", "|---|---:|---:|---|"]
    for fault in soak.faults:
        end = fault.end if fault.end is not None else float("inf")
        served = sum(s.ok and s.kind in PROXIED and fault.start <= s.began <= end for s in samples)
        notes = [*fault.notes, f"{served} proxied requests answered meanwhile"]
        lines.append(f"| {fault.name} | {fault.start:.1f} | {end:.1f} | {'; '.join(notes)} |")
    revocations = soak.revocations
    lines += [
        "",
        f"Token churn: {len(revocations)} tokens revoked and then refused with 401, "
        f"{percentile(revocations, 0.5) * 1000:.0f} ms after the revocation (p50), "
        f"{max(revocations, default=float('nan')) * 1000:.0f} ms at most"
        + (
            f"; {soak.revocations_unchecked} not checked (no answer during a fault)"
            if soak.revocations_unchecked
            else ""
        )
        + ".",
        "",
        "| gateway memory | pid | RSS MB | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for memory in soak.memory:
        if memory.moment != "sample":
            rss, hwm = memory.rss_kib / 1024, memory.hwm_kib / 1024
            lines.append(f"| {memory.moment} | {memory.pid} | {rss:.0f} | {hwm:.0f} |")
    for pid in dict.fromkeys(m.pid for m in soak.memory):
        # The peak above includes start-up's; the highest RSS sampled (every 10 s) under load shows any growth.
        highest = max(m.rss_kib for m in soak.memory if m.pid == pid) / 1024
        lines.append(f"| highest sampled under load (every 10 s) | {pid} | {highest:.0f} | |")
    lines.append("")
    if ledger is None:
        lines.append("Usage rows: not counted (the run did not get that far).")
    else:
        lines += [
            f"Usage rows: {ledger.answered} proxied requests answered (every one but 401, 403 and 503), "
            f"{ledger.rows} rows in `usage_events` after the clean stop ({stop_note}); "
            f"{ledger.missing} answered requests without a row, {ledger.duplicates} duplicates, "
            f"{ledger.strangers} rows for requests the run never sent; {ledger.unsure_recorded} of the rows are "
            f"for the {ledger.unsure} requests refused with 503 or whose answer the client never saw "
            f"(recorded or not, either is right). "
            + ("Left in the data directory: " + ", ".join(ledger.journal) + "." if ledger.journal else ""),
        ]
    if soak.metrics or soak.metrics_note:
        lines += ["", f"/metrics at the end (the new process's, since its start): {soak.metrics_note}"]
        lines += [f"- `{name}` {value:g}" for name, value in sorted(soak.metrics.items())]
    passed = not unexpected and ledger is not None and ledger.holds
    passed = passed and ledger is not None and ledger.rows == ledger.answered + ledger.unsure_recorded
    why = [f"{len(unexpected)} unexpected errors"] if unexpected else []
    why += (
        [] if ledger is not None and ledger.holds else ["the usage rows do not match the answered requests"]
    )
    lines += ["", f"Verdict: {'PASS' if passed else 'FAIL (' + ', '.join(why) + ')'}."]
    return lines, passed


# --- setting up -----------------------------------------------------------------------------------------------


def via(url: str, port: int) -> str:
    """`url` with its host and port replaced by the relay's."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"))


async def soak_run(
    args: argparse.Namespace, children: Children, database: BenchDatabase, chroma_url: str, workdir: Path
) -> tuple[list[str], bool]:
    upstream_port = free_port()
    children.start(
        "upstreams",
        [sys.executable, str(Path(__file__).parent / "soak_upstream.py"), "--port", str(upstream_port)],
        cpu=None,
    )
    upstream = f"http://127.0.0.1:{upstream_port}"
    setup = await asyncio.to_thread(prepare_gateway, database, upstream, workdir)
    target = urlsplit(database.url)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        env = {
            **setup.env,
            "DATABASE_URL": via(database.url, proxy.port),
            "MISTRAL_API_KEY": "sk-soak",
            "CHROMA_BASE_URL": chroma_url,
            "CHROMA_API_KEY": "chroma-soak",
            "SHUTDOWN_TIMEOUT": str(args.shutdown_timeout),
        }
        gateway = GatewayProcess(children, env, free_port())
        gateway.start()
        soak = Soak(args, gateway, proxy, setup)
        ledger: Ledger | None = None
        stop_note = ""
        try:
            await gateway.wait_ready(soak.http)
            await soak.prepare()
            print(f"soak: load for {args.seconds:g} s ({args.clients} clients)", file=sys.stderr)
            await soak.run()
            await soak.scrape_metrics()
            code, drained = await gateway.terminate(args.shutdown_timeout + 5)
            stop_note = (
                f"exited {drained:.1f} s after SIGTERM, status {code}" if code is not None else "killed"
            )
            if code is None:
                soak.samples.append(Sample("shutdown", soak.now(), drained, "killed", "", False, False))
            ledger = await read_ledger(database.url, soak.samples, Path(setup.env["DATA_DIR"]))
        finally:
            await soak.http.aclose()
        return report(soak, ledger, args, stop_note)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS", 600)),
        help="seconds of load (default SOAK_SECONDS or 600); the faults are placed in proportion",
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument(
        "--pause", type=float, default=0.02, help="seconds each client waits between requests"
    )
    parser.add_argument(
        "--outage-seconds",
        type=float,
        default=None,
        help="how long the database is cut (default 20, at most a fifth of the run)",
    )
    parser.add_argument("--churn-every", type=float, default=3.0, help="seconds between two token churns")
    parser.add_argument("--shutdown-timeout", type=int, default=30, help="the gateway's SHUTDOWN_TIMEOUT")
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds after a fault ends in which its errors are still its",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.seconds < 30 or args.clients < 1 or args.pause < 0:
        parser.error("--seconds must be at least 30, --clients positive, --pause not negative")
    args.outage_seconds = (
        args.outage_seconds if args.outage_seconds is not None else min(20.0, args.seconds / 5)
    )
    args.outage_at = args.seconds * 0.3
    args.sigterm_at = args.seconds * 0.65
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    database = BenchDatabase()
    database.name = f"gateway_soak_{uuid.uuid4().hex[:12]}"
    with stop_on_signals(), tempfile.TemporaryDirectory(prefix="gateway-soak-") as tmp:
        workdir = Path(tmp)
        (workdir / "chroma").mkdir()
        children = Children(workdir, None)
        try:
            with chroma_server(workdir / "chroma") as chroma_url:
                lines, passed = asyncio.run(soak_run(args, children, database, chroma_url, workdir))
        except (Exception, SystemExit):
            for name in list(children.logs):
                print(f"--- {name} (last lines)\n{children.log_tail(name)}", file=sys.stderr)
            raise
        finally:
            children.close()
            database.drop()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nsoak: interrupted; every process stopped and the database dropped.", file=sys.stderr)
        sys.exit(130)
