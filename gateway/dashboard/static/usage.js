// #/usage: the last 7 days' figures, a daily chart of tokens and estimated cost (7, 30 or 90 days), the rollups,
// the top models and paths. An admin sees the whole gateway and may narrow it to one user.

import uPlot from "./vendor/uPlot.esm.js";
import { h, fill, uid } from "./dom.js";
import { count, dayLabel, ms, plural, usd } from "./format.js";

const RANGES = [7, 30, 90];
const SUMMARY_DAYS = 7;
const WINDOWS = { "10m": "Last 10 minutes", "1h": "Last hour", "6h": "Last 6 hours", "24h": "Last 24 hours", "7d": "Last 7 days" };
const TOKENS_COLOUR = "#1d4ed8";
const COST_COLOUR = "#b45309";
const DAY_SECONDS = 86_400;

// What the reader chose, kept while the page is open: coming back to the view shows the same.
const chosen = { days: 7, userId: "" };

const percent = new Intl.NumberFormat("en-US", { style: "percent", maximumFractionDigits: 1 });

export async function render(root, params, ctx) {
  const admin = Boolean(ctx.user?.is_admin);
  const aborts = new AbortController();
  let chart = null;
  let drawn = null; // the daily buckets the chart shows, to draw again at a new width

  const scopeNote = h("p", { class: "muted", id: "usage-scope" });
  const summary = h("section", { class: "panel", "aria-labelledby": "usage-summary-title" });
  const chartPanel = h("section", { class: "panel", "aria-labelledby": "usage-chart-title" });
  const rollups = h("section", { class: "panel", "aria-labelledby": "usage-rollups-title" });
  const tops = h("div", { class: "usage-tops" });

  const rangeName = uid("range");
  const range = h(
    "fieldset",
    { class: "segmented" },
    h("legend", {}, "Chart range"),
    RANGES.flatMap((days) => {
      const id = `${rangeName}-${days}`;
      return [
        h("input", {
          type: "radio",
          name: rangeName,
          id,
          value: String(days),
          checked: days === chosen.days,
          onchange: () => {
            chosen.days = days;
            loadDaily();
          },
        }),
        h("label", { for: id }, `${days} days`),
      ];
    }),
  );
  const chartBox = h("div", { class: "chart", id: "usage-chart" });
  const chartCaption = h("figcaption", { class: "muted" });
  const dailyTable = h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Usage per UTC day" });
  fill(
    chartPanel,
    h(
      "div",
      { class: "view-head" },
      h("h2", { id: "usage-chart-title" }, "Tokens and estimated cost per day"),
      range,
    ),
    h("figure", { class: "chart-figure" }, chartBox, chartCaption),
    h("details", { class: "chart-figures" }, h("summary", {}, "The chart's figures, day by day"), dailyTable),
  );

  const head = h("div", { class: "view-head" }, h("div", {}, h("h1", {}, "Usage"), scopeNote));
  if (admin) head.append(await userPicker(ctx, aborts.signal, () => loadAll()));
  fill(root, head, summary, chartPanel, rollups, tops);

  function query(extra = {}) {
    const values = { ...extra };
    if (admin && chosen.userId) values.user_id = chosen.userId;
    const text = new URLSearchParams(values).toString();
    return text ? `?${text}` : "";
  }

  function describeScope() {
    if (!admin) scopeNote.textContent = "Your own usage.";
    else if (!chosen.userId) scopeNote.textContent = "The whole gateway: every user's usage.";
    else scopeNote.textContent = `One user's usage: ${chosen.userEmail ?? chosen.userId}.`;
  }

  async function loadAll() {
    describeScope();
    if (!(await session())) return;
    await Promise.all([loadSummary(), loadDaily({ checked: true }), loadRollups()]);
  }

  /** The session checked (renewed, or signed in again) before the usage routes are asked: when the gateway has
   * no USAGE_API_KEY they answer a request without a session too, with every user's usage, which is not what
   * this page would mean to show once the access cookie has expired. */
  async function session() {
    try {
      await ctx.api("/api/v1/auth/me", { signal: aborts.signal });
      return true;
    } catch (error) {
      if (error.name !== "AbortError") ctx.toast(`Usage could not be read: ${error.message}`, "error");
      return false;
    }
  }

  async function loadSummary() {
    const body = await get(`/v1/usage${query({ days: SUMMARY_DAYS })}`);
    if (!body) return;
    fill(
      summary,
      h("h2", { id: "usage-summary-title" }, `Last ${SUMMARY_DAYS} days`),
      totalsTiles(body.totals),
    );
    fill(
      tops,
      topTable("Top models", "Model", "model", body.top_models),
      topTable("Top paths", "Path", "path", body.top_paths),
    );
  }

  async function loadDaily({ checked = false } = {}) {
    const days = chosen.days;
    if (!checked && !(await session())) return;
    const body = await get(`/v1/usage/daily${query({ days })}`);
    if (!body || days !== chosen.days) return;
    drawChart(body.daily);
    fill(dailyTable, dailyFigures(body.daily));
    const tokens = body.daily.reduce((sum, day) => sum + day.total_tokens, 0);
    const cost = body.daily.reduce((sum, day) => sum + day.estimated_cost_usd, 0);
    chartCaption.textContent = `Last ${days} days (UTC): ${count(tokens)} tokens, ${usd(cost)} estimated. Bars: tokens (left axis); line with dots: estimated cost (right axis).`;
  }

  async function loadRollups() {
    const body = await get(`/v1/usage/rollups${query()}`);
    if (!body) return;
    fill(
      rollups,
      h("h2", { id: "usage-rollups-title" }, "Recent windows"),
      h(
        "dl",
        { class: "tiles" },
        body.rollups.map(({ window, totals }) =>
          h(
            "div",
            { class: "tile", "data-window": window },
            h("dt", {}, WINDOWS[window] ?? window),
            h("dd", { class: "tile-value" }, count(totals.total_tokens), h("span", { class: "unit" }, totals.total_tokens === 1 ? " token" : " tokens")),
            h("dd", { class: "tile-note" }, `${plural(totals.requests, "request", "requests")} · ${usd(totals.estimated_cost_usd)}`),
          ),
        ),
      ),
    );
  }

  async function get(path) {
    try {
      return await ctx.api(path, { signal: aborts.signal });
    } catch (error) {
      if (error.name === "AbortError") return null;
      ctx.toast(`Usage could not be read: ${error.message}`, "error");
      return null;
    }
  }

  function drawChart(daily) {
    drawn = daily;
    const xs = daily.map((day) => Date.parse(`${day.date}T00:00:00Z`) / 1000);
    const data = [xs, daily.map((day) => day.total_tokens), daily.map((day) => day.estimated_cost_usd)];
    chart?.destroy();
    const width = Math.max(chartBox.clientWidth, 280);
    chart = new uPlot(chartOptions(width, daily.length), data, chartBox);
    chartBox.uplot = chart; // for the browser tests: the figures the chart was drawn from
    const canvas = chartBox.querySelector("canvas");
    canvas?.setAttribute("role", "img");
    canvas?.setAttribute("aria-label", `Daily tokens and estimated cost over the last ${daily.length} days; the figures are in the table below.`);
  }

  // Drawn again at a new width (not only resized): the axes' labels and sizes depend on it.
  let pending = 0;
  const resizer = new ResizeObserver(() => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(() => {
      if (drawn && chartBox.clientWidth && Math.abs(chart.width - chartBox.clientWidth) > 4) drawChart(drawn);
    });
  });
  resizer.observe(chartBox);

  await loadAll();

  return () => {
    aborts.abort();
    cancelAnimationFrame(pending);
    resizer.disconnect();
    chart?.destroy();
  };
}

