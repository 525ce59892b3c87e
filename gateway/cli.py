"""The `gateway` command: `serve`, `migrate`, `users`, `vault`, `verify-proof`.

Parses arguments, reads settings, calls the app, the migrator or an operator command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from gateway import __version__, operator, serving
from gateway.agents.vault import rotate_database, vault_for
from gateway.db.engine import prepare_data_dir
from gateway.db.migrate import head_revision, revision_of, upgrade
from gateway.keys import load_server_keys
from gateway.logs import logging_config
from gateway.settings import VAULT_KEY_BYTES, Settings, SettingsError, decode_key
from gateway.transparency import audit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
APP_FACTORY = "gateway.app:create_app_from_env"

logger = logging.getLogger("gateway.cli")


WORKER_HEALTHCHECK_SECONDS = 30


def uvicorn_options(settings: Settings | None = None) -> dict[str, Any]:
    """How the gateway is served, wherever it is served from (the CLI, the tests, the benchmark); the edge's
    limits and log format from `settings`, their defaults without."""
    limits = serving.EdgeLimits() if settings is None else serving.EdgeLimits.from_settings(settings)
    return {
        "loop": "uvloop",
        # uvicorn's httptools protocol with the edge's limits; serving.PROTOCOL says which request cycle.
        "http": serving.protocol(limits),
        "lifespan": "on",
        "server_header": False,
        # The proxy appends the TCP peer to X-Forwarded-For itself; uvicorn must not rewrite the peer from it.
        "proxy_headers": False,
        "access_log": False,  # the gateway writes its own (gateway.accesslog), when ACCESS_LOG is on
        "log_config": logging_config("text" if settings is None else settings.log_format),
        # In-flight requests' time to finish once a signal asks the server to stop; then they are cut.
        "timeout_graceful_shutdown": None if settings is None else settings.shutdown_timeout,
    }


class DatabaseProblem(Exception):
    """The database a command needs cannot be used; the message is the one line the operator reads."""


@contextlib.contextmanager
def reporting_database_errors(settings: Settings) -> Iterator[None]:
    """Turns a database that is down, unreachable or refusing (the credentials, the database's name, a
    statement) into a `DatabaseProblem` naming DATABASE_URL, without its password, and the cause."""
    try:
        yield
    except (OSError, SQLAlchemyError) as exc:
        url = make_url(settings.database_url).render_as_string(hide_password=True)
        raise DatabaseProblem(f"cannot use the database at DATABASE_URL={url}: {_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    # SQLAlchemy wraps the driver's error with a link to its docs; the driver's own first line says it all.
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    # The driver's own error, under the DB-API's emulation of it; but a timeout is the cause itself (what it wraps
    # is the CancelledError by which asyncio ended the wait: a partition read "CancelledError").
    while cause.__cause__ is not None and not isinstance(cause, TimeoutError):
        cause = cause.__cause__
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    if isinstance(cause, TimeoutError) and not text:
        return "no answer in time (TimeoutError)"
    return f"{text} ({type(cause).__name__})" if text else type(cause).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "verify-proof":
        return verify_proof(args)  # offline: no settings, no database
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        result: int = args.run(args, settings)
    except DatabaseProblem as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return result


def serve(args: argparse.Namespace, settings: Settings) -> int:
    prepare_data_dir(settings)
    load_server_keys(settings)  # generated once here, before the workers start and read them
    with reporting_database_errors(settings):
        if settings.is_embedded_database:
            asyncio.run(upgrade(settings.database_url))
        else:
            _warn_unless_migrated(asyncio.run(revision_of(settings.database_url)))
    serving.raise_open_file_limit()  # before the workers start: they inherit it, and fit MAX_CONNECTIONS in it
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # How long the supervisor of `--workers N` waits for a worker's answer to its health check before it
        # kills and restarts it: uvicorn's 5 s is less than a worker may take to start on a busy host (seen: a
        # worker killed in its imports, again and again, under a load average of 10 on two cores).
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        **uvicorn_options(settings),
    )  # its logging is configured from here on
    if settings.usage_api_key is None and not _is_loopback(args.host):
        logger.warning(
            "the usage routes (/v1/usage and below) are open to anyone who can reach %s:%d: "
            "set USAGE_API_KEY to close them",
            args.host,
            args.port,
        )
    # prometheus-client's multiprocess mode (GET /metrics sums the workers): each worker keeps its metrics in files
    # of a fresh folder, named before any worker imports it.
    with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as metrics_folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder
        return serving.serve(config)


def _is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (127.0.0.0/8, ::1): only this machine can connect."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(str(address).partition("%")[0]).is_loopback for address in addresses
    )


def _warn_unless_migrated(revision: str | None) -> None:
    """Serving goes on (its usage rows wait in the journal, /ready says 503) so that migrating is one command."""
    if revision != head_revision():
        print(
            f"gateway: warning: the database's schema is at {revision or 'nothing (never migrated)'}, this version "
            f"needs {head_revision()}: run `gateway migrate` (until then /ready answers 503 database_not_migrated)",
            file=sys.stderr,
        )


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    prepare_data_dir(settings)
    with reporting_database_errors(settings):
        asyncio.run(upgrade(settings.database_url))
    print("gateway: migrations applied", file=sys.stderr)
    return 0


def users(args: argparse.Namespace, settings: Settings) -> int:
    prepare_data_dir(settings)
    try:
        password = operator.read_password() if args.users_command == "create" else ""
        with reporting_database_errors(settings):
            if settings.is_embedded_database:
                asyncio.run(upgrade(settings.database_url))
            if args.users_command == "create":
                message = asyncio.run(
                    operator.create(
                        settings.database_url, email=args.email, password=password, is_admin=args.admin
                    )
                )
            elif args.users_command == "disable":
                message = asyncio.run(operator.disable(settings.database_url, email=args.email))
            elif args.users_command == "limits":
                message = asyncio.run(
                    operator.limits(
                        settings.database_url,
                        email=args.email,
                        agent_id=args.agent,
                        changes=_limit_changes(args),
                        clear=args.clear,
                    )
                )
            else:
                message = asyncio.run(operator.listing(settings.database_url))
    except operator.OperatorError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


def verify_proof(args: argparse.Namespace) -> int:
    """Checks a proof with the log's public key alone: 0 when it holds, 1 when not, 2 on unreadable input."""
    try:
        key = args.public_key
        if len(key) < 4096 and Path(key).is_file():
            key = Path(key).read_text()
        verifier = audit.read_public_key(key)
        source = sys.stdin.buffer.read() if args.proof == "-" else Path(args.proof).read_bytes()
        document = audit.read_proof_document(json.loads(source), leaf_hash=args.leaf_hash)
    except (OSError, ValueError) as exc:
        print(f"gateway: cannot read the proof or the key: {exc}", file=sys.stderr)
        return 2
    verdict = audit.check_proof(document, verifier)
    print(verdict.report())
    return 0 if verdict.holds else 1


