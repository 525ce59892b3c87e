"""The dashboard in a real browser: Debian's chromium driven by Playwright (no browser download), against a gateway
served on loopback with users and usage rows seeded so that every figure the page shows is known beforehand.

- `dashboard_gateway`: a gateway for each test module (on SQLite and on Postgres, as `gateway_env` goes) that
  reads a usage dataset of its own, so that no other module's traffic (an agent's chat, say) shows in its figures.
- `people`: an admin and two users of it, with usage rows seeded when the module starts (their timestamps relative
  to then: a module's tests finish well within the 5 minutes that keep the newest in the 10-minute rollup).
- `page`: a fresh browser context at 1440 x 900; the test fails on any uncaught error or CSP violation in it.
- `sign_in(page, login)`, `assert_accessible(page)` (axe-core: no serious or critical violation) and
  `screenshot(page, name)` (docs/screenshots/<name>-1440.png and -375.png).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from gateway.settings import Settings
from tests.conftest import GatewayFactory, add_user
from tests.integration.test_usage_routes import insert_rows, row
from tests.serving import LiveServer

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
WIDE = {"width": 1440, "height": 900}
NARROW = {"width": 375, "height": 812}
PASSWORD = "correct horse battery staple"
# Messages the browser logs that are not the page's faults: the 401 that starts a renewal or a sign-in.
EXPECTED_CONSOLE = ("Failed to load resource",)
# `expect()` has a timeout of its own (5 s by default) that the page's default does not change: the same 10 s
# for the assertions as for the page's waits, on a host the suite's other workers keep busy.
expect.set_options(timeout=10_000)


@dataclass
class Person:
    """A user of the dashboard gateway: their login and id, and the usage rows seeded for them."""

    email: str
    user_id: str
    is_admin: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def login(self) -> dict[str, str]:
        return {"email": self.email, "password": PASSWORD}


@dataclass
class People:
    admin: Person
    dana: Person  # an ordinary user with every kind of usage
    erin: Person  # another, so that the admin's whole view differs from either user's
    dataset: str

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [*self.dana.rows, *self.erin.rows]


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's chromium (`apt-get install chromium`), never a browser Playwright downloads. One per test: the
    sync API keeps an event loop running in this thread while it lives, and session fixtures set up later (the
    Postgres half's database) call `asyncio.run` here."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def dashboard_dataset() -> str:
    return f"dashboard_{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def dashboard_gateway(start_gateway: GatewayFactory, dashboard_dataset: str) -> Iterator[LiveServer]:
    with start_gateway(ANALYTICS_DATASET=dashboard_dataset) as server:
        yield server


def seeded_rows(
    dataset: str, user_id: str, now: datetime, specs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    return [row(dataset, user_id=user_id, at=now - spec.pop("ago"), **spec) for spec in specs]


@pytest.fixture(scope="module")
def people(dashboard_gateway: LiveServer, gateway_env: dict[str, str], dashboard_dataset: str) -> People:
    """Three fresh users and their usage (`dana_usage`, `erin_usage`). Seeded in a thread of its own: Playwright's
    sync API keeps an event loop running in the tests' thread, where `asyncio.run` cannot start another."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(seed, gateway_env, dashboard_dataset).result()


def seed(gateway_env: dict[str, str], dashboard_dataset: str) -> People:
    url = Settings.from_env(gateway_env, env_file=None).database_url
    suffix = uuid.uuid4().hex[:8]

    def person(name: str, *, is_admin: bool = False) -> Person:
        email = f"{name}-{suffix}@example.com"
        user_id = asyncio.run(add_user(url, email=email, password=PASSWORD, is_admin=is_admin))
        return Person(email, user_id, is_admin)

    people = People(person("admin", is_admin=True), person("dana"), person("erin"), dashboard_dataset)
    now = datetime.now(UTC)
    people.dana.rows = seeded_rows(dashboard_dataset, people.dana.user_id, now, dana_usage())
    people.erin.rows = seeded_rows(dashboard_dataset, people.erin.user_id, now, erin_usage())
    insert_rows(url, people.rows)
    return people