/** Admins: whose usage to show, the whole gateway or one user (GET /v1/users). */
async function userPicker(ctx, signal, changed) {
  const select = h("select", { id: "usage-user" }, h("option", { value: "" }, "Whole gateway (every user)"));
  try {
    const { data } = await ctx.api("/v1/users", { signal });
    for (const user of data) {
      select.append(h("option", { value: user.id }, `${user.email}${user.is_admin ? " (admin)" : ""}`));
    }
  } catch (error) {
    if (error.name === "AbortError") throw error;
    ctx.toast(`The users could not be listed: ${error.message}`, "error");
  }
  if ([...select.options].some((option) => option.value === chosen.userId)) select.value = chosen.userId;
  else chosen.userId = "";
  select.addEventListener("change", () => {
    chosen.userId = select.value;
    chosen.userEmail = select.selectedOptions[0]?.textContent;
    changed();
  });
  return h("div", { class: "field" }, h("label", { for: "usage-user" }, "Whose usage"), select);
}

function totalsTiles(totals) {
  const errorShare = totals.requests ? ` (${percent.format(totals.errors / totals.requests)})` : "";
  const tiles = [
    ["Requests", count(totals.requests), null, "requests"],
    ["Errors", count(totals.errors), `of ${plural(totals.requests, "request", "requests")}${errorShare}`, "errors"],
    ["Tokens", count(totals.total_tokens), `${count(totals.input_tokens)} in · ${count(totals.output_tokens)} out`, "tokens"],
    ["Estimated cost", usd(totals.estimated_cost_usd), null, "cost"],
    ["OCR pages", count(totals.ocr_pages), null, "ocr-pages"],
    ["OCR cost", usd(totals.ocr_estimated_cost_usd), null, "ocr-cost"],
    ["Average latency", ms(totals.avg_latency_ms), `p95 ${ms(totals.p95_latency_ms)}`, "latency"],
  ];
  return h(
    "dl",
    { class: "tiles" },
    tiles.map(([label, value, note, key]) =>
      h(
        "div",
        { class: "tile", "data-figure": key },
        h("dt", {}, label),
        h("dd", { class: "tile-value" }, value),
        note ? h("dd", { class: "tile-note" }, note) : null,
      ),
    ),
  );
}

