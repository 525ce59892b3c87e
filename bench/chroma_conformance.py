"""Chroma's own client tests, run against Chroma directly and through the gateway: `make chroma-conformance`.

The tests are the `chromadb/test/` tree of the installed `chromadb` (the version the suite pins): test_api.py,
api/, property/, configurations/ and test_multithreaded.py, on Chroma's own `integration` fixtures (the sync and
async HTTP clients, configured from the environment). Two runs side by side, each on a fresh `chroma run` of its own:
- direct: the clients at Chroma itself;
- gateway: the clients at `<gateway>/v1/chroma` with a `chroma`-scoped API token of one user (a `gateway serve`
  on SQLite in a temporary DATA_DIR, the user made by `gateway users create`, the token by the API).
Both load bench/chroma_conformance_plugin.py: the same skip list (commented there), the same user-level reset and
the same bound on hypothesis. The report (counts, and the tests that fail only through the gateway) goes to
docs/CHROMA_CONFORMANCE.md; the exit status is 1 when a test fails through the gateway and not directly.

    python bench/chroma_conformance.py                      # both runs, the report written
    python bench/chroma_conformance.py --only gateway -k by_id  # one run, a subset (pytest's -k), no report
    CONFORMANCE_MAX_EXAMPLES=50 python bench/chroma_conformance.py  # hypothesis' examples per test (default 10)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import chromadb
import httpx
from chroma_conformance_plugin import MAX_EXAMPLES, SKIPPED, STATEFUL_STEPS
from processes import Children, free_port, wait_until
from run import gateway_source, stop_on_signals
from targets import INHERITED, gateway_command

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
REPORT = ROOT / "docs" / "CHROMA_CONFORMANCE.md"
CHROMA_TESTS = Path(chromadb.__file__).parent / "test"
SUITE = ("test_api.py", "api", "property", "configurations", "test_multithreaded.py")
USER = "conformance@example.com"
# Chroma's repository runs these tests with this configuration (its pyproject's pytest section), not ours.
PYTEST_INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""


@dataclass
class Outcome:
    """One run's results by test id."""

    name: str
    seconds: float = 0.0
    passed: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # test id: the first line of its failure
    skipped: set[str] = field(default_factory=set)
    flaky: dict[str, str] = field(default_factory=dict)  # failed only through the gateway once, not again


def start_chroma(children: Children, name: str, workdir: Path) -> str:
    port = free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(
        f'persist_path: "{workdir / name}"\nport: {port}\nlisten_address: "127.0.0.1"\nallow_reset: true\n'
    )
    chroma = str(Path(sys.executable).parent / "chroma")
    children.start(name, [chroma, "run", str(config)], cpu=None, env=_env())
    url = f"http://127.0.0.1:{port}"
    wait_until(children, name, lambda: _answers(f"{url}/api/v2/heartbeat"))
    return url