def vault(args: argparse.Namespace, settings: Settings) -> int:
    """`gateway vault rotate`: re-seal every BYOK record under the current vault key."""
    prepare_data_dir(settings)
    keyring = vault_for(settings, previous=args.old_key)
    with reporting_database_errors(settings):
        if settings.is_embedded_database:
            asyncio.run(upgrade(settings.database_url))
        rotation = asyncio.run(rotate_database(settings.database_url, keyring))
    print(
        f"gateway: vault key {keyring.key_id}: {rotation.resealed} records re-sealed, "
        f"{rotation.current} already under it"
    )
    for agent_id, provider in rotation.unreadable:
        print(f"gateway: cannot open the {provider} key of {agent_id}; give its old key", file=sys.stderr)
    return 1 if rotation.unreadable else 0


def _vault_key(text: str) -> bytes:
    key = decode_key(text.strip())
    if key is None or len(key) != VAULT_KEY_BYTES:
        raise argparse.ArgumentTypeError(f"expected {VAULT_KEY_BYTES} bytes as 64 hex digits or base64")
    return key


def _limit(kind: type[int] | type[float]) -> Any:
    """A limit's value on the command line: a number, or `none` to remove the limit."""

    def parse(text: str) -> object:
        if text.strip().lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None

    return parse


_UNSET = object()


