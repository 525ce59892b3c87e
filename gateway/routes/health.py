"""`GET /health` (liveness, touching nothing slow) and `?deep=1` or `/ready` (each dependency checked)."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway import __version__
from gateway.db.engine import Database

DEPENDENCY_TIMEOUT_SECONDS = 2.0


class Health:
    """The health endpoints of one app, which knows when it started and which database it uses."""

    def __init__(self, database: Database) -> None:
        self.started_at = time.monotonic()
        self.database = database

    async def health(self, request: Request) -> JSONResponse:
        if request.query_params.get("deep", "").lower() in ("1", "true", "yes"):
            return await self.ready(request)
        return JSONResponse(self._status("ok"))

    async def ready(self, request: Request) -> JSONResponse:
        checks = {"database": await self._check_database()}
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
                    await connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure means "down"; the kind is enough for an operator
            return {"status": "unavailable", "error": type(exc).__name__}
        return {"status": "ok", "latency_ms": round((time.perf_counter() - began) * 1000, 2)}