def start_gateway(children: Children, chroma_url: str, workdir: Path) -> tuple[str, str]:
    """A gateway in front of `chroma_url`, and a `chroma`-scoped API token of its one user."""
    env = _env() | {
        "DATA_DIR": str(workdir / "gateway-data"),
        "CHROMA_BASE_URL": chroma_url,
        "CHROMA_API_KEY": "conformance-upstream-key",
        "ACCESS_LOG": "0",
    }
    password = secrets.token_urlsafe(24)
    for argv, stdin in ((["migrate"], ""), (["users", "create", "--email", USER], password + "\n")):
        done = subprocess.run(
            [*gateway_command(), *argv], env=env, cwd=workdir, input=stdin, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"conformance: gateway {argv[0]} failed:\n{done.stderr[-2000:]}")
    port = free_port()
    children.start("gateway", [*gateway_command(), "serve", "--port", str(port)], cpu=None, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(children, "gateway", lambda: _answers(f"{url}/health"))
    login = httpx.post(f"{url}/api/v1/auth/login", json={"email": USER, "password": password})
    login.raise_for_status()
    token = httpx.post(
        f"{url}/v1/api-tokens",
        json={"name": "conformance", "scopes": ["chroma"]},
        headers={"authorization": f"Bearer {login.json()['access_token']}"},
    )
    token.raise_for_status()
    return url, token.json()["token"]


def run_suite(
    name: str,
    host: str,
    headers: dict[str, str],
    workdir: Path,
    extra: Sequence[str],
    tests: Sequence[str] = (),
) -> Outcome:
    """pytest on Chroma's tests (the whole SUITE, or the test ids given), its clients at `host`."""
    rundir = workdir / f"pytest-{name}"
    rundir.mkdir()
    (rundir / "pytest.ini").write_text(PYTEST_INI)
    results = rundir / "results.json"
    env = _env() | {
        "PYTHONPATH": str(BENCH),
        "CHROMA_INTEGRATION_TEST_ONLY": "1",
        "CHROMA_SERVER_HOST": host,  # a full URL: the client takes its port from it, but requires this one too
        "CHROMA_SERVER_HTTP_PORT": str(urlsplit(host).port),
        "CHROMA_SERVER_HEADERS": json.dumps(headers),
        "ANONYMIZED_TELEMETRY": "False",
        "PROPERTY_TESTING_PRESET": "fast",
        "CONFORMANCE_RESULTS": str(results),
    }
    for key in ("CONFORMANCE_MAX_EXAMPLES", "CONFORMANCE_STATEFUL_STEPS"):
        if key in os.environ:
            env[key] = os.environ[key]
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(rundir / "pytest.ini"),
        "--rootdir",
        str(CHROMA_TESTS),  # test ids from there: test_api.py::test_add[integration-classic]
        "-p",
        "chroma_conformance_plugin",
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",  # api/ and property/ both have a test_schema.py, and no __init__.py
        "-v",  # the log names each test as it starts: a slow one is seen while it runs
        "--durations=25",
        "-o",
        "console_output_style=classic",
        *extra,
        *(str(CHROMA_TESTS / part) for part in (tests or SUITE)),
    ]
    print(f"conformance: {name}: pytest on {CHROMA_TESTS} at {host}", file=sys.stderr, flush=True)
    started = time.monotonic()
    with (rundir / "pytest.log").open("w") as log:
        subprocess.run(argv, cwd=rundir, env=env, stdout=log, stderr=subprocess.STDOUT)
    outcome = Outcome(name, seconds=time.monotonic() - started)
    if not results.exists():
        raise SystemExit(f"conformance: {name}: pytest wrote no results; see {rundir / 'pytest.log'}")
    for test, result in json.loads(results.read_text()).items():
        if result["outcome"] == "failed":
            outcome.failed[test] = result["message"]
        elif result["outcome"] == "skipped":
            outcome.skipped.add(test)
        else:
            outcome.passed.add(test)
    print(
        f"conformance: {name}: {len(outcome.passed)} passed, {len(outcome.failed)} failed, "
        f"{len(outcome.skipped)} skipped in {outcome.seconds:.0f} s (log: {rundir / 'pytest.log'})",
        file=sys.stderr,
        flush=True,
    )
    return outcome


def report(direct: Outcome, gateway: Outcome, source: str) -> str:
    only = sorted(set(gateway.failed) - set(direct.failed))
    rows = "\n".join(
        f"| {o.name} | {len(o.passed)} | {len(o.failed)} | {len(o.skipped)} | {o.seconds:.0f} s |"
        for o in (direct, gateway)
    )
    lines = [
        "# Chroma conformance",
        "",
        f"Chroma's own client tests (`chromadb/test/` of chromadb {chromadb.__version__}:",
        f"{', '.join(f'`{p}`' for p in SUITE)}) on its `integration` fixtures (the sync and async HTTP",
        "clients), against a fresh `chroma run` directly and through the gateway (`/v1/chroma`, one user's",
        "`chroma`-scoped API token), side by side, by `make chroma-conformance` (bench/chroma_conformance.py).",
        "Both runs skip the same tests (below; bench/chroma_conformance_plugin.py), do `reset` as a user can",
        "(the user's collections and databases deleted: the admin route is refused), and cap hypothesis at",
        f"{MAX_EXAMPLES} examples and {STATEFUL_STEPS} steps per test, without shrinking. Gateway at {source}.",
        "Skipped counts Chroma's own skips too (cluster-only tests, its async TODOs). No test here sends the",
        "server under test a bad credential (Chroma's auth tests start servers of their own), so none decides",
        "between Chroma's 403 `AuthError` and the gateway's 401 `AuthorizationError` (code 401 in chromadb.errors).",
        "",
        "| run | passed | failed | skipped | time |",
        "|---|---|---|---|---|",
        rows,
        "",
        "## Skipped in both runs, on purpose",
        "",
        *(f"- `{tests}`: {reason}" for tests, reason in SKIPPED.items()),
        "",
        f"## Failing only through the gateway: {len(only)}",
        "",
        *(f"- `{test}`: {gateway.failed[test]}" for test in only),
        *([] if only else ["None."]),
        "",
        *(
            [
                f"Failed only through the gateway once, but not when run again both ways (flaky): {len(gateway.flaky)}"
            ]
            + [f"- `{test}`: {message}" for test, message in sorted(gateway.flaky.items())]
            + [""]
            if gateway.flaky
            else []
        ),
        f"## Failing in both runs, so not the gateway's: {len(set(gateway.failed) & set(direct.failed))}",
        "",
        "Found when this report was written: the default embedding function downloads its ONNX model at first use",
        "(`Name or service not known` where there is no network), and Chroma 1.5.9 keeps a deleted collection's",
        "array metadata, which a new collection reusing the same record ids then shows (met here because `reset`",
        "deletes collections; Chroma's admin reset wipes its files instead).",
        "",
        *(f"- `{test}`: {direct.failed[test]}" for test in sorted(set(gateway.failed) & set(direct.failed))),
        "",
    ]
    direct_only = sorted(set(direct.failed) - set(gateway.failed))
    if direct_only:
        lines += [f"## Failing only directly: {len(direct_only)}", ""]
        lines += [f"- `{test}`: {direct.failed[test]}" for test in direct_only] + [""]
    return "\n".join(lines)