def _limit_changes(args: argparse.Namespace) -> dict[str, object]:
    """The `users limits` options given, as the API's `limits` object."""
    given = {
        "usd_per_period": args.usd,
        "tokens_per_period": args.tokens,
        "requests_per_minute": args.requests_per_minute,
    }
    changes = {key: value for key, value in given.items() if value is not _UNSET}
    if args.period is not None:
        changes["period"] = args.period
    if args.rolling_days is not None:
        changes["rolling_days"] = args.rolling_days
    return changes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="A self-hosted AI edge gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser(
        "serve", help="serve the gateway (migrating the embedded SQLite first)"
    )
    serve_parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})"
    )
    serve_parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve_parser.add_argument("--workers", type=_positive, default=1, help="worker processes (default 1)")
    serve_parser.set_defaults(run=serve)

    migrate_parser = commands.add_parser("migrate", help="apply the database migrations to DATABASE_URL")
    migrate_parser.set_defaults(run=migrate)

    users_parser = commands.add_parser("users", help="create, list and disable users")
    users_commands = users_parser.add_subparsers(dest="users_command", required=True)
    create_parser = users_commands.add_parser(
        "create", help="create a user; the password comes from a prompt or stdin"
    )
    create_parser.add_argument("--email", required=True)
    create_parser.add_argument("--admin", action="store_true", help="make the user an administrator")
    users_commands.add_parser("list", help="list the users")
    disable_parser = users_commands.add_parser(
        "disable", help="disable a user: every credential stops working"
    )
    disable_parser.add_argument("--email", required=True)
    limits_parser = users_commands.add_parser(
        "limits",
        help="show or set a user's (or their agent's) budgets and rate limits",
        description="Without a limit option, shows the limits with their counters. Each option sets one kind "
        "(`none` removes it); running instances apply the change within a second.",
    )
    limits_parser.add_argument("--email", required=True)
    limits_parser.add_argument("--agent", help="an agent of the user's: set its limits instead")
    limits_parser.add_argument("--usd", type=_limit(float), default=_UNSET, help="USD per period, or none")
    limits_parser.add_argument(
        "--tokens", type=_limit(int), default=_UNSET, help="tokens per period, or none"
    )
    limits_parser.add_argument(
        "--requests-per-minute", type=_limit(int), default=_UNSET, help="requests per minute, or none"
    )
    period = limits_parser.add_mutually_exclusive_group()
    period.add_argument("--period", choices=("day", "month"), help="the spend limits' period (default month)")
    period.add_argument("--rolling-days", type=_positive, help="a rolling window of this many days instead")
    limits_parser.add_argument("--clear", action="store_true", help="remove every limit")
    users_parser.set_defaults(run=users)

    vault_parser = commands.add_parser("vault", help="manage the BYOK vault's master key")
    vault_commands = vault_parser.add_subparsers(dest="vault_command", required=True)
    vault_commands.add_parser(
        "rotate",
        help="re-encrypt every vault record under the current VAULT_MASTER_KEY",
        description=(
            "Re-encrypts every stored BYOK key under the current VAULT_MASTER_KEY (or, when unset, the key "
            "generated into DATA_DIR). Records sealed under an older key are opened with the keys of "
            "VAULT_PREVIOUS_MASTER_KEYS (comma-separated), --old-key, or the key generated into DATA_DIR "
            "before VAULT_MASTER_KEY was set. To rotate: set VAULT_MASTER_KEY to the new key, keep the old "
            "one in VAULT_PREVIOUS_MASTER_KEYS (so running instances still open old records), run this, "
            "then drop the old key. Exits 1 if some record could not be opened (the others are re-sealed)."
        ),
    ).add_argument(
        "--old-key",
        action="append",
        default=[],
        type=_vault_key,
        help="a previous master key (64 hex digits or base64); may be repeated",
    )
    vault_parser.set_defaults(run=vault)

    verify_parser = commands.add_parser(
        "verify-proof", help="check a transparency log proof offline, with the log's public key alone"
    )
    verify_parser.add_argument(
        "proof", help="the proof JSON (a proof route's answer, or its `proof`); - for stdin"
    )
    verify_parser.add_argument(
        "--public-key", required=True, help="the verifier key or base64 public key, or a file holding it"
    )
    verify_parser.add_argument("--leaf-hash", help="sha256:<hex>, when the proof JSON does not name its leaf")
    return parser
