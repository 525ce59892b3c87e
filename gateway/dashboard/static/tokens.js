// #/tokens: the signed-in user's API tokens: list, create (name, scopes, expiry; the secret shown once, with a copy
// button), revoke. A token's limits (budgets and rate) are shown when the gateway reports them.

import { h, fill } from "./dom.js";
import { count, usd, utc } from "./format.js";

const DEFAULT_SCOPES = ["chat", "ocr", "chroma"]; // what the gateway gives a token created without scopes
const KNOWN_SCOPES = ["agents", "chat", "chroma", "ocr", "usage:read"];
const EXPIRIES = [
  ["", "Never"],
  ["7", "In 7 days"],
  ["30", "In 30 days"],
  ["90", "In 90 days"],
  ["365", "In a year"],
];
const SCOPE_NOTES = {
  agents: "agents and their keys",
  chat: "chat completions and other model calls",
  chroma: "the vector store",
  ocr: "OCR",
  "usage:read": "read your usage",
};

export async function render(root, params, ctx) {
  const aborts = new AbortController();
  const scopes = await knownScopes(ctx, aborts.signal);
  const secret = h("div", { class: "secret-slot" });
  const list = h("section", { class: "panel", "aria-labelledby": "tokens-list-title" });

  const name = h("input", { id: "token-name", type: "text", maxLength: 200, autocomplete: "off", required: true });
  const expiry = h(
    "select",
    { id: "token-expiry" },
    EXPIRIES.map(([value, label]) => h("option", { value }, label)),
  );
  const checks = scopes.map((scope) =>
    h("input", { type: "checkbox", name: "scopes", value: scope, id: `scope-${scope.replace(":", "-")}`, checked: DEFAULT_SCOPES.includes(scope) }),
  );
  const error = h("p", { class: "error", role: "alert", id: "token-error" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create token");
  const form = h(
    "form",
    { class: "panel", "aria-labelledby": "tokens-create-title", novalidate: true, onsubmit: create },
    h("h2", { id: "tokens-create-title" }, "Create a token"),
    h(
      "div",
      { class: "form-grid" },
      h("div", { class: "field" }, h("label", { for: "token-name" }, "Name"), name),
      h("div", { class: "field" }, h("label", { for: "token-expiry" }, "Expires"), expiry),
      h(
        "fieldset",
        { class: "full" },
        h("legend", {}, "Scopes"),
        h(
          "div",
          { class: "checks" },
          checks.map((check, index) =>
            h("label", { for: check.id }, check, h("span", {}, scopes[index]), SCOPE_NOTES[scopes[index]] ? h("span", { class: "muted" }, `(${SCOPE_NOTES[scopes[index]]})`) : null),
          ),
        ),
      ),
    ),
    error,
    submit,
  );

  fill(
    root,
    h("div", { class: "view-head" }, h("div", {}, h("h1", {}, "API tokens"), h("p", { class: "muted" }, "Tokens let programs call the gateway as you, within their scopes."))),
    secret,
    form,
    list,
  );
  await load();
  return () => aborts.abort();

  async function load() {
    let tokens;
    try {
      ({ data: tokens } = await ctx.api("/v1/api-tokens", { signal: aborts.signal }));
    } catch (failure) {
      if (failure.name === "AbortError") return;
      fill(list, h("h2", { id: "tokens-list-title" }, "Your tokens"), h("p", { class: "error", role: "alert" }, `The tokens could not be listed: ${failure.message}`));
      return;
    }
    fill(list, h("h2", { id: "tokens-list-title" }, "Your tokens"), tokenTable(tokens, revoke));
  }

  async function create(event) {
    event.preventDefault();
    error.textContent = "";
    const chosen = checks.filter((check) => check.checked).map((check) => check.value);
    if (!name.value.trim()) {
      error.textContent = "Give the token a name, to tell it apart later.";
      name.focus();
      return;
    }
    if (!chosen.length) {
      error.textContent = "Choose at least one scope.";
      checks[0]?.focus();
      return;
    }
    const body = { name: name.value.trim(), scopes: chosen };
    if (expiry.value) body.expires_in_days = Number(expiry.value);
    submit.disabled = true;
    try {
      const created = await ctx.api("/v1/api-tokens", { method: "POST", json: body, signal: aborts.signal });
      form.reset();
      checks.forEach((check) => {
        check.checked = DEFAULT_SCOPES.includes(check.value);
      });
      showSecret(created);
      await load();
    } catch (failure) {
      if (failure.name !== "AbortError") error.textContent = failure.message;
    } finally {
      submit.disabled = false;
    }
  }

  /** The secret, this once: it is not kept anywhere, and gone from the page once dismissed or left. */
  function showSecret(created) {
    const field = h("input", { id: "new-token", type: "text", readOnly: true, value: created.token, class: "mono", spellcheck: false });
    const status = h("span", { class: "muted", role: "status" });
    const copy = h("button", { type: "button", class: "primary", onclick: copyToken }, "Copy");
    const done = h("button", { type: "button", onclick: () => fill(secret) }, "Done");
    fill(
      secret,
      h(
        "section",
        { class: "panel secret", "aria-labelledby": "new-token-title" },
        h("h2", { id: "new-token-title" }, `Token “${created.name}” created`),
        h("p", {}, h("strong", {}, "Copy it now: "), "it will not be shown again. Anyone holding it can act as you within its scopes."),
        h("div", { class: "field" }, h("label", { for: "new-token" }, "Your new token"), h("div", { class: "secret-row" }, field, copy)),
        h("div", { class: "row" }, done, status),
      ),
    );
    copy.focus();

    async function copyToken() {
      try {
        await navigator.clipboard.writeText(field.value);
      } catch {
        field.select(); // the reader copies it by hand
        status.textContent = "Select the token and copy it (Ctrl+C).";
        return;
      }
      copy.textContent = "Copied";
      status.textContent = "Copied to the clipboard.";
      ctx.toast("The token is in your clipboard.");
    }
  }

  async function revoke(token) {
    if (!window.confirm(`Revoke the token “${token.name || token.prefix}”? Programs using it stop working at once.`)) return;
    try {
      await ctx.api(`/v1/api-tokens/${encodeURIComponent(token.id)}`, { method: "DELETE", signal: aborts.signal });
      ctx.toast(`Token “${token.name || token.prefix}” revoked.`);
      await load();
    } catch (failure) {
      if (failure.name !== "AbortError") ctx.toast(`The token could not be revoked: ${failure.message}`, "error");
    }
  }
}

/** The scopes a token may hold, as the gateway's own OpenAPI document lists them. */
async function knownScopes(ctx, signal) {
  try {
    const document = await ctx.api("/openapi.json", { signal });
    const schema = document.paths["/v1/api-tokens"].post.requestBody.content["application/json"].schema;
    const listed = schema.properties.scopes.items.enum;
    if (Array.isArray(listed) && listed.length) return listed;
  } catch (failure) {
    if (failure.name === "AbortError") throw failure;
  }
  return KNOWN_SCOPES;
}

function statusOf(token) {
  if (token.revoked_at) return ["Revoked", "off"];
  if (token.expires_at && Date.parse(token.expires_at) <= Date.now()) return ["Expired", "bad"];
  return ["Active", "ok"];
}

function tokenTable(tokens, revoke) {
  if (!tokens.length) return h("p", { class: "muted" }, "No tokens yet.");
  const withLimits = tokens.some((token) => "limits" in token);
  const headers = ["Name", "Token", "Scopes", "Created", "Last used", "Expires", "Status", ...(withLimits ? ["Limits"] : []), "Actions"];
  return h(
    "div",
    { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Token table" },
    h(
      "table",
      { class: "tokens stack" },
      h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))),
      h(
        "tbody",
        {},
        tokens.map((token) => {
          const [status, kind] = statusOf(token);
          const label = token.name || token.prefix;
          return h(
            "tr",
            { class: kind === "ok" ? "" : "inactive", "data-token-id": token.id },
            h("td", { class: "name", "data-label": "Name" }, token.name || h("span", { class: "muted" }, "(no name)")),
            h("td", { "data-label": "Token" }, h("code", {}, `${token.prefix}…`)),
            h("td", { "data-label": "Scopes" }, token.scopes.join(", ") || "—"),
            h("td", { "data-label": "Created" }, utc(token.created_at)),
            h("td", { "data-label": "Last used" }, utc(token.last_used_at, "Never")),
            h("td", { "data-label": "Expires" }, utc(token.expires_at, "Never")),
            h("td", { "data-label": "Status" }, h("span", { class: `badge ${kind}` }, status)),
            withLimits ? h("td", { "data-label": "Limits" }, limitsText(token.limits)) : null,
            h(
              "td",
              { class: "actions" },
              kind === "ok"
                ? h("button", { type: "button", class: "danger", "aria-label": `Revoke ${label}`, onclick: () => revoke(token) }, "Revoke")
                : null,
            ),
          );
        }),
      ),
    ),
  );
}

