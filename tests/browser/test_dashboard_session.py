"""Sessions in the dashboard: the refresh cookie renews an expired access token without a word, and a session that
has ended asks for a sign-in over the page, which keeps what it showed and carries on with what was asked."""

from __future__ import annotations

import time

from playwright.sync_api import Page, Route, expect

from tests.browser.conftest import People, assert_accessible, screenshot, sign_in

TOKENS = "#view [data-figure='tokens'] .tile-value"


def chart_days(page: Page) -> int:
    days: int = page.evaluate("() => document.getElementById('usage-chart').uplot.data[0].length")
    return days


def mark_the_view(page: Page) -> None:
    """Tags the page's current elements: a view drawn again would lose the tag."""
    page.evaluate("() => { document.querySelector(\"[data-figure='tokens']\").dataset.seen = 'before'; }")


def test_an_expired_access_token_is_renewed_silently(page: Page, people: People) -> None:
    sign_in(page, people.dana.login)
    expect(page.locator(TOKENS)).to_have_text("4,500")
    first_session = next(c for c in page.context.cookies() if c["name"] == "gw_session")["value"]
    page.context.clear_cookies(name="gw_session")  # as the browser drops it when its max-age ends

    with page.expect_response("**/api/v1/auth/refresh") as refreshed:
        page.get_by_text("30 days", exact=True).click()
    assert refreshed.value.status == 200
    page.wait_for_function("() => document.getElementById('usage-chart').uplot.data[0].length === 30")
    expect(page.get_by_role("dialog", name="Sign in")).to_be_hidden()
    renewed = next(c for c in page.context.cookies() if c["name"] == "gw_session")["value"]
    assert renewed != first_session


def test_an_ended_session_asks_to_sign_in_over_the_page_and_carries_on(page: Page, people: People) -> None:
    sign_in(page, people.dana.login)
    expect(page.locator(TOKENS)).to_have_text("4,500")
    mark_the_view(page)
    page.context.clear_cookies()  # access and refresh both gone: the session has ended

    page.get_by_text("30 days", exact=True).click()
    dialog = page.get_by_role("dialog", name="Sign in")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Your session has ended. Sign in to carry on where you were.")
    expect(page.get_by_label("Email")).to_be_focused()
    # What the page showed is still there, behind the dialog.
    expect(page.locator(TOKENS)).to_have_text("4,500")
    assert chart_days(page) == 7
    assert_accessible(page)
    screenshot(page, "session-ended", full_page=False)

    dialog.get_by_label("Email").fill(people.dana.email)
    dialog.get_by_label("Password").fill(people.dana.login["password"])
    dialog.get_by_label("Password").press("Enter")
    expect(dialog).to_be_hidden()
    # The request that met the ended session went on: the 30-day chart, in the same view, not a fresh one.
    page.wait_for_function("() => document.getElementById('usage-chart').uplot.data[0].length === 30")
    assert page.evaluate("() => document.querySelector(\"[data-figure='tokens']\").dataset.seen") == "before"


def test_someone_else_signing_in_over_the_page_gets_their_own_view(page: Page, people: People) -> None:
    sign_in(page, people.dana.login)
    expect(page.locator(TOKENS)).to_have_text("4,500")
    page.context.clear_cookies()
    page.get_by_role("link", name="API tokens").click()
    sign_in(page, people.erin.login)
    expect(page.get_by_text(people.erin.email)).to_be_visible()
    page.get_by_role("link", name="Usage").click()
    expect(page.locator(TOKENS)).to_have_text("4,800")


def test_requests_that_meet_an_expired_session_together_share_one_refresh(page: Page, people: People) -> None:
    """A refresh token is single use, and a reused one ends its whole family: two renewals at once would sign
    the user out. The page's API calls that get a 401 together wait for one."""
    sign_in(page, people.dana.login, "#/tokens")
    expect(page.get_by_role("heading", level=1)).to_have_text("API tokens")
    refreshes: list[int] = []
    page.on(
        "response", lambda r: refreshes.append(r.status) if r.url.endswith("/api/v1/auth/refresh") else None
    )
    page.context.clear_cookies(name="gw_session")

    emails = page.evaluate(
        """async () => {
            const { api } = await import('/dashboard/static/api.js');
            const calls = [
                api('/api/v1/auth/me'), api('/v1/api-tokens'), api('/api/v1/auth/me'), api('/v1/users').catch(e => e),
            ];
            const [first, tokens, second, users] = await Promise.all(calls);
            return [first.user.email, Array.isArray(tokens.data), second.user.email, users.status, users.code];
        }"""
    )
    assert emails == [people.dana.email, True, people.dana.email, 403, "admin_only"]
    assert refreshes == [200]
    expect(page.get_by_role("dialog", name="Sign in")).to_be_hidden()


def test_a_401_that_arrives_after_the_shared_refresh_is_only_sent_again(page: Page, people: People) -> None:
    """A request sent with the expired session whose 401 comes back once the renewal is done (a slow route, a busy
    host) is sent again on the renewed session, not given a renewal of its own."""
    sign_in(page, people.dana.login, "#/tokens")
    expect(page.get_by_role("heading", level=1)).to_have_text("API tokens")
    refreshes: list[int] = []
    page.on(
        "response", lambda r: refreshes.append(r.status) if r.url.endswith("/api/v1/auth/refresh") else None
    )
    slow: list[int] = []

    def answer_late(route: Route) -> None:
        response = route.fetch()
        slow.append(response.status)
        if response.status == 401:
            time.sleep(1)  # the other request's renewal ends meanwhile
        route.fulfill(response=response)

    page.route("**/v1/users", answer_late)
    page.context.clear_cookies(name="gw_session")

    answers = page.evaluate(
        """async () => {
            const { api } = await import('/dashboard/static/api.js');
            const [me, users] = await Promise.all([api('/api/v1/auth/me'), api('/v1/users').catch(e => e)]);
            return [me.user.email, users.status, users.code];
        }"""
    )
    assert answers == [people.dana.email, 403, "admin_only"]
    assert slow == [401, 403]
    assert refreshes == [200]