def _side_by_side(
    targets: dict[str, tuple[str, dict[str, str]]],
    workdir: Path,
    extra: Sequence[str],
    tests: Sequence[str] = (),
    suffix: str = "",
) -> dict[str, Outcome]:
    with ThreadPoolExecutor(len(targets)) as pool:
        futures = {
            name: pool.submit(run_suite, name + suffix, host, headers, workdir, extra, tests)
            for name, (host, headers) in targets.items()
        }
        return {name.removesuffix(suffix): future.result() for name, future in futures.items()}


def _answers(url: str) -> str | None:
    try:
        status = httpx.get(url, timeout=2).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__
    return None if status == 200 else f"HTTP {status}"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in INHERITED}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=("direct", "gateway"), help="one run, and no report written")
    parser.add_argument("-k", dest="keyword", help="pytest's -k: only the tests it selects")
    parser.add_argument(
        "--report", type=Path, default=REPORT, help=f"where the report goes (default {REPORT})"
    )
    args = parser.parse_args(argv)
    extra = ["-k", args.keyword] if args.keyword else []
    workdir = Path(tempfile.mkdtemp(prefix="chroma-conformance-"))
    runs = [name for name in ("direct", "gateway") if args.only in (None, name)]
    children = Children(workdir, None)
    with stop_on_signals():
        try:
            # Both servers first, then both runs side by side (each on a Chroma of its own): the same load on both.
            targets = (
                {"direct": (start_chroma(children, "chroma-direct", workdir), {})} if "direct" in runs else {}
            )
            if "gateway" in runs:
                gateway, token = start_gateway(
                    children, start_chroma(children, "chroma-gateway", workdir), workdir
                )
                targets["gateway"] = (f"{gateway}/v1/chroma", {"Authorization": f"Bearer {token}"})
            outcomes = _side_by_side(targets, workdir, extra)
            only = sorted(
                set(outcomes.get("gateway", Outcome("")).failed)
                - set(outcomes.get("direct", Outcome("")).failed)
            )
            if len(runs) == 2 and only:
                # Run once more, both ways: a test that fails only through the gateway again is the gateway's;
                # one that passes there now, or fails directly now, is flaky (threads, timing) and said so.
                again = _side_by_side(targets, workdir, extra, tests=only, suffix="-again")
                for test in only:
                    if test not in again["gateway"].failed or test in again["direct"].failed:
                        outcomes["gateway"].flaky[test] = outcomes["gateway"].failed.pop(test)
        finally:
            children.close()
    print(f"conformance: work directory {workdir}", file=sys.stderr)
    if args.only is not None:
        return 1 if outcomes[args.only].failed else 0
    direct, gateway = outcomes["direct"], outcomes["gateway"]
    args.report.write_text(report(direct, gateway, gateway_source()))
    only = set(gateway.failed) - set(direct.failed)
    print(
        f"conformance: {len(only)} failing only through the gateway; report in {args.report}", file=sys.stderr
    )
    return 1 if only else 0


if __name__ == "__main__":
    sys.exit(main())
