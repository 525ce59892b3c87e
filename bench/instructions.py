"""Instructions per request: the production gateway under callgrind, for an A/B that this host's noise cannot move.

Time on this machine moves by a third from one minute to the next (docs/BENCHMARKS.md), so a change worth a few
percent cannot be seen in `make bench`'s figures. The number of instructions the gateway executes per request
can: valgrind counts them, whatever else the host is doing (two runs of the same code agree to within 0.5%). It
is not time (a cache miss costs more than an add), but a change that removes work shows here first.

The gateway runs as `make bench` runs it (Postgres, auth required, a real API token, usage capture) under
`valgrind --tool=callgrind`; one client sends a chat completion at a time over one keep-alive connection: a
warm-up, then the counters are dumped before and after `--requests` more.

    .venv/bin/python bench/instructions.py [--requests 1000]

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests counted (after the warm-up)")
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
            counts = Path(tmp, "callgrind.out")
            children.start(
                "gateway-callgrind",
                [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={counts}",
                    *gateway_command(),
                    "serve",
                    "--port",
                    str(port),
                ],
                cpu=None,
                env=setup.env,
            )
            client = _connect(port, token)
            valgrind = children.procs["gateway-callgrind"].pid
            _send(client, token, WARMUP)
            before = _dump(valgrind, counts)
            _send(client, token, args.requests)
            after = _dump(valgrind, counts)
        finally:
            children.close()
            database.drop()
    print(
        f"instructions per request: {(after - before) / args.requests:,.0f} (over {args.requests} requests)"
    )
    return 0


def _connect(port: int, token: str) -> http.client.HTTPConnection:
    """A keep-alive connection to the gateway, once it answers a chat completion."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            _send(client, token, 1)
            return client
        except (OSError, http.client.HTTPException):
            client.close()
            if time.monotonic() > deadline:
                raise SystemExit("instructions: the gateway did not start under valgrind") from None
            time.sleep(1)


def _send(client: http.client.HTTPConnection, token: str, count: int) -> None:
    headers = {"authorization": token, "content-type": "application/json"}
    for _ in range(count):
        client.request("POST", CHAT, BODY, headers)
        response = client.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"instructions: the gateway answered {response.status}")


def _dump(pid: int, counts: Path) -> int:
    """Instructions executed so far: callgrind writes a part per dump, each with what ran since the last."""
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    total = 0
    for part in counts.parent.glob(counts.name + "*"):
        found = re.search(r"^(?:totals|summary): (\d+)", part.read_text(errors="replace"), re.MULTILINE)
        total += int(found.group(1)) if found else 0
    return total


if __name__ == "__main__":
    sys.exit(main())