function topTable(title, column, key, rows) {
  const id = uid("top");
  const body = rows.length
    ? rows.map((row) =>
        h(
          "tr",
          {},
          h("td", { class: "name", "data-label": column }, row[key] ?? "—"),
          h("td", { class: "num", "data-label": "Requests" }, count(row.requests)),
          h("td", { class: "num", "data-label": "Errors" }, count(row.errors)),
          h("td", { class: "num", "data-label": "Tokens" }, count(row.total_tokens)),
          h("td", { class: "num", "data-label": "Estimated cost" }, usd(row.estimated_cost_usd)),
        ),
      )
    : [h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No requests in the last 7 days."))];
  return h(
    "section",
    { class: "panel", "aria-labelledby": id },
    h("h2", { id }, title),
    h(
      "div",
      { class: "table-wrap", tabindex: 0, role: "region", "aria-label": title },
      h(
        "table",
        { class: "stack" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, column),
            h("th", { scope: "col", class: "num" }, "Requests"),
            h("th", { scope: "col", class: "num" }, "Errors"),
            h("th", { scope: "col", class: "num" }, "Tokens"),
            h("th", { scope: "col", class: "num" }, "Estimated cost"),
          ),
        ),
        h("tbody", {}, body),
      ),
    ),
  );
}

function dailyFigures(daily) {
  return h(
    "table",
    { id: "usage-daily" },
    h("caption", { class: "visually-hidden" }, "Usage per UTC day"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Day (UTC)"),
        h("th", { scope: "col", class: "num" }, "Requests"),
        h("th", { scope: "col", class: "num" }, "Tokens"),
        h("th", { scope: "col", class: "num" }, "Estimated cost"),
        h("th", { scope: "col", class: "num" }, "OCR pages"),
      ),
    ),
    h(
      "tbody",
      {},
      [...daily].reverse().map((day) =>
        h(
          "tr",
          { "data-date": day.date },
          h("th", { scope: "row" }, day.date),
          h("td", { class: "num" }, count(day.requests)),
          h("td", { class: "num" }, count(day.total_tokens)),
          h("td", { class: "num" }, usd(day.estimated_cost_usd)),
          h("td", { class: "num" }, count(day.ocr_pages)),
        ),
      ),
    ),
  );
}

function chartHeight() {
  return window.innerWidth < 600 ? 220 : 300;
}

function chartOptions(width, days) {
  const compact = width < 500;
  return {
    width,
    height: chartHeight(),
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
    scales: {
      x: { time: true, range: (u, min, max) => [min - DAY_SECONDS / 2, max + DAY_SECONDS / 2] },
      tokens: { range: (u, min, max) => [0, Math.max(max, 1) * 1.1] },
      usd: { range: (u, min, max) => [0, Math.max(max, 0.0001) * 1.1] },
    },
    series: [
      { label: "Day (UTC)", value: "{YYYY}-{MM}-{DD}" },
      {
        label: "Tokens",
        scale: "tokens",
        stroke: TOKENS_COLOUR,
        fill: "rgba(29, 78, 216, 0.35)",
        width: 1,
        paths: uPlot.paths.bars({ size: [days > 40 ? 0.8 : 0.6, 40] }),
        points: { show: false },
        value: (u, v) => (v === null || v === undefined ? "—" : count(v)),
      },
      {
        label: "Estimated cost",
        scale: "usd",
        stroke: COST_COLOUR,
        width: 2,
        dash: [6, 4],
        points: { show: true, size: days > 40 ? 3 : 6, fill: COST_COLOUR },
        value: (u, v) => (v === null || v === undefined ? "—" : usd(v)),
      },
    ],
    axes: [
      {
        space: compact ? 56 : 48,
        incrs: [DAY_SECONDS, 2 * DAY_SECONDS, 7 * DAY_SECONDS, 14 * DAY_SECONDS, 28 * DAY_SECONDS],
        values: (u, ticks) => ticks.map((ts) => dayLabel(ts)),
        grid: { show: false },
      },
      {
        scale: "tokens",
        label: compact ? null : "Tokens",
        size: compact ? 44 : 70,
        values: (u, ticks) => ticks.map((v) => compactCount(v)),
      },
      {
        scale: "usd",
        side: 1,
        label: compact ? null : "Estimated cost (USD)",
        size: compact ? 62 : 78,
        grid: { show: false },
        values: (u, ticks) => ticks.map((v) => `$${trim(v)}`),
      },
    ],
  };
}

function compactCount(value) {
  return new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(value);
}

function trim(value) {
  return Number(value.toPrecision(3)).toString();
}
