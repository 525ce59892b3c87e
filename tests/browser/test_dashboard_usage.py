"""The usage page in a browser, against seeded rows: the figures, the chart's data, the rollups, the tables, and
an admin's whole-gateway view narrowed to one user."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import People, assert_accessible, screenshot, sign_in


def daily(rows: list[dict[str, Any]], days: int) -> dict[str, tuple[int, float]]:
    """(tokens, cost) per UTC day of the last `days` days, as /v1/usage/daily buckets the rows."""
    today = datetime.now(UTC).date()
    buckets: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for offset in range(days):
        buckets[(today - timedelta(days=offset)).isoformat()]
    for row in rows:
        day = row["created_at"].date()
        if (today - day).days < days:
            bucket = buckets[day.isoformat()]
            bucket[0] += row["total_tokens"]
            bucket[1] += row["input_cost_usd"] + row["output_cost_usd"] + row["ocr_cost_usd"]
    return {day: (int(tokens), cost) for day, (tokens, cost) in sorted(buckets.items())}


def chart_data(page: Page) -> dict[str, tuple[int, float]]:
    """The figures the chart was drawn from, by UTC day."""
    xs, tokens, costs = page.evaluate("() => document.getElementById('usage-chart').uplot.data")
    days = [datetime.fromtimestamp(x, UTC).date().isoformat() for x in xs]
    return {day: (int(t), c) for day, t, c in zip(days, tokens, costs, strict=True)}


def assert_chart(page: Page, rows: list[dict[str, Any]], days: int) -> None:
    """The chart drawn from `rows`, once it has been drawn again (after a change of range or of user)."""
    expected = daily(rows, days)
    tokens = [tokens for tokens, _ in expected.values()]
    page.wait_for_function(
        """tokens => {
            const data = document.getElementById('usage-chart').uplot?.data;
            return data && data[1].length === tokens.length && data[1].every((t, i) => t === tokens[i]);
        }""",
        arg=tokens,
    )
    drawn = chart_data(page)
    assert drawn.keys() == expected.keys()
    for day, (day_tokens, cost) in expected.items():
        assert drawn[day][0] == day_tokens, day
        assert abs(drawn[day][1] - cost) < 1e-9, day


def expect_figure(page: Page, key: str, text: str) -> None:
    expect(page.locator(f"#view [data-figure='{key}'] .tile-value")).to_have_text(text)


def expect_rollup(page: Page, window: str, text: str) -> None:
    """`text` is the tile's value and its note: `1,500 tokens | 1 request · $0.0005`."""
    value, note = text.split(" | ")
    tile = page.locator(f"#view [data-window='{window}']")
    expect(tile.locator(".tile-value")).to_have_text(value)
    expect(tile.locator(".tile-note")).to_have_text(note)


def table_rows(page: Page, title: str, count: int) -> list[list[str]]:
    table = page.get_by_role("region", name=title).locator("tbody tr")
    expect(table).to_have_count(count)
    return [[cell.strip() for cell in row.locator("td").all_inner_texts()] for row in table.all()]


