"""The pytest plugin `make chroma-conformance` loads into Chroma's own client tests (`chromadb/test/`).

Three things, the same in both runs (against Chroma directly and through the gateway), so that the gateway is the
only difference between them:
- SKIPPED: the tests left out, each with its reason;
- `reset()` done as a user can: Chroma's tests start from an empty server by calling the admin route
  `POST /api/v2/reset`, which the gateway refuses (it would empty every user's data); the client's `reset` is
  replaced by deleting the caller's own collections and databases, through the same client API under test;
- hypothesis bounded (CONFORMANCE_MAX_EXAMPLES, CONFORMANCE_STATEFUL_STEPS) so that a run fits in CI.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import pytest
from _pytest.nodes import Node

# Test-id prefixes (pytest's rootdir is `chromadb/test/`) and why each is left out of both runs.
SKIPPED: dict[str, str] = {
    # The admin routes a namespaced user must not have. The gateway refuses them (403, gateway/chroma/routes.py's
    # REFUSED) because each reaches across users or changes the server.
    "test_api.py::test_reset_db": "reset empties the whole server, every user's data: refused on purpose",
    "api/test_list_databases.py::test_list_databases_with_limit_offset": (
        "creates tenants, the operator's: refused on purpose"
    ),
    "property/test_collections_with_database_tenant.py": "creates tenants, the operator's: refused on purpose",
    "property/test_collections_with_database_tenant_overwrite.py": (
        "creates tenants, the operator's: refused on purpose"
    ),
    # Tests of something other than the HTTP API: they start servers or clients of their own (in-process, SSL,
    # auth, a persistent directory restarted), never the server under test, so they cannot tell the runs apart.
    "property/test_add_mcmr.py": "multi-region: two clients of its own at localhost:8000 and :8001, no server there",
    "property/test_persist.py": "restarts an in-process persistent server of its own, not the one under test",
    "property/test_restart_persist.py": "restarts an in-process persistent server of its own",
    "property/test_cross_version_persist.py": "installs older chromadb releases from PyPI into a venv",
}

GATEWAY_URL = os.environ.get("CHROMA_SERVER_HOST", "")
HEADERS: dict[str, str] = {}


def _ignore_rename(node: Node, nodeid: str) -> None:
    pass


def pytest_configure(config: pytest.Config) -> None:
    # Chroma's conftest appends `[single-region]` to every test id through `item._nodeid`, which pytest 9 no
    # longer has (AttributeError while collecting): read, it is the id; written, ignored (pytest's ids stay).
    Node._nodeid = property(lambda node: node.nodeid, _ignore_rename)  # type: ignore[attr-defined]
    HEADERS.update(json.loads(os.environ.get("CHROMA_SERVER_HEADERS") or "{}"))
    _patch_reset()
    _cap_state_machines()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _cap_examples(items)
    for item in items:
        for fragment, reason in SKIPPED.items():
            if item.nodeid.startswith(fragment):
                item.add_marker(pytest.mark.skip(reason=f"conformance: {reason}"))
                break


MAX_EXAMPLES = int(os.environ.get("CONFORMANCE_MAX_EXAMPLES", "10"))
STATEFUL_STEPS = int(os.environ.get("CONFORMANCE_STATEFUL_STEPS", "10"))


def _capped(settings: hypothesis.settings | None) -> hypothesis.settings:
    """A test's own settings, with at most the run's examples and steps (Chroma's are up to 500 and 100)."""
    parent = settings or hypothesis.settings.default
    return hypothesis.settings(
        parent,
        max_examples=min(parent.max_examples, MAX_EXAMPLES),
        stateful_step_count=min(parent.stateful_step_count, STATEFUL_STEPS),
        database=None,
        verbosity=hypothesis.Verbosity.normal,
        # Health checks judge the strategies (too much filtered, too slow to generate), not the server: in a run
        # whose point is the server, one would fail a test at random in either run.
        suppress_health_check=list(hypothesis.HealthCheck),
        # No shrinking (what Chroma's CI_REPRODUCE_ONLY mode does too): a failure is reported as found, at once;
        # shrinking a stateful test's failure against a server can take longer than the whole run.
        phases=(hypothesis.Phase.explicit, hypothesis.Phase.reuse, hypothesis.Phase.generate),
        # The same examples in both runs, every time: a difference between them is the server's, not the draw's.
        derandomize=True,
    )


def _cap_examples(items: list[pytest.Item]) -> None:
    """`@given` fixed each test's settings when its module was imported: they are replaced on the test."""
    for item in items:
        test = getattr(item, "obj", None)
        if test is not None and hasattr(test, "_hypothesis_internal_use_settings"):
            test._hypothesis_internal_use_settings = _capped(test._hypothesis_internal_use_settings)


def _cap_state_machines() -> None:
    """Stateful tests pass their settings (or none) to `run_state_machine_as_test` when they run."""
    import hypothesis.stateful

    run = hypothesis.stateful.run_state_machine_as_test

    def capped_run(factory: Any, *, settings: hypothesis.settings | None = None, **kwargs: Any) -> None:
        run(factory, settings=_capped(settings), **kwargs)

    hypothesis.stateful.run_state_machine_as_test = capped_run


RESULTS: dict[str, dict[str, str]] = {}  # test id: {"outcome": passed|failed|skipped, "message": ...}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's outcome: failed if any phase failed, skipped if one skipped, else passed."""
    if report.failed:
        RESULTS[report.nodeid] = {"outcome": "failed", "message": _first_line(report)}
        pytest_sessionfinish()  # written at once too, for a look while the run goes on
    elif report.skipped:
        RESULTS[report.nodeid] = {"outcome": "skipped", "message": str(report.longrepr)[-200:]}
    elif report.when == "call" and report.nodeid not in RESULTS:
        RESULTS[report.nodeid] = {"outcome": "passed", "message": ""}


def pytest_sessionfinish() -> None:
    path = os.environ.get("CONFORMANCE_RESULTS")
    if path:
        with open(path, "w") as out:
            json.dump(RESULTS, out, indent=1, sort_keys=True)


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return f"{report.when}: {text.strip().splitlines()[0][:200] if text.strip() else '?'}"


def user_reset() -> bool:
    """What `reset` can be for one user: every collection of theirs deleted, every database but the default."""
    base = f"{GATEWAY_URL.rstrip('/')}/api/v2/tenants/default_tenant/databases"
    with httpx.Client(headers=HEADERS, timeout=60) as http:
        databases = http.get(base, params={"limit": 1000})
        databases.raise_for_status()
        for database in databases.json():
            name = quote(database["name"], safe="")
            while True:
                page = http.get(f"{base}/{name}/collections", params={"limit": 1000})
                page.raise_for_status()
                collections = page.json()
                if not collections:
                    break
                for collection in collections:
                    http.delete(
                        f"{base}/{name}/collections/{quote(collection['name'], safe='')}"
                    ).raise_for_status()
            if database["name"] != "default_database":
                http.delete(f"{base}/{name}").raise_for_status()
    return True


def _patch_reset() -> None:
    from chromadb.api.async_fastapi import AsyncFastAPI
    from chromadb.api.fastapi import FastAPI

    def reset(self: Any) -> bool:
        return user_reset()

    async def async_reset(self: Any) -> bool:
        return user_reset()

    FastAPI.reset = reset  # type: ignore[method-assign]
    AsyncFastAPI.reset = async_reset  # type: ignore[method-assign]
