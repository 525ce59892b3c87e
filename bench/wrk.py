"""Non-streamed load with Debian's `wrk` (one thread, `bench/chat.lua`): requests per second and latency."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import orjson

SCRIPT = Path(__file__).resolve().parent / "chat.lua"
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]})
MARKER = "BENCH-JSON "


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    first_error: str | None
    histogram: list[tuple[int, int]]  # (latency in microseconds, how many requests took it)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    headers: dict[str, str],
    taskset: list[str],
) -> WrkResult:
    """One measurement; `taskset` is the pinning prefix (empty for none). Timeouts count as errors."""
    binary = wrk_binary()
    assert binary is not None
    env = {
        **os.environ,
        "BENCH_BODY": BODY.decode(),
        "BENCH_AUTHORIZATION": headers.get("authorization", ""),
    }
    argv = [*taskset, binary, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    done = subprocess.run(
        [*argv, "-s", str(SCRIPT), url], env=env, capture_output=True, text=True, timeout=seconds + 60
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(
            f"bench: wrk failed ({done.returncode}):\n{done.stdout[-1000:]}{done.stderr[-1000:]}"
        )
    figures = orjson.loads(line.removeprefix(MARKER))
    kinds = ("connect", "read", "write", "status", "timeout")
    errors = sum(int(figures[k]) for k in kinds)
    first_error = next((f"wrk {k} errors: {figures[k]}" for k in kinds if figures[k]), None)
    return WrkResult(
        requests=int(figures["requests"]),
        seconds=figures["duration_us"] / 1e6,
        errors=errors,
        first_error=first_error,
        histogram=[(int(us), int(count)) for us, count in figures["histogram"]],
    )