def test_a_user_sees_their_own_figures_drawn_from_the_seeded_rows(page: Page, people: People) -> None:
    sign_in(page, people.dana.login)
    expect(page.get_by_role("heading", name="Last 7 days")).to_be_visible()
    expect(page.locator("#usage-scope")).to_have_text("Your own usage.")
    expect(page.get_by_label("Whose usage")).to_have_count(0)

    expect_figure(page, "requests", "4")
    expect_figure(page, "errors", "1")
    expect(page.locator("#view [data-figure='errors'] .tile-note")).to_have_text("of 4 requests (25%)")
    expect_figure(page, "tokens", "4,500")
    expect(page.locator("#view [data-figure='tokens'] .tile-note")).to_have_text("3,000 in · 1,500 out")
    expect_figure(page, "cost", "$0.0245")
    expect_figure(page, "ocr-pages", "12")
    expect_figure(page, "ocr-cost", "$0.012")
    expect_figure(page, "latency", "10 ms")

    expect_rollup(page, "10m", "1,500 tokens | 1 request · $0.0005")
    expect_rollup(page, "1h", "1,500 tokens | 1 request · $0.0005")
    expect_rollup(page, "6h", "4,500 tokens | 2 requests · $0.0125")
    expect_rollup(page, "24h", "4,500 tokens | 2 requests · $0.0125")
    expect_rollup(page, "7d", "4,500 tokens | 4 requests · $0.0245")

    assert table_rows(page, "Top models", 3) == [  # by requests, then by name
        ["gpt-4o-mini", "2", "1", "1,500", "$0.0005"],
        ["gpt-4.1", "1", "0", "3,000", "$0.012"],
        ["mistral-ocr-latest", "1", "0", "0", "$0.012"],
    ]
    assert table_rows(page, "Top paths", 2) == [
        ["/v1/chat/completions", "3", "1", "4,500", "$0.0125"],
        ["/v1/ocr", "1", "0", "0", "$0.012"],
    ]

    assert_chart(page, people.dana.rows, 7)
    # The table under the chart says the same, day by day; today's row first.
    page.get_by_text("The chart's figures, day by day").click()
    today = datetime.now(UTC).date().isoformat()
    today_row = page.locator(f"#usage-daily tr[data-date='{today}'] td").all_inner_texts()
    assert today_row[1] == f"{daily(people.dana.rows, 7)[today][0]:,}"
    expect(page.locator("#usage-daily tbody tr")).to_have_count(7)
    assert_accessible(page)
    screenshot(page, "usage")

    # 30 days: the chat of 20 days ago is drawn too; the 7-day figures above do not move.
    page.get_by_text("30 days", exact=True).click()
    assert_chart(page, people.dana.rows, 30)
    expect_figure(page, "tokens", "4,500")
    page.get_by_text("90 days", exact=True).click()
    assert_chart(page, people.dana.rows, 90)
    page.get_by_text("The chart's figures, day by day").click()  # closed again
    screenshot(page, "usage-90-days")


def test_an_admin_sees_the_whole_gateway_and_narrows_it_to_one_user(page: Page, people: People) -> None:
    sign_in(page, people.admin.login)
    expect(page.locator("#usage-scope")).to_have_text("The whole gateway: every user's usage.")
    expect_figure(page, "requests", "6")
    expect_figure(page, "tokens", "9,300")
    expect_figure(page, "cost", "$0.042")
    assert_chart(page, people.rows, 7)
    assert_accessible(page)
    screenshot(page, "usage-admin")

    picker = page.get_by_label("Whose usage")
    picker.select_option(label=people.erin.email)
    expect(page.locator("#usage-scope")).to_have_text(f"One user's usage: {people.erin.email}.")
    expect(page.locator("#view [data-figure='requests'] .tile-value")).to_have_text("2")
    expect_figure(page, "tokens", "4,800")
    expect_figure(page, "cost", "$0.0175")
    expect_rollup(page, "1h", "4,000 tokens | 1 request · $0.0175")
    assert_chart(page, people.erin.rows, 7)

    picker.select_option(label=people.dana.email)
    expect(page.locator("#view [data-figure='tokens'] .tile-value")).to_have_text("4,500")
    assert_chart(page, people.dana.rows, 7)
    # Kept while the page is open: away and back shows the same user.
    page.get_by_role("link", name="API tokens").click()
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_label("Whose usage")).to_have_value(people.dana.user_id)
    expect(page.locator("#view [data-figure='tokens'] .tile-value")).to_have_text("4,500")


def test_the_page_reads_at_375_px(page: Page, people: People) -> None:
    page.set_viewport_size({"width": 375, "height": 812})
    sign_in(page, people.dana.login)
    expect(page.locator("#view [data-figure='tokens'] .tile-value")).to_have_text("4,500")
    # Nothing wider than the screen but the tables' own scrolling regions.
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= 375, overflow
    assert (
        page.evaluate("() => document.querySelector('#usage-chart canvas').getBoundingClientRect().right")
        <= 375
    )
    assert_accessible(page)
