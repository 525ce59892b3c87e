"""The load benchmark (`make bench`): the gateway against a bare pass-through proxy and the upstream itself.

It starts a fake upstream, the gateway (`gateway serve`, SQLite default, in a temp data dir) and the
pass-through baseline, pins the proxies to one CPU and the upstream and load generator to another, then
measures every target in turn, round after round, so that noise on the machine hits all of them alike. Every
figure is also given as a ratio to the direct upstream and to the pass-through measured in the same run:
absolute numbers only mean something on the machine that produced them.

    python bench/run.py              # about 100 s
    python bench/run.py --quick      # about 25 s
    python bench/run.py --duration 5 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CHAT_PATH = "/v1/chat/completions"
PROBE_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"ping"}]}'
TARGETS = ("direct", "passthrough", "gateway")
PACKAGES = (
    "starlette",
    "uvicorn",
    "httpx",
    "httpx-aiohttp",
    "aiohttp",
    "uvloop",
    "httptools",
    "sqlalchemy",
    "aiosqlite",
)
# The only variables the gateway inherits: its settings are all set by the run, so that a developer's shell
# (or a setting added later) cannot change the figures.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH")


@dataclass(frozen=True)
class Scenario:
    """One kind of load: how many clients at once, and whether they ask for a stream."""

    key: str
    title: str
    concurrency: int
    stream: bool


@dataclass
class Pooled:
    """One target's results in one scenario, pooled over the rounds."""

    completed: int = 0
    errors: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)

    def add(self, result: dict[str, Any]) -> None:
        self.completed += result["completed"]
        self.errors += result["errors"]
        self.first_error = self.first_error or result["first_error"]
        self.seconds += result["seconds"]
        self.latencies += result["latencies"]
        self.ttfbs += result["ttfbs"]

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN when there is nothing to rank."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# ----------------------------------------------------------------------------------------------------------
# Child processes: started in their own session, and always killed on the way out.


