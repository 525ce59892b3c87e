"""What the benchmark measures: the fake upstream, nginx, LiteLLM's proxy, the pass-through and the gateway.

Each `start_*` starts one target as a pinned child of the run and returns it once it answers a chat completion;
those that cannot run here (no nginx, no LiteLLM virtualenv) return a note saying why instead. The gateway runs
in its production configuration: a Postgres database of its own (migrated with `gateway migrate`, dropped at
the end), `API_AUTH_REQUIRED=1`, and a real API token made through its own login and token routes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import orjson
from processes import Children, free_port, http_post, wait_until

BENCH = Path(__file__).resolve().parent
CHAT_PATH = "/v1/chat/completions"
BENCH_USER = "bench@example.com"
PROBE_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"ping"}]}'
POSTGRES_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
LITELLM_VENV = BENCH / ".venv-litellm"
# Pinned exactly: 1.82.7, 1.82.8 (litellm) and 1.107.0 (openai) were published compromised; never those.
LITELLM_REQUIREMENTS = ("litellm[proxy]==1.76.3", "openai==1.106.1")
# The only variables the gateway inherits: its settings are all set by the run, so that a developer's shell
# (or a setting added later) cannot change the figures.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH")


@dataclass
class Target:
    """One thing to load: where its chat completions are, what to send along, which process it is."""

    name: str
    url: str
    pid: int
    headers: dict[str, str] = field(default_factory=dict)
    version: str = ""


def wait_for_chat(
    children: Children, target: Target, *, timeout: float = 90.0, process: str | None = None
) -> None:
    """Until `target` answers a chat completion; `process` is the child serving it, when not named as it."""

    def answered() -> str | None:
        try:
            status, body = http_post(target.url, PROBE_BODY, target.headers, timeout=2.0)
        except OSError as exc:
            return type(exc).__name__
        return None if status == 200 and b'"usage"' in body else f"HTTP {status}: {body[:200]!r}"

    wait_until(children, process or target.name, answered, timeout=timeout)


def start_upstream(children: Children, cpu: int | None) -> Target:
    port = free_port()
    proc = children.start(
        "direct", [sys.executable, str(BENCH / "fake_upstream.py"), "--port", str(port)], cpu=cpu
    )
    target = Target("direct", f"http://127.0.0.1:{port}{CHAT_PATH}", proc.pid)
    wait_for_chat(children, target)
    return target


def start_passthrough(children: Children, cpu: int | None, upstream: str) -> Target:
    port = free_port()
    proc = children.start(
        "passthrough",
        [sys.executable, str(BENCH / "passthrough.py"), "--port", str(port)],
        cpu=cpu,
        env={**os.environ, "BENCH_UPSTREAM_URL": upstream},
    )
    target = Target("passthrough", f"http://127.0.0.1:{port}{CHAT_PATH}", proc.pid)
    wait_for_chat(children, target)
    return target


# ----------------------------------------------------------------------------------------------------------
# nginx: Debian's, as a plain reverse proxy with keep-alive to the upstream and no response buffering.

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream fake {{
        server {upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def start_nginx(children: Children, cpu: int | None, upstream: str, workdir: Path) -> Target | str:
    binary = nginx_binary()
    if binary is None:
        return "nginx skipped: not installed (`apt-get install -y nginx`, or `make bench-setup`)"
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=workdir, upstream=upstream.removeprefix("http://"), port=port))
    proc = children.start("nginx", [binary, "-c", str(conf), "-e", str(workdir / "nginx-error.log")], cpu=cpu)
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    target = Target("nginx", f"http://127.0.0.1:{port}{CHAT_PATH}", proc.pid, version=version)
    wait_for_chat(children, target)
    return target


# ----------------------------------------------------------------------------------------------------------
# LiteLLM's proxy, in a virtualenv of its own, offline, no database, one worker.

LITELLM_CONFIG = """\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
"""


def ensure_litellm(progress: object = None) -> str | None:
    """Create bench/.venv-litellm with the pinned LiteLLM when missing; None when ready, else why not."""
    python = LITELLM_VENV / "bin" / "python"
    if (LITELLM_VENV / "bin" / "litellm").exists():
        return None
    print(f"bench: installing {' '.join(LITELLM_REQUIREMENTS)} into {LITELLM_VENV} (once)", file=sys.stderr)
    base = shutil.which("python3") or sys.executable
    steps = [
        [base, "-m", "venv", str(LITELLM_VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "--quiet", *LITELLM_REQUIREMENTS],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(LITELLM_VENV, ignore_errors=True)
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            return f"LiteLLM skipped: could not install it ({tail[0][:200]})"
    return None


def start_litellm(children: Children, cpu: int | None, upstream: str, workdir: Path) -> Target | str:
    problem = ensure_litellm()
    if problem is not None:
        return problem
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(upstream=upstream))
    env = {k: v for k, v in os.environ.items() if k in INHERITED and k != "PYTHONPATH"}
    # Offline: the model cost map ships in the package; no database, no master key, no callbacks.
    env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "NO_DOCS": "True"}
    argv = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    proc = children.start("litellm", [*argv, "--port", str(port), "--num_workers", "1"], cpu=cpu, env=env)
    version = subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-c",
            "from importlib.metadata import version as v; "
            "print(f\"litellm {v('litellm')}, openai {v('openai')}\")",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = Target("litellm", f"http://127.0.0.1:{port}{CHAT_PATH}", proc.pid, version=version)
    wait_for_chat(children, target, timeout=180.0)
    return target


# ----------------------------------------------------------------------------------------------------------
# The gateway in production: Postgres, auth required, a real API token, usage capture on.


class BenchDatabase:
    """A Postgres database of the run's own, dropped at the end whatever happened."""

    def __init__(self, admin_url: str = POSTGRES_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.name = f"gateway_bench_{uuid.uuid4().hex[:12]}"
        self.created = False

    @property
    def url(self) -> str:
        return f"{self.admin_url.rsplit('/', 1)[0]}/{self.name}"

    def create(self) -> None:
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        self.created = True

    def drop(self) -> None:
        if self.created:
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self.created = False

    def count_usage_events(self) -> int:
        async def count() -> int:
            connection = await asyncpg.connect(self.url)
            try:
                return int(await connection.fetchval("SELECT count(*) FROM usage_events"))
            finally:
                await connection.close()

        return asyncio.run(count())

    async def _admin(self, statement: str) -> None:
        connection = await asyncpg.connect(self.admin_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()


def gateway_command() -> list[str]:
    """The installed `gateway` script next to this interpreter, as `make bench` runs it from .venv."""
    beside = Path(sys.executable).parent / "gateway"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("gateway")
    return [found] if found else [sys.executable, "-m", "gateway"]


@dataclass
class GatewaySetup:
    """The environment every gateway instance of the run shares, and the API token they all accept."""

    env: dict[str, str]
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    token: str = field(default="", repr=False)
    limited_token: str = field(default="", repr=False)


# The limited token's limits: every kind, none ever reached, so that what `gateway-limited` measures is admission's
# cost (a reservation per request, its settlement, a lease of admissions now and then), not refusals.
BENCH_LIMITS = {"usd_per_period": 1_000_000, "tokens_per_period": 10**12, "requests_per_minute": 1_000_000}


def prepare_gateway(database: BenchDatabase, upstream: str, workdir: Path) -> GatewaySetup:
    """Create and migrate the database, and a user to log in as (`gateway migrate`, `gateway users create`)."""
    env = {k: v for k, v in os.environ.items() if k in INHERITED}
    env |= {
        "DATABASE_URL": database.url,
        "API_AUTH_REQUIRED": "1",
        "OPENAI_BASE_URL": upstream,
        "OPENAI_API_KEY": "sk-bench",
        "MISTRAL_BASE_URL": upstream,
        "DATA_DIR": str(workdir / "gateway-data"),
        # Set, as in any deployment of several instances: every worker and instance must share them.
        "PLATFORM_JWT_SECRET": secrets.token_hex(32),
        "TOKEN_HASH_KEY": secrets.token_hex(32),
    }
    setup = GatewaySetup(env)
    database.create()
    for argv, stdin in (
        (["migrate"], ""),
        (["users", "create", "--email", BENCH_USER], setup.password + "\n"),
    ):
        done = subprocess.run(
            [*gateway_command(), *argv], env=env, cwd=workdir, input=stdin, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"bench: gateway {argv[0]} failed:\n{done.stderr[-2000:]}")
    return setup


def start_gateway(
    children: Children, cpu: int | None, setup: GatewaySetup, *, name: str, workers: int
) -> Target:
    port = free_port()
    argv = [*gateway_command(), "serve", "--port", str(port), "--workers", str(workers)]
    proc = children.start(name, argv, cpu=cpu, env=setup.env)
    base = f"http://127.0.0.1:{port}"
    if not setup.token:
        setup.token = _api_token(children, name, base, password=setup.password)
    target = Target(name, base + CHAT_PATH, proc.pid, headers={"authorization": f"Bearer {setup.token}"})
    wait_for_chat(children, target)
    return target


def limited_gateway(children: Children, setup: GatewaySetup, gateway: Target) -> Target:
    """The same gateway process as `gateway`, called with a token that has budgets and a rate limit."""
    if not setup.limited_token:
        base = gateway.url.removesuffix(CHAT_PATH)
        setup.limited_token = _api_token(
            children, gateway.name, base, password=setup.password, limits=BENCH_LIMITS
        )
    headers = {"authorization": f"Bearer {setup.limited_token}"}
    target = Target("gateway-limited", gateway.url, gateway.pid, headers=headers)
    wait_for_chat(children, target, process=gateway.name)
    return target


def _api_token(
    children: Children, name: str, base: str, *, password: str, limits: dict[str, int] | None = None
) -> str:
    """Log in as the bench user and create an API token with the `chat` scope (and `limits`), as a user would."""
    login: dict[str, object] = {}

    def logged_in() -> str | None:
        try:
            status, body = http_post(
                base + "/api/v1/auth/login",
                orjson.dumps({"email": BENCH_USER, "password": password}),
                {},
            )
        except OSError as exc:
            return type(exc).__name__
        if status != 200:
            return f"login: HTTP {status}: {body[:200]!r}"
        login.update(orjson.loads(body))
        return None

    wait_until(children, name, logged_in)
    status, body = http_post(
        base + "/v1/api-tokens",
        orjson.dumps({"name": "bench", "scopes": ["chat"], **({"limits": limits} if limits else {})}),
        {"authorization": f"Bearer {login['access_token']}"},
    )
    if status != 201:
        raise SystemExit(f"bench: could not create an API token: HTTP {status}: {body[:300]!r}")
    token: str = orjson.loads(body)["token"]
    return token
