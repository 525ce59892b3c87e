"""`GET /health` (liveness, touching nothing slow) and `?deep=1` or `/ready` (each dependency checked, with the
reason when one is not ready)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway import __version__
from gateway.db.engine import Database
from gateway.db.migrate import current_revision, head_revision
from gateway.openapi import ANY_OBJECT, NUMBER, STRING, Operation, Reply, obj

DEPENDENCY_TIMEOUT_SECONDS = 2.0
DATABASE_UNREACHABLE = "database_unreachable"
DATABASE_NOT_MIGRATED = "database_not_migrated"


class UsageState(Protocol):
    """What /ready asks of the usage recorder."""

    @property
    def problem(self) -> str | None:
        """`usage_unavailable`, `database_not_migrated`, or None when every answered request is recorded."""


class Health:
    """The health endpoints of one app, which knows when it started, which database it uses and the schema
    revision that database must be at (read once, from the migrations shipped with this version)."""

    def __init__(self, database: Database, usage: UsageState) -> None:
        self.started_at = time.monotonic()
        self.database = database
        self.usage = usage
        self.head_revision = head_revision()

    async def health(self, request: Request) -> JSONResponse:
        if request.query_params.get("deep", "").lower() in ("1", "true", "yes"):
            return await self.ready(request)
        return JSONResponse(self._status("ok"))

    async def ready(self, request: Request) -> JSONResponse:
        checks = {"database": await self._check_database(), "usage": self._check_usage()}
        healthy = all(check["status"] == "ok" for check in checks.values())
        body = {**self._status("ok" if healthy else "unavailable"), "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    def _status(self, status: str) -> dict[str, object]:
        return {
            "status": status,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
        }

    async def _check_database(self) -> dict[str, object]:
        began = time.perf_counter()
        try:
            async with asyncio.timeout(DEPENDENCY_TIMEOUT_SECONDS):
                async with self.database.engine.connect() as connection:
                    # Reachable and migrated in one read of alembic_version (an indexless one-row table).
                    revision = await current_revision(connection)
        except Exception as exc:  # any failure means "down"; the kind is enough for an operator
            return {"status": "unavailable", "reason": DATABASE_UNREACHABLE, "error": type(exc).__name__}
        if revision != self.head_revision:
            return {
                "status": "unavailable",
                "reason": DATABASE_NOT_MIGRATED,
                "revision": revision,
                "expected_revision": self.head_revision,
            }
        return {"status": "ok", "latency_ms": round((time.perf_counter() - began) * 1000, 2)}

    def _check_usage(self) -> dict[str, object]:
        problem = self.usage.problem
        return {"status": "ok"} if problem is None else {"status": "unavailable", "reason": problem}


HEALTH = obj({"status": STRING, "version": STRING, "uptime_s": NUMBER}, {"checks": ANY_OBJECT})
READINESS = {
    200: Reply("Ready: every dependency answered", HEALTH),
    503: Reply("Not ready: `checks` gives each dependency's reason", HEALTH),
}
LIVENESS = Operation(
    "Alive, touching nothing slow; `?deep=1` checks the dependencies as /ready does",
    {200: Reply("Alive (or, deep, ready)", HEALTH), 503: READINESS[503]},
    query={"deep": STRING},
)
READY = Operation("Each dependency checked (database reachable and migrated, usage recorded)", READINESS)