def dana_usage() -> list[dict[str, Any]]:
    """Five requests: two chats in the last hours, an OCR two days ago, an error five days ago, and a chat 20 days
    ago (in the 30-day chart, not in the 7-day figures)."""
    chat = {"request_type": "chat", "provider": "openai", "path": "/v1/chat/completions"}
    return [
        {**chat, "ago": timedelta(minutes=5), "model": "gpt-4o-mini", "input_tokens": 1000,
         "output_tokens": 500, "total_tokens": 1500, "input_cost_usd": 0.0002, "output_cost_usd": 0.0003},
        {**chat, "ago": timedelta(hours=3), "model": "gpt-4.1", "input_tokens": 2000, "output_tokens": 1000,
         "total_tokens": 3000, "input_cost_usd": 0.004, "output_cost_usd": 0.008},
        {"ago": timedelta(days=2), "request_type": "ocr", "provider": "mistral", "model": "mistral-ocr-latest",
         "path": "/v1/ocr", "ocr_pages": 12, "ocr_cost_usd": 0.012},
        {**chat, "ago": timedelta(days=5), "model": "gpt-4o-mini", "status": 502},
        {**chat, "ago": timedelta(days=20), "model": "gpt-4.1", "input_tokens": 8000, "output_tokens": 2000,
         "total_tokens": 10000, "input_cost_usd": 0.016, "output_cost_usd": 0.016},
    ]  # fmt: skip


def erin_usage() -> list[dict[str, Any]]:
    return [
        {"ago": timedelta(minutes=30), "model": "gpt-4o", "input_tokens": 3000, "output_tokens": 1000,
         "total_tokens": 4000, "input_cost_usd": 0.0075, "output_cost_usd": 0.01},
        {"ago": timedelta(days=1, hours=1), "model": "text-embedding-3-small", "path": "/v1/embeddings",
         "request_type": "embeddings", "input_tokens": 800, "total_tokens": 800, "input_cost_usd": 0.000016},
    ]  # fmt: skip


@pytest.fixture
def page(browser: Browser, dashboard_gateway: LiveServer) -> Iterator[Page]:
    """A fresh context (no cookies) at 1440 px; any uncaught error or console error of the page fails the test."""
    context = browser.new_context(base_url=dashboard_gateway.url, viewport=WIDE)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=dashboard_gateway.url)
    context.add_init_script(path=AXE)  # as the browser's own script: the page's CSP allows no inline one
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith(EXPECTED_CONSOLE):
            problems.append(f"console: {message.text}")

    page.on("console", console)
    page.set_default_timeout(10_000)
    yield page
    context.close()
    assert not problems, problems


def open_dashboard(page: Page, hash_route: str = "#/usage") -> None:
    page.goto(f"/dashboard{hash_route}")


def sign_in(page: Page, login: dict[str, str], hash_route: str = "#/usage") -> None:
    """Opens the dashboard (unless it is open) and signs in through its dialog."""
    if "/dashboard" not in page.url:
        open_dashboard(page, hash_route)
    dialog = page.get_by_role("dialog", name="Sign in")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Email").fill(login["email"])
    dialog.get_by_label("Password").fill(login["password"])
    dialog.get_by_role("button", name="Sign in").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def assert_accessible(page: Page) -> None:
    """axe-core over the page as it is: no serious or critical violation (the list names each one's nodes)."""
    results = page.evaluate("async () => (await axe.run(document)).violations")
    bad = [
        (v["id"], v["impact"], v["help"], [node["target"] for node in v["nodes"]][:5])
        for v in results
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, bad


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    """docs/screenshots/<name>-1440.png and <name>-375.png, the whole page at each width (or what a screen of that
    size shows, for a dialog over the page); back to 1440 after."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => document.getElementById('toasts').replaceChildren()")  # passing messages
    for size in (WIDE, NARROW):
        page.set_viewport_size(size)
        page.wait_for_timeout(300)  # the charts redraw at the new width
        page.screenshot(path=SCREENSHOTS / f"{name}-{size['width']}.png", full_page=full_page)
    page.set_viewport_size(WIDE)
    page.wait_for_timeout(300)
