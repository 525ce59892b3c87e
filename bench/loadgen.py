"""The streaming load generator: a small asyncio + aiohttp client in its own process, off the proxies' CPU.

`wrk` cannot tell when the first byte of a response arrived; this client can, so it measures the streams (time
to first byte, streams per second) and warms each target up before `wrk` measures it. `run.py` starts it once
and sends it one JSON job a line on stdin; it answers each with one JSON line on stdout: the requests completed
inside the measured window, the errors, and the raw latency (or time to first byte) samples in seconds, for
`run.py` to pool across rounds. Each job opens fresh keep-alive connections, warms them up for `warmup` seconds,
then measures for `duration` seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvloop

REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
BODY = orjson.dumps(REQUEST)
STREAM_BODY = orjson.dumps({**REQUEST, "stream": True})
HEADERS = {"content-type": "application/json"}
DONE = b"data: [DONE]\n\n"


@dataclass
class Window:
    """What one job saw inside its measured window (requests that started and ended within it)."""

    start: float
    end: float
    completed: int = 0
    errors: int = 0
    first_error: str | None = None
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)

    def error(self, began: float, what: str) -> None:
        if self.start <= began < self.end:
            self.errors += 1
            self.first_error = self.first_error or what


async def _worker(
    session: aiohttp.ClientSession, url: str, stream: bool, window: Window, headers: dict[str, str]
) -> None:
    body = STREAM_BODY if stream else BODY
    while (began := time.perf_counter()) < window.end:
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if stream:
                    first = await response.content.readany()
                    first_byte = time.perf_counter()
                    payload = first + await response.content.read()
                else:
                    payload = await response.read()
                    first_byte = time.perf_counter()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            window.error(began, type(exc).__name__)
            await asyncio.sleep(0.01)  # a refusing target must not spin the loop
            continue
        finished = time.perf_counter()
        ok = response.status == 200 and (payload.endswith(DONE) if stream else b'"usage"' in payload)
        if not ok:
            window.error(began, f"HTTP {response.status}: {payload[:120]!r}")
        elif window.start <= finished <= window.end:
            # Throughput counts what finished inside the window, so that a target slower than the window is
            # still measured; the latencies come from the requests that also started inside it.
            window.completed += 1
            if began >= window.start:
                window.latencies.append(finished - began)
                if stream:
                    window.ttfbs.append(first_byte - began)


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement: `concurrency` clients hammering `url` for `warmup` + `duration` seconds."""
    concurrency = int(job["concurrency"])
    now = time.perf_counter()
    window = Window(start=now + float(job["warmup"]), end=now + float(job["warmup"]) + float(job["duration"]))
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        url, stream, headers = job["url"], bool(job["stream"]), {**HEADERS, **job.get("headers", {})}
        await asyncio.gather(*(_worker(session, url, stream, window, headers) for _ in range(concurrency)))
    return {
        "completed": window.completed,
        "errors": window.errors,
        "first_error": window.first_error,
        "seconds": window.end - window.start,
        "latencies": window.latencies,
        "ttfbs": window.ttfbs,
    }


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            result = uvloop.run(run_job(orjson.loads(line)))
            sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
