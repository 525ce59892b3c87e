"""The `gateway` command: `serve` and `migrate`. Parses arguments, reads the settings, calls the app or migrator."""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from gateway import __version__
from gateway.db.engine import prepare_data_dir
from gateway.db.migrate import upgrade
from gateway.settings import Settings, SettingsError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
APP_FACTORY = "gateway.app:create_app_from_env"


def uvicorn_options() -> dict[str, Any]:
    """How the gateway is served, wherever it is served from (the CLI, the tests, the benchmark)."""
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["gateway"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "server_header": False,
        # The proxy appends the TCP peer to X-Forwarded-For itself; uvicorn must not rewrite the peer from it.
        "proxy_headers": False,
        "log_config": log_config,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    result: int = args.run(args, settings)
    return result


def serve(args: argparse.Namespace, settings: Settings) -> int:
    prepare_data_dir(settings)
    if settings.is_embedded_database:
        asyncio.run(upgrade(settings.database_url))
    uvicorn.run(
        APP_FACTORY, factory=True, host=args.host, port=args.port, workers=args.workers, **uvicorn_options()
    )
    return 0


def migrate(args: argparse.Namespace, settings: Settings) -> int:
    prepare_data_dir(settings)
    asyncio.run(upgrade(settings.database_url))
    print("gateway: migrations applied", file=sys.stderr)
    return 0


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
    return parser