def _die_with_parent() -> None:
    """Runs in each child before exec: the kernel sends it SIGTERM if this script dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """The processes this run started. `close()` ends each one's process group: SIGTERM, then SIGKILL."""

    def __init__(self, workdir: Path, taskset: str | None) -> None:
        self.workdir = workdir
        self.taskset = taskset
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        cpu: int | None,
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> subprocess.Popen[bytes]:
        if cpu is not None and self.taskset:
            argv = [self.taskset, "-c", str(cpu), *argv]  # taskset execs: the pid stays the program's
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                argv,
                cwd=self.workdir,  # away from the repo, so that its `.env` is not read
                env=env,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else sink,
                stderr=sink,
                start_new_session=True,  # Ctrl-C reaches this script only, which then stops all in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        for proc in self.procs.values():
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_answers(children: Children, name: str, url: str, timeout: float = 60.0) -> None:
    """Block until `url` answers a chat completion; fail with the child's log if it dies or never answers."""
    proc = children.procs[name]
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {name} exited with {proc.returncode}:\n{children.log_tail(name)}")
        request = urllib.request.Request(url, data=PROBE_BODY, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                if response.status == 200 and b'"usage"' in response.read():
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise SystemExit(f"bench: {name} did not answer in {timeout:.0f} s ({last}):\n{children.log_tail(name)}")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB, from /proc; empty where there is no /proc."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


class LoadGenerator:
    """The load generator process (bench/loadgen.py): one JSON job a line in, one JSON result a line out."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout

    def run(self, url: str, scenario: Scenario, *, duration: float, warmup: float) -> dict[str, Any]:
        job = {
            "url": url,
            "concurrency": scenario.concurrency,
            "stream": scenario.stream,
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


# ----------------------------------------------------------------------------------------------------------
# The measurement and its report.


def measure(
    load: LoadGenerator,
    urls: dict[str, str],
    scenarios: list[Scenario],
    *,
    rounds: int,
    duration: float,
    warmup: float,
    progress: TextIO,
) -> dict[tuple[str, str], Pooled]:
    """Every scenario on every target, round after round; the target order rotates so none is always first."""
    pooled = {(s.key, t): Pooled() for s in scenarios for t in urls}
    names = list(urls)
    for round_index in range(rounds):
        for scenario in scenarios:
            shift = round_index % len(names)
            for target in names[shift:] + names[:shift]:
                result = load.run(urls[target], scenario, duration=duration, warmup=warmup)
                pooled[scenario.key, target].add(result)
                rate = result["completed"] / result["seconds"]
                print(
                    f"  round {round_index + 1}/{rounds}  {scenario.title:<26} {target:<12} {rate:9.0f}/s"
                    f"  errors {result['errors']}",
                    file=progress,
                    flush=True,
                )
    return pooled


@dataclass(frozen=True)
class Figure:
    """One row of the table: a value per target, and which way is better."""

    title: str
    unit: str
    values: dict[str, float]
    higher_is_better: bool


def figures(pooled: dict[tuple[str, str], Pooled], scenarios: list[Scenario]) -> list[Figure]:
    latency, throughput, streams = scenarios

    def per_target(key: str, pick: Any) -> dict[str, float]:
        return {t: float(pick(pooled[key, t])) for t in TARGETS}

    ms = 1000.0
    p50 = per_target(latency.key, lambda p: percentile(p.latencies, 0.50) * ms)
    added = {t: p50[t] - p50["direct"] for t in TARGETS}
    return [
        Figure(f"{latency.title}: latency p50", "ms", p50, False),
        Figure(
            f"{latency.title}: latency p99",
            "ms",
            per_target(latency.key, lambda p: percentile(p.latencies, 0.99) * ms),
            False,
        ),
        Figure(f"{latency.title}: added latency p50", "ms", added, False),
        Figure(
            f"{throughput.title}: throughput", "req/s", per_target(throughput.key, lambda p: p.rate), True
        ),
        Figure(f"{streams.title}: throughput", "streams/s", per_target(streams.key, lambda p: p.rate), True),
        Figure(
            f"{streams.title}: first byte p50",
            "ms",
            per_target(streams.key, lambda p: percentile(p.ttfbs, 0.50) * ms),
            False,
        ),
        Figure(
            f"{streams.title}: first byte p99",
            "ms",
            per_target(streams.key, lambda p: percentile(p.ttfbs, 0.99) * ms),
            False,
        ),
    ]


def _number(value: float, unit: str) -> str:
    if value != value:  # NaN: nothing measured
        return "n/a"
    return f"{value:,.0f}" if unit.endswith("/s") else f"{value:.3f}"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base and base == base and value == value else "n/a"


def table(rows: list[Figure]) -> str:
    lines = [
        "| figure | unit | direct | passthrough | gateway | passthrough ÷ direct | gateway ÷ direct "
        "| gateway ÷ passthrough |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        v = row.values
        cells = [row.title, row.unit, *(_number(v[t], row.unit) for t in TARGETS)]
        if row.title.endswith("added latency p50"):
            # a difference from direct has no meaningful ratio to direct; compare the two proxies only
            cells += ["—", "—", _ratio(v["gateway"], v["passthrough"])]
        else:
            cells += [
                _ratio(v["passthrough"], v["direct"]),
                _ratio(v["gateway"], v["direct"]),
                _ratio(v["gateway"], v["passthrough"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.1f} MiB" if kib else "n/a"


def environment_lines(pinning: str, args: argparse.Namespace) -> list[str]:
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
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model}), {platform.system()} {platform.release()}",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- packages: {', '.join(versions)}",
        f"- gateway source: {gateway_source()}",
        f"- pinning: {pinning}",
        f"- run: {args.rounds} rounds x 3 scenarios x 3 targets, {args.duration:g} s measured "
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


# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Load benchmark: gateway vs pass-through vs the upstream.")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds measured per target, scenario and round (default 3, or 1 with --quick)",
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
    parser.add_argument("--quick", action="store_true", help="a short run (about 25 s) to check the harness")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (1.0 if args.quick else 3.0)
    args.rounds = args.rounds if args.rounds is not None else 2 if args.quick else 3
    args.warmup = args.warmup if args.warmup is not None else (0.25 if args.quick else 0.5)
    if args.duration <= 0 or args.rounds < 1 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--duration, --rounds and --concurrency must be positive, --warmup not negative")
    return args


def gateway_command() -> list[str]:
    """The installed `gateway` script next to this interpreter, as `make bench` runs it from .venv."""
    beside = Path(sys.executable).parent / "gateway"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("gateway")
    return [found] if found else [sys.executable, "-m", "gateway"]


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
        (
            f"gateway and passthrough on CPU {proxy}; fake upstream, load generator "
            f"and this script on CPU {load} (taskset)"
        ),
    )


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
    proxy_cpu, load_cpu, taskset, pinning = choose_cpus(args.no_pin)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # idle while measuring, but off the proxies' CPU all the same
    progress = sys.stderr
    scenarios = [
        Scenario("latency", "non-streamed, 1 client", 1, False),
        Scenario("throughput", f"non-streamed, {args.concurrency} clients", args.concurrency, False),
        Scenario("streams", f"streamed, {args.concurrency} clients", args.concurrency, True),
    ]
    python = sys.executable
    ports = {name: free_port() for name in TARGETS}
    urls = {name: f"http://127.0.0.1:{ports[name]}{CHAT_PATH}" for name in TARGETS}
    upstream_url = f"http://127.0.0.1:{ports['direct']}"

    with stop_on_signals(), tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        children = Children(Path(tmp), taskset)
        try:
            print(
                f"bench: starting the upstream, the passthrough and the gateway; pinning: {pinning}",
                file=progress,
            )
            children.start(
                "direct",
                [python, str(BENCH / "fake_upstream.py"), "--port", str(ports["direct"])],
                cpu=load_cpu,
            )
            children.start(
                "passthrough",
                [python, str(BENCH / "passthrough.py"), "--port", str(ports["passthrough"])],
                cpu=proxy_cpu,
                env={**os.environ, "BENCH_UPSTREAM_URL": upstream_url},
            )
            gateway_env = {k: v for k, v in os.environ.items() if k in INHERITED}
            gateway_env |= {
                "OPENAI_BASE_URL": upstream_url,
                "OPENAI_API_KEY": "sk-bench",
                "MISTRAL_BASE_URL": upstream_url,
                "DATA_DIR": str(Path(tmp) / "data"),
            }
            gateway = children.start(
                "gateway",
                [*gateway_command(), "serve", "--port", str(ports["gateway"])],
                cpu=proxy_cpu,
                env=gateway_env,
            )
            for name in TARGETS:
                wait_until_answers(children, name, urls[name])
            load = LoadGenerator(
                children.start("loadgen", [python, str(BENCH / "loadgen.py")], cpu=load_cpu, pipes=True)
            )
            rss_before = memory_kib(gateway.pid)
            passthrough_before = memory_kib(children.procs["passthrough"].pid)

            started = time.monotonic()
            pooled = measure(
                load,
                urls,
                scenarios,
                rounds=args.rounds,
                duration=args.duration,
                warmup=args.warmup,
                progress=progress,
            )
            elapsed = time.monotonic() - started
            rss_after = memory_kib(gateway.pid)
            passthrough_after = memory_kib(children.procs["passthrough"].pid)
            for name in ("passthrough", "gateway"):
                if children.procs[name].poll() is not None:
                    raise SystemExit(f"bench: {name} died during the run:\n{children.log_tail(name)}")
        finally:
            children.close()

    rows = figures(pooled, scenarios)
    print(f"\n## Load benchmark ({'quick' if args.quick else 'normal'} mode, {elapsed:.0f} s of load)\n")
    print("\n".join(environment_lines(pinning, args)))
    print()
    print(table(rows))
    print()
    print(
        f"- gateway RSS: {_mib(rss_before.get('VmRSS'))} before the load, "
        f"{_mib(rss_after.get('VmRSS'))} after (peak {_mib(rss_after.get('VmHWM'))}); "
        f"passthrough: {_mib(passthrough_before.get('VmRSS'))} before, "
        f"{_mib(passthrough_after.get('VmRSS'))} after"
    )
    requests = {t: sum(pooled[s.key, t].completed for s in scenarios) for t in TARGETS}
    print("- requests measured: " + ", ".join(f"{t} {requests[t]:,}" for t in TARGETS))
    errors = {t: sum(pooled[s.key, t].errors for s in scenarios) for t in TARGETS}
    print("- errors: " + ", ".join(f"{t} {errors[t]}" for t in TARGETS))
    failed = [pooled[s.key, t].first_error for s in scenarios for t in TARGETS if pooled[s.key, t].errors]
    if failed:
        print(f"\nbench: some requests failed (first: {failed[0]}); figures not valid.", file=progress)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nbench: interrupted; all child processes stopped.", file=sys.stderr)
        sys.exit(130)