const PERIODS = { day: "today", month: "this month" };
const LIMIT_ORDER = ["usd_per_period", "tokens_per_period", "requests_per_minute"];

/** `usd_per_period`, `tokens_per_period`, `requests_per_minute` (gateway/budgets), each as spent of limit. */
function limitsText(limits) {
  const order = (kind) => (LIMIT_ORDER.includes(kind) ? LIMIT_ORDER.indexOf(kind) : LIMIT_ORDER.length);
  const entries = Object.entries(limits ?? {}).sort(([a], [b]) => order(a) - order(b));
  if (!entries.length) return "None";
  return h(
    "ul",
    { class: "limits" },
    entries.map(([kind, view]) => {
      const period = view.period === "rolling" ? `over ${view.rolling_days} days` : PERIODS[view.period] ?? "";
      if (kind === "usd_per_period") return h("li", {}, `${usd(view.spent)} of ${usd(view.limit)} ${period}`.trim());
      if (kind === "tokens_per_period") return h("li", {}, `${count(view.spent)} of ${count(view.limit)} tokens ${period}`.trim());
      if (kind === "requests_per_minute") return h("li", {}, `${count(view.limit)} requests a minute`);
      return h("li", {}, `${kind}: ${view.limit ?? "—"}`);
    }),
  );
}
