"""The dashboard's shell: served by the gateway itself, sign-in and sign-out through its dialog, the nav."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import People, assert_accessible, open_dashboard, sign_in
from tests.serving import LiveServer


def test_the_page_and_its_files_come_from_the_gateway_with_a_strict_policy(
    dashboard_gateway: LiveServer,
) -> None:
    page = httpx.get(f"{dashboard_gateway.url}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert '<script type="module" src="/dashboard/static/app.js">' in page.text
    for name in ("app.js", "api.js", "usage.js", "tokens.js", "style.css", "vendor/uPlot.esm.js"):
        served = httpx.get(f"{dashboard_gateway.url}/dashboard/static/{name}")
        assert served.status_code == 200, name
        assert served.headers["content-security-policy"] == policy
        assert served.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{dashboard_gateway.url}/dashboard/static/../__init__.py").status_code == 404
    assert httpx.get(f"{dashboard_gateway.url}/dashboard/static/missing.js").status_code == 404


def test_sign_in_shows_the_user_and_sign_out_asks_again(page: Page, people: People) -> None:
    open_dashboard(page)
    dialog = page.get_by_role("dialog", name="Sign in")
    expect(dialog).to_be_visible()
    assert_accessible(page)

    dialog.get_by_label("Email").fill(people.dana.email)
    dialog.get_by_label("Password").fill("not the password")
    dialog.get_by_role("button", name="Sign in").click()
    expect(dialog.get_by_role("alert")).to_have_text("That email and password do not match an account.")

    sign_in(page, people.dana.login)
    expect(page.get_by_text(people.dana.email)).to_be_visible()
    expect(page.get_by_role("link", name="Usage")).to_have_attribute("aria-current", "page")
    page.get_by_role("link", name="API tokens").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("API tokens")
    expect(page).to_have_title("API tokens · Gateway dashboard")

    page.get_by_role("button", name="Sign out").click()
    expect(dialog).to_be_visible()
    expect(page.locator("#view")).to_be_empty()
    assert not [c for c in page.context.cookies() if c["name"] in ("gw_session", "gw_refresh")]
    # Signed out for the gateway too: a reload asks again.
    page.reload()
    expect(page.get_by_role("dialog", name="Sign in")).to_be_visible()


def focused(page: Page) -> str:
    text: str = page.evaluate("() => document.activeElement.textContent.trim() || document.activeElement.id")
    return text


def test_the_keyboard_alone_signs_in_and_moves_around_with_the_focus_shown(
    page: Page, people: People
) -> None:
    open_dashboard(page)
    expect(page.get_by_label("Email")).to_be_focused()
    page.keyboard.type(people.dana.email)
    page.keyboard.press("Tab")
    page.keyboard.type(people.dana.login["password"])
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    page.locator("body").focus()
    page.keyboard.press("Tab")
    assert focused(page) == "Skip to the content"
    expect(page.get_by_role("link", name="Skip to the content")).to_be_in_viewport()
    page.keyboard.press("Tab")
    assert focused(page) == "Usage"
    page.keyboard.press("Tab")
    assert focused(page) == "API tokens"
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("API tokens")
    expect(page.locator("#view")).to_be_focused()  # the view itself, so that a screen reader starts there
    page.keyboard.press("Tab")
    expect(page.get_by_label("Name")).to_be_focused()
