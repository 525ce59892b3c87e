"""API tokens in the dashboard: create one (its secret shown once, with a copy button that works), see it listed,
use it, revoke it."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import People, assert_accessible, screenshot, sign_in
from tests.serving import LiveServer


def test_create_copy_use_and_revoke_a_token(
    page: Page, people: People, dashboard_gateway: LiveServer
) -> None:
    sign_in(page, people.dana.login, "#/tokens")
    expect(page.get_by_role("heading", level=1)).to_have_text("API tokens")
    form = page.get_by_role("form", name="Create a token")
    # The scopes come from the gateway's own document; a new token gets the proxy scopes unless changed.
    expect(form.get_by_role("checkbox")).to_have_count(5)
    expect(form.get_by_role("checkbox", name="chat")).to_be_checked()
    expect(form.get_by_role("checkbox", name="usage:read")).not_to_be_checked()

    form.get_by_role("button", name="Create token").click()
    expect(form.get_by_role("alert")).to_have_text("Give the token a name, to tell it apart later.")

    form.get_by_label("Name").fill("reporting script")
    form.get_by_role("checkbox", name="chat").uncheck()
    form.get_by_role("checkbox", name="ocr").uncheck()
    form.get_by_role("checkbox", name="chroma").uncheck()
    form.get_by_role("button", name="Create token").click()
    expect(form.get_by_role("alert")).to_have_text("Choose at least one scope.")
    form.get_by_role("checkbox", name="usage:read").check()
    form.get_by_label("Expires").select_option(label="In 30 days")
    form.get_by_role("button", name="Create token").click()

    created = page.get_by_role("region", name="Token “reporting script” created")
    secret = created.get_by_label("Your new token")
    raw = secret.input_value()
    assert raw.startswith("gw_"), raw
    expect(created.get_by_role("button", name="Copy")).to_be_focused()
    created.get_by_role("button", name="Copy").click()
    expect(created.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("() => navigator.clipboard.readText()") == raw
    assert_accessible(page)
    screenshot(page, "tokens")

    # The token works, with its scope: it reads its user's usage.
    usage = httpx.get(f"{dashboard_gateway.url}/v1/usage?days=7", headers={"authorization": f"Bearer {raw}"})
    assert usage.status_code == 200, usage.text
    assert usage.json()["totals"]["requests"] == 4

    listed = page.get_by_role("region", name="Your tokens").locator("tr", has_text="reporting script")
    expect(listed).to_contain_text("usage:read")
    expect(listed).to_contain_text("Active")
    expect(listed).to_contain_text(raw[:8])
    assert raw not in page.get_by_role("region", name="Your tokens").inner_text()

    # Shown once: gone once dismissed, and not there when the page is opened again.
    created.get_by_role("button", name="Done").click()
    expect(page.get_by_label("Your new token")).to_have_count(0)
    page.reload()
    expect(listed).to_be_visible()
    assert raw not in page.content()

    page.once("dialog", lambda dialog: dialog.accept())
    listed.get_by_role("button", name="Revoke reporting script").click()
    expect(listed).to_contain_text("Revoked")
    expect(listed.get_by_role("button")).to_have_count(0)
    refused = httpx.get(f"{dashboard_gateway.url}/v1/usage", headers={"authorization": f"Bearer {raw}"})
    assert refused.status_code == 401


def test_a_revocation_cancelled_keeps_the_token(page: Page, people: People) -> None:
    sign_in(page, people.erin.login, "#/tokens")
    form = page.get_by_role("form", name="Create a token")
    form.get_by_label("Name").fill("keep me")
    form.get_by_role("button", name="Create token").click()
    expect(page.get_by_label("Your new token")).to_be_visible()
    listed = page.get_by_role("region", name="Your tokens").locator("tr", has_text="keep me")
    page.once("dialog", lambda dialog: dialog.dismiss())
    listed.get_by_role("button", name="Revoke keep me").click()
    expect(listed).to_contain_text("Active")
    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    assert_accessible(page)


def test_a_tokens_limits_are_shown(page: Page, people: People, dashboard_gateway: LiveServer) -> None:
    login = httpx.post(f"{dashboard_gateway.url}/api/v1/auth/login", json=people.admin.login)
    assert login.status_code == 200, login.text
    created = httpx.post(
        f"{dashboard_gateway.url}/v1/api-tokens",
        json={
            "name": "capped",
            "limits": {
                "usd_per_period": 5,
                "tokens_per_period": 20000,
                "period": "day",
                "requests_per_minute": 100,
            },
        },
        headers={"authorization": f"Bearer {login.json()['access_token']}"},
    )
    assert created.status_code == 201, created.text

    sign_in(page, people.admin.login, "#/tokens")
    listed = page.get_by_role("region", name="Your tokens").locator("tr", has_text="capped")
    limits = listed.get_by_role("listitem")
    expect(limits).to_have_text(["$0.00 of $5.00 today", "0 of 20,000 tokens today", "100 requests a minute"])
