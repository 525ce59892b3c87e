"""Instructions per request: the production gateway under callgrind, for an A/B that this host's noise cannot move.

Time on this machine moves by a third from one minute to the next (docs/BENCHMARKS.md), so a change worth a few
percent cannot be seen in `make bench`'s figures. The number of instructions the gateway executes per request
can: valgrind counts them, whatever else the host is doing (two runs of the same code agree to within 0.5%). It
is not time (a cache miss costs more than an add), but a change that removes work shows here first.

The gateway runs as `make bench` runs it (Postgres, auth required, a real API token, usage capture) under
`valgrind --tool=callgrind`, with `--workers` worker processes (every process of it counted); one client sends a
chat completion at a time, in turn over `--connections` keep-alive connections: a warm-up, then the counters are
dumped before and after `--requests` more. With `--workers 2` it shows whether two workers do more work per
request than one, which is what would keep them from twice one worker's throughput given a core each (the
instructions are counted per process, so it also shows that both served).

    .venv/bin/python bench/instructions.py [--requests 1000] [--workers 2 --connections 8]

Needs Debian's valgrind (`apt-get install -y valgrind`). Takes about a minute.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import Children, free_port
from targets import BenchDatabase, gateway_command, prepare_gateway, start_gateway, start_upstream
from wrk import BODY

CHAT = "/v1/chat/completions"
START_SECONDS = 300.0  # the gateway starts some fifty times slower under valgrind
WARMUP = 300
IDLE_SECONDS = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests counted (after the warm-up)")
    parser.add_argument("--workers", type=int, default=1, help="the gateway's worker processes")
    parser.add_argument("--connections", type=int, default=1, help="keep-alive connections, used in turn")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions: valgrind is not installed (apt-get install -y valgrind)", file=sys.stderr)
        return 1
    database = BenchDatabase()
    with tempfile.TemporaryDirectory(prefix="gateway-instructions-") as tmp:
        children = Children(Path(tmp), None)
        try:
            upstream = start_upstream(children, None)
            setup = prepare_gateway(database, upstream.url.removesuffix(CHAT), Path(tmp))
            # Started once as make bench starts it, for the API token; then again, under valgrind.
            token = start_gateway(children, None, setup, name="gateway", workers=1).headers["authorization"]
            children.stop("gateway")
            port = free_port()
            counts = Path(tmp, "counts")
            counts.mkdir()
            children.start(
                "gateway-callgrind",
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--trace-children=yes",  # uvicorn's workers are processes of their own
                    f"--callgrind-out-file={counts}/callgrind.out.%p",
                    *_serve(port, args.workers),
                ],
                cpu=None,
                env=setup.env,
            )
            _wait_for_workers(children, "gateway-callgrind", args.workers)
            clients = [_connect(port, token) for _ in range(args.connections)]
            _send(clients, token, WARMUP)
            before = _dump(counts)
            began = time.monotonic()
            _send(clients, token, args.requests)
            seconds = time.monotonic() - began
            after = _dump(counts)
            time.sleep(IDLE_SECONDS)  # nothing sent: what the background tasks cost by themselves
            idle = _dump(counts)
        finally:
            children.close()
            database.drop()
    spent = {pid: after[pid] - before.get(pid, 0) for pid in after}
    print(
        f"instructions per request: {sum(spent.values()) / args.requests:,.0f} (over {args.requests} requests, "
        f"{args.workers} worker(s), {args.connections} connection(s))"
    )
    # The background tasks run by the clock (the usage writer's flush, the journal's fsync, the revocation feed's
    # reads, the metrics' sampler), and under valgrind the requests take some fifty times longer: their share per
    # request is that many times what it is at full speed, so it is shown apart.
    background = sum(idle[pid] - after.get(pid, 0) for pid in idle) / IDLE_SECONDS * seconds
    print(
        f"of which the background tasks, by the clock: {background / args.requests:,.0f} per request "
        f"(measured idle for {IDLE_SECONDS:.0f} s); the requests' own: "
        f"{(sum(spent.values()) - background) / args.requests:,.0f}"
    )
    shares = ", ".join(f"{100 * n / sum(spent.values()):.0f}%" for n in sorted(spent.values(), reverse=True))
    print(f"by process (the workers, the supervisor): {shares}")
    return 0


def _serve(port: int, workers: int) -> list[str]:
    """`gateway serve` (its data directory and keys already made by the first start), but for uvicorn's worker
    health check: its supervisor restarts a worker that does not answer within 5 s, which one under valgrind,
    fifty times slower, often does not."""
    if workers == 1:
        return [*gateway_command(), "serve", "--port", str(port)]
    serve = (
        "import uvicorn; from gateway.cli import APP_FACTORY, uvicorn_options; "
        f"uvicorn.run(APP_FACTORY, factory=True, port={port}, workers={workers}, "
        f"timeout_worker_healthcheck={int(START_SECONDS)}, **uvicorn_options())"
    )
    return [sys.executable, "-c", serve]


def _wait_for_workers(children: Children, name: str, workers: int) -> None:
    """Until every worker has started its app (each logs uvicorn's startup line)."""
    deadline = time.monotonic() + START_SECONDS
    while children.logs[name].read_text(errors="replace").count("Application startup complete") < workers:
        children.check_alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"instructions: the gateway's workers did not start:\n{children.log_tail(name)}")
        time.sleep(1)


def _connect(port: int, token: str) -> http.client.HTTPConnection:
    """A keep-alive connection to the gateway, once it answers a chat completion."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            _send([client], token, 1)
            return client
        except (OSError, http.client.HTTPException):
            client.close()
            if time.monotonic() > deadline:
                raise SystemExit("instructions: the gateway did not start under valgrind") from None
            time.sleep(1)


def _send(clients: list[http.client.HTTPConnection], token: str, count: int) -> None:
    headers = {"authorization": token, "content-type": "application/json"}
    for sent in range(count):
        client = clients[sent % len(clients)]
        client.request("POST", CHAT, BODY, headers)
        response = client.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"instructions: the gateway answered {response.status}")


def _dump(counts: Path) -> dict[int, int]:
    """Instructions executed so far, by process: callgrind writes a part per dump (`callgrind.out.<pid>.<n>`),
    each with what ran since the one before."""
    subprocess.run(["callgrind_control", "--dump"], check=True, capture_output=True)
    totals: dict[int, int] = {}
    for part in counts.glob("callgrind.out.*"):
        found = re.search(r"^(?:totals|summary): (\d+)", part.read_text(errors="replace"), re.MULTILINE)
        pid = int(part.name.split(".")[2])
        totals[pid] = totals.get(pid, 0) + (int(found.group(1)) if found else 0)
    return totals


if __name__ == "__main__":
    sys.exit(main())
