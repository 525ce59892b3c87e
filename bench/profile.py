"""Profile the gateway in production under load: py-spy samples it while wrk (or the streaming client) loads it.

Starts the fake upstream and the gateway exactly as `run.py` does (Postgres, auth required, a real API token,
usage capture), pinned the same way, then records `--seconds` of samples under 64 clients and writes py-spy's
output (`--format raw` folded stacks, and a summary of the hottest functions by own and total time).

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py --seconds 10 [--stream] [--out /tmp/gateway-profile]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from processes import Children, DatabaseBeside, shallow_cpu_idle
from run import LoadGenerator, choose_cpus
from targets import BENCH, BenchDatabase, prepare_gateway, start_gateway, start_upstream
from wrk import run_wrk


def summarise(folded: Path, top: int = 40) -> str:
    """The functions with the most samples on top of the stack (own) and anywhere in it (total)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples", "", "own%   function"]
    lines += [f"{100 * n / samples:5.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total% function"]
    lines += [f"{100 * n / samples:5.1f}  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--stream", action="store_true", help="load with streams instead of plain requests")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gateway-profile")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    proxy_cpu, load_cpu, taskset, _ = choose_cpus(False)
    database = BenchDatabase()
    args.out.mkdir(parents=True, exist_ok=True)
    folded = args.out / ("streams.folded" if args.stream else "requests.folded")
    with (
        shallow_cpu_idle(True),
        DatabaseBeside(database.name, load_cpu),
        tempfile.TemporaryDirectory(prefix="gateway-profile-") as tmp,
    ):
        children = Children(Path(tmp), taskset)
        try:
            upstream = start_upstream(children, load_cpu)
            setup = prepare_gateway(database, upstream.url.removesuffix("/v1/chat/completions"), Path(tmp))
            gateway = start_gateway(children, proxy_cpu, setup, name="gateway", workers=1)
            load = LoadGenerator(
                children.start(
                    "loadgen", [sys.executable, str(BENCH / "loadgen.py")], cpu=load_cpu, pipes=True
                )
            )
            load.run(gateway, concurrency=args.concurrency, stream=args.stream, duration=0.0, warmup=2.0)
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(gateway.pid),
                    "--duration",
                    str(args.seconds),
                    "--rate",
                    "500",
                    "--format",
                    "raw",
                    "--output",
                    str(folded),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            pin = [taskset, "-c", str(load_cpu)] if taskset and load_cpu is not None else []
            if args.stream:
                worker = threading.Thread(
                    target=load.run,
                    args=(gateway,),
                    kwargs={
                        "concurrency": args.concurrency,
                        "stream": True,
                        "duration": args.seconds + 1,
                        "warmup": 0.0,
                    },
                )
                worker.start()
                worker.join()
            else:
                result = run_wrk(
                    gateway.url,
                    connections=args.concurrency,
                    seconds=args.seconds + 1,
                    headers=gateway.headers,
                    taskset=pin,
                )
                print(
                    f"profile: {result.rate:.0f} req/s under py-spy, {result.errors} errors", file=sys.stderr
                )
            _, spy_err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                print(spy_err.decode(errors="replace"), file=sys.stderr)
                return 1
        finally:
            children.close()
            database.drop()
    summary = summarise(folded)
    (folded.with_suffix(".txt")).write_text(summary)
    print(summary)
    print(f"\nprofile: folded stacks in {folded}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
