"""The load benchmark (`make bench`): the gateway in production against nginx, LiteLLM, a bare pass-through
proxy and the upstream itself, on loopback, in one interleaved run.

It starts a fake upstream, nginx (`proxy_buffering off`), LiteLLM's proxy (its own virtualenv, offline, one
worker), the pass-through baseline, and the gateway (`gateway serve`, on a Postgres database of its own, with
`API_AUTH_REQUIRED=1`, a real API token and usage capture), once with one worker and once with two. Every proxy
runs on one CPU; the upstream and the load generators (`wrk` for plain requests, `bench/loadgen.py` for streams)
on the other. Each round runs every scenario on every target, in an order that rotates from round to round, so
that noise on the machine hits all of them alike. Every figure is also given as a ratio to the direct upstream
and to nginx measured in the same run: absolute numbers only mean something on the machine that produced them.

    python bench/run.py              # about 6 minutes
    python bench/run.py --quick      # about 2 minutes: checks the harness, figures are rougher
    python bench/run.py --duration 5 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import orjson
from processes import Children, DatabaseBeside, cpu_seconds, memory_kib, shallow_cpu_idle
from report import (
    Pooled,
    Scenario,
    build_figures,
    checks,
    checks_table,
    label,
    ratio_table,
    values_table,
)
from targets import (
    LITELLM_VENV,
    POSTGRES_ADMIN_URL,
    BenchDatabase,
    Target,
    ensure_litellm,
    limited_gateway,
    prepare_gateway,
    start_gateway,
    start_litellm,
    start_nginx,
    start_passthrough,
    start_upstream,
)
from wrk import run_wrk, wrk_binary

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ORDER = ("direct", "nginx", "litellm", "passthrough", "gateway", "gateway-limited", "gateway-2w")
TWO_WORKER_SCENARIOS = ("throughput", "streams")
PACKAGES = (
    "starlette",
    "uvicorn",
    "httpx",
    "httpx-aiohttp",
    "aiohttp",
    "uvloop",
    "httptools",
    "orjson",
    "sqlalchemy",
    "asyncpg",
)


class LoadGenerator:
    """The streaming load generator process (bench/loadgen.py): one JSON job a line in, one result a line out."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout

    def run(
        self, target: Target, *, concurrency: int, stream: bool, duration: float, warmup: float
    ) -> dict[str, Any]:
        job = {
            "url": target.url,
            "headers": target.headers,
            "concurrency": concurrency,
            "stream": stream,
            "duration": duration,
            "warmup": warmup,
        }
        self.stdin.write(orjson.dumps(job) + b"\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise SystemExit(f"bench: the load generator exited with {self.proc.wait()}")
        result: dict[str, Any] = orjson.loads(line)
        return result


class Bench:
    """One run: the targets, the load, and what was measured, pooled per (scenario, target)."""

    def __init__(
        self, args: argparse.Namespace, children: Children, load: LoadGenerator, *, load_cpu: int | None
    ):
        self.args = args
        self.children = children
        self.load = load
        self.taskset = (
            [children.taskset, "-c", str(load_cpu)] if children.taskset and load_cpu is not None else []
        )
        self.use_wrk = wrk_binary() is not None
        self.pooled: dict[tuple[str, str], Pooled] = {}

    def measure(self, targets: dict[str, Target], scenarios: list[Scenario], progress: TextIO) -> None:
        names = list(targets)
        upstream = targets["direct"]
        for round_index in range(self.args.rounds):
            for scenario in scenarios:
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    if name == "gateway-2w" and scenario.key not in TWO_WORKER_SCENARIOS:
                        continue
                    pooled = self.pooled.setdefault((scenario.key, name), Pooled())
                    self._one(targets[name], upstream, scenario, pooled)
                    print(
                        f"  round {round_index + 1}/{self.args.rounds}  {scenario.title:<28} {label(name):<20}"
                        f" {pooled.rate:9.0f}/s (pooled)  errors {pooled.errors}",
                        file=progress,
                        flush=True,
                    )
                self.children.check_alive()

    def _one(self, target: Target, upstream: Target, scenario: Scenario, pooled: Pooled) -> None:
        args = self.args
        if scenario.tool == "wrk" and self.use_wrk:
            # Warm the target (its upstream pool, caches) with the same load, then let wrk measure.
            self.load.run(
                target, concurrency=scenario.concurrency, stream=False, duration=0.0, warmup=args.warmup
            )
            before = self._cpu(target, upstream)
            result = run_wrk(
                target.url,
                connections=scenario.concurrency,
                seconds=max(1, round(args.duration)),
                headers=target.headers,
                taskset=self.taskset,
            )
            after = self._cpu(target, upstream)
            pooled.completed += result.requests
            pooled.seconds += result.seconds
            pooled.errors += result.errors
            pooled.first_error = pooled.first_error or result.first_error
            pooled.latency_us.update(dict(result.histogram))
        else:
            before = self._cpu(target, upstream)
            found = self.load.run(
                target,
                concurrency=scenario.concurrency,
                stream=scenario.stream,
                duration=args.duration,
                warmup=args.warmup,
            )
            after = self._cpu(target, upstream)
            pooled.completed += found["completed"]
            pooled.seconds += found["seconds"]
            pooled.errors += found["errors"]
            pooled.first_error = pooled.first_error or found["first_error"]
            pooled.latencies += found["latencies"]
            pooled.ttfbs += found["ttfbs"]
            pooled.latency_us.update(round(x * 1e6) for x in found["latencies"])
        if scenario.tool == "wrk" and self.use_wrk:
            pooled.target_cpu += after[0] - before[0]
            pooled.load_cpu += after[1] - before[1]
            pooled.rounds_cpu.append((result.requests, after[0] - before[0]))

    def _cpu(self, target: Target, upstream: Target) -> tuple[float, float]:
        """(the target's CPU seconds, the upstream's + the load generators' CPU seconds) so far."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
        loadside = cpu_seconds(upstream.pid) + cpu_seconds(self.load.proc.pid)
        loadside += children.ru_utime + children.ru_stime
        # For `direct` the target is the upstream itself: its own CPU time per request is what it costs.
        return cpu_seconds(target.pid), loadside


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load benchmark: the gateway against its peers and the upstream."
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds measured per target, scenario and round (default 3, or 1 with --quick; wrk rounds it)",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds over all targets (default 3, or 2 with --quick)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="unmeasured seconds before each measurement (default 0.5, or 0.25 with --quick)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="clients in the concurrent scenarios")
    parser.add_argument("--quick", action="store_true", help="a short run to check the harness")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--no-latency-qos",
        action="store_true",
        help="let idle CPUs halt (by default the run holds /dev/cpu_dma_latency at 0 when it may)",
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help="only install what is missing (wrk, nginx, LiteLLM's venv), then exit",
    )
    parser.add_argument(
        "--only",
        default=",".join(ORDER),
        help=f"comma-separated targets to run (default all: {','.join(ORDER)}); direct always runs",
    )
    args = parser.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (1.0 if args.quick else 3.0)
    args.rounds = args.rounds if args.rounds is not None else 2 if args.quick else 3
    args.warmup = args.warmup if args.warmup is not None else (0.25 if args.quick else 0.5)
    args.only = {"direct", *(t.strip() for t in args.only.split(",") if t.strip())}
    if args.duration <= 0 or args.rounds < 1 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--duration, --rounds and --concurrency must be positive, --warmup not negative")
    unknown = args.only - set(ORDER)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(ORDER)}")
    return args


def choose_cpus(no_pin: bool) -> tuple[int | None, int | None, str | None, str]:
    """(proxy CPU, load CPU, taskset path, a sentence saying what was done)."""
    taskset = shutil.which("taskset")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if no_pin:
        return None, None, None, "none (--no-pin)"
    if len(cpus) < 2 or not taskset:
        why = "fewer than 2 CPUs" if len(cpus) < 2 else "taskset not found"
        return None, None, None, f"none ({why}): the load generator competes with the proxies for CPU"
    proxy, load = cpus[0], cpus[1]
    return (
        proxy,
        load,
        taskset,
        f"every proxy (nginx, LiteLLM, passthrough, gateway) on CPU {proxy}; the fake upstream, wrk, the "
        f"streaming load generator and this script on CPU {load} (taskset)",
    )


def ensure_tools(progress: TextIO) -> list[str]:
    """Install Debian's wrk and nginx when missing and we may (root, apt-get); say what was done."""
    notes = []
    for binary, package in (("wrk", "wrk"), ("nginx", "nginx")):
        if shutil.which(binary) or os.access(f"/usr/sbin/{binary}", os.X_OK):
            continue
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            notes.append(
                f"{binary} is not installed and this user cannot install it (apt-get install -y {package})"
            )
            continue
        print(f"bench: installing {package} (apt-get install -y {package})", file=progress)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if subprocess.run(["apt-get", "install", "-y", "-q", package], **quiet).returncode != 0:  # type: ignore[call-overload]
            subprocess.run(["apt-get", "update", "-q"], **quiet)  # type: ignore[call-overload]
            subprocess.run(["apt-get", "install", "-y", "-q", package], **quiet)  # type: ignore[call-overload]
        ok = shutil.which(binary) or os.access(f"/usr/sbin/{binary}", os.X_OK)
        notes.append(f"{binary} was missing: {'installed' if ok else 'could not install'} Debian's {package}")
    return notes


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exit that runs the `finally` blocks, like Ctrl-C does."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, leave) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = sys.stderr
    notes = ensure_tools(progress)
    if args.setup:
        problem = ensure_litellm()
        for line in [*notes, problem or f"LiteLLM ready in {LITELLM_VENV}"]:
            print(f"bench: {line}", file=progress)
        return 1 if problem else 0
    proxy_cpu, load_cpu, taskset, pinning = choose_cpus(args.no_pin)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # idle while measuring, but off the proxies' CPU all the same
    c = args.concurrency
    scenarios = [
        Scenario("latency", "non-streamed, 1 client", 1, False, "wrk"),
        Scenario("throughput", f"non-streamed, {c} clients", c, False, "wrk"),
        Scenario("streams", f"streamed, {c} clients", c, True, "loadgen"),
        Scenario("stream-latency", "streamed, 1 client", 1, True, "loadgen"),
    ]
    if wrk_binary() is None:
        notes.append("wrk missing: the non-streamed scenarios ran on bench/loadgen.py instead")
    database = BenchDatabase()
    with (
        stop_on_signals(),
        shallow_cpu_idle(not args.no_latency_qos) as cpu_idle,
        DatabaseBeside(database.name, load_cpu) as database_pinning,
        tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp,
    ):
        workdir = Path(tmp)
        children = Children(workdir, taskset)
        try:
            print(f"bench: starting the targets; pinning: {pinning}", file=progress)
            targets: dict[str, Target] = {}
            upstream = targets["direct"] = start_upstream(children, load_cpu)
            upstream_base = upstream.url.removesuffix("/v1/chat/completions")
            if "nginx" in args.only:
                found = start_nginx(children, proxy_cpu, upstream_base, workdir)
                _keep(targets, notes, found)
            if "litellm" in args.only:
                found = start_litellm(children, proxy_cpu, upstream_base, workdir)
                _keep(targets, notes, found)
            if "passthrough" in args.only:
                targets["passthrough"] = start_passthrough(children, proxy_cpu, upstream_base)
            setup = None
            if args.only & {"gateway", "gateway-2w"}:
                setup = prepare_gateway(database, upstream_base, workdir)
                for name, workers in (("gateway", 1), ("gateway-2w", 2)):
                    if name in args.only:
                        targets[name] = start_gateway(children, proxy_cpu, setup, name=name, workers=workers)
                if "gateway-limited" in args.only and "gateway" in targets:
                    # The one-worker gateway again, with a token under budgets and a rate limit: admission's cost.
                    targets["gateway-limited"] = limited_gateway(children, setup, targets["gateway"])
            load = LoadGenerator(
                children.start(
                    "loadgen", [sys.executable, str(BENCH / "loadgen.py")], cpu=load_cpu, pipes=True
                )
            )
            memory_before = {name: memory_kib(t.pid) for name, t in targets.items()}
            bench = Bench(args, children, load, load_cpu=load_cpu)
            started = time.monotonic()
            bench.measure(targets, scenarios, progress)
            elapsed = time.monotonic() - started
            memory_after = {name: memory_kib(t.pid) for name, t in targets.items()}
            time.sleep(1.5)  # the recorder writes every 0.5 s
            usage_rows = database.count_usage_events() if setup is not None else 0
            postgres = asyncio.run(_postgres_version())
        finally:
            children.close()
            database.drop()

    names = [t for t in ORDER if t in targets]
    rows = build_figures(bench.pooled, names)
    print(f"\n## Load benchmark ({'quick' if args.quick else 'normal'} mode, {elapsed:.0f} s of load)\n")
    print("\n".join(environment_lines(pinning, args, targets, postgres)))
    print(f"- CPU idle states: {cpu_idle}")
    if "gateway" in targets or "gateway-2w" in targets:
        print(f"- Postgres: {database_pinning.summary}")
    print("\n### Figures\n")
    print(values_table(rows, names))
    print("\n### Ratios to the upstream hit directly\n")
    print(ratio_table(rows, names, "direct"))
    if "nginx" in targets:
        print("\n### Ratios to nginx\n")
        print(ratio_table(rows, names, "nginx"))
    gain, gains = _workers_gain(bench.pooled)
    print("\n### The issue's targets (gateway: one worker unless said)\n")
    print(checks_table(checks(rows, gain)))
    print()
    print("\n".join(detail_lines(bench.pooled, names, memory_before, memory_after, usage_rows, elapsed)))
    if gains:
        print(f"- 2 workers ÷ 1 worker by round (the target's figure is their median): {_times(gains)}")
    for note in notes:
        print(f"- note: {note}")
    failed = [p.first_error for p in bench.pooled.values() if p.errors]
    if failed:
        print(f"\nbench: some requests failed (first: {failed[0]}); figures not valid.", file=progress)
        return 1
    return 0


def _keep(targets: dict[str, Target], notes: list[str], found: Target | str) -> None:
    if isinstance(found, str):
        notes.append(found)
    else:
        targets[found.name] = found


def _workers_gain(pooled: dict[tuple[str, str], Pooled]) -> tuple[float, list[float]]:
    """Two workers with a core each, against one: one worker's CPU time per request over two workers'
    (each worker then serves 1 / its CPU time per request), times two; the median of the rounds' ratios, and
    those ratios. Each round measures the two one after the other, under the same machine weather; pooling
    the rounds instead let one noisy minute move the figure by a third (BENCHMARKS.md)."""
    one, two = pooled.get(("throughput", "gateway")), pooled.get(("throughput", "gateway-2w"))
    if one is None or two is None:
        return float("nan"), []
    gains = [
        2 * (one_cpu / one_requests) / (two_cpu / two_requests)
        for (one_requests, one_cpu), (two_requests, two_cpu) in zip(
            one.rounds_cpu, two.rounds_cpu, strict=False
        )
        if one_requests and two_requests and one_cpu and two_cpu
    ]
    return (statistics.median(gains) if gains else float("nan")), gains


def _times(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}x" for value in values)


def detail_lines(
    pooled: dict[tuple[str, str], Pooled],
    names: list[str],
    before: dict[str, dict[str, int]],
    after: dict[str, dict[str, int]],
    usage_rows: int,
    elapsed: float,
) -> list[str]:
    def mib(kib: int | None) -> str:
        return f"{kib / 1024:.1f} MiB" if kib else "n/a"

    lines = []
    busy = []
    for name in names:
        p = pooled.get(("throughput", name))
        if p is not None and p.seconds:
            busy.append(
                f"{label(name)} {100 * p.target_cpu / p.seconds:.0f}% / {100 * p.load_cpu / p.seconds:.0f}%"
            )
    lines.append(
        "- CPU busy at 64 clients, non-streamed (the target's processes / the upstream + wrk + loadgen, in % of "
        "one core; for direct, the target is the upstream): " + "; ".join(busy)
    )
    for name in names:
        if name == "direct":
            continue
        b, a = before.get(name, {}), after.get(name, {})
        lines.append(
            f"- {label(name)} RSS: {mib(b.get('VmRSS'))} before the load, {mib(a.get('VmRSS'))} after "
            f"(peak {mib(a.get('VmHWM'))})"
        )
    if usage_rows:
        served = sum(p.completed for (s, t), p in pooled.items() if t.startswith("gateway"))
        lines.append(
            f"- usage capture: {usage_rows:,} usage rows in Postgres for the gateways' {served:,} measured "
            "requests (plus warm-ups and probes)"
        )
    requests = sum(p.completed for p in pooled.values())
    errors = sum(p.errors for p in pooled.values())
    lines.append(f"- requests measured: {requests:,} in {elapsed:.0f} s; errors: {errors}")
    return lines


async def _postgres_version() -> str:
    try:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
    except (OSError, asyncpg.PostgresError):
        return "unknown"
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


def environment_lines(
    pinning: str, args: argparse.Namespace, targets: dict[str, Target], postgres: str
) -> list[str]:
    versions = []
    for name in ("gateway", *PACKAGES):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read_lines("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    wrk = wrk_binary()
    wrk_version = ""
    if wrk:
        wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("Copyright")[0]
    peers = [targets[n].version for n in ("nginx", "litellm") if n in targets and targets[n].version]
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model}), {platform.system()} {platform.release()}; "
        "a VM on a shared host, whose noise the interleaving spreads over all targets",
        f"- python: {platform.python_implementation()} {platform.python_version()}; Postgres {postgres}",
        f"- packages: {', '.join(versions)}",
        f"- peers and tools: {', '.join([*peers, wrk_version.strip() or 'no wrk'])}",
        f"- gateway source: {gateway_source()}",
        f"- pinning: {pinning}",
        f"- run: {args.rounds} rounds x 4 scenarios x {len(targets)} targets, {args.duration:g} s measured "
        f"(+{args.warmup:g} s warm-up) each, {args.concurrency} clients for the concurrent scenarios",
    ]


def gateway_source() -> str:
    """The commit measured, marked when the working tree differs from it (or PYTHONPATH may point elsewhere)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway", "migrations"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    source = f"commit {commit}" + (" with uncommitted changes" if changes else "")
    if os.environ.get("PYTHONPATH"):
        source += f"; PYTHONPATH={os.environ['PYTHONPATH']} may load the gateway from elsewhere"
    return source


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nbench: interrupted; all child processes stopped.", file=sys.stderr)
        sys.exit(130)
