// The agents views: #/agents (list, create, start, stop) and #/agents/<id> (the agent: its chat, vault, files and
// quota).

import { h, fill, uid } from "./dom.js";
import { chatPanel } from "./chat.js";
import { filesPanel, quotaPanel, vaultPanel } from "./assets.js";

const PROVIDERS = ["workers-ai", "openai", "mistral"];
const MODES = ["transparent", "enforcing"];

export async function render(root, params, ctx) {
  return params.id ? renderAgent(root, params.id, ctx) : renderList(root, ctx);
}

function field(label, control, hint) {
  const id = control.id || uid("field");
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("small", { id: hintId, class: "muted" }, hint) : null);
}

function stateBadge(agent) {
  const running = agent.state === "running";
  return h("span", { class: `badge ${running ? "ok" : "off"}` }, running ? "● Running" : "○ Stopped");
}

/** The start or stop button of an agent; `done(agent)` gets the agent as the gateway returns it. */
function toggleButton(agent, ctx, done) {
  const running = agent.state === "running";
  const button = h(
    "button",
    {
      type: "button",
      class: running ? "secondary" : "primary",
      "aria-label": `${running ? "Stop" : "Start"} ${agent.agent_name}`,
      onclick: async () => {
        button.disabled = true;
        try {
          const next = await ctx.api(`/v1/agents/${agent.id}/${running ? "stop" : "start"}`, { method: "POST" });
          const checkpoint = next.checkpoint ? ` Checkpoint ${next.checkpoint.id}: ${next.checkpoint.message_count} messages, log size ${next.checkpoint.tree_size}.` : "";
          ctx.toast?.(`${next.agent_name} ${next.state === "running" ? "started" : "stopped"}.${checkpoint}`);
          done(next);
        } catch (error) {
          ctx.toast?.(`Cannot ${running ? "stop" : "start"} the agent: ${error.message}`, "error");
          button.disabled = false;
        }
      },
    },
    running ? "Stop" : "Start",
  );
  return button;
}

async function renderList(root, ctx) {
  const rows = h("tbody");
  const table = h(
    "table",
    { class: "cards" },
    h("caption", { class: "visually-hidden" }, "Your agents"),
    h(
      "thead",
      {},
      h("tr", {}, ["Name", "State", "Model", "Provider", "Governance", "Messages", "Actions"].map((t) => h("th", { scope: "col" }, t))),
    ),
    rows,
  );
  const empty = h("p", { class: "muted" }, "No agents yet: create one above.");
  const name = h("input", { name: "agent_name", maxlength: 200, placeholder: "My Agent", autocomplete: "off" });
  const model = h("input", { name: "model", maxlength: 200, placeholder: "@cf/meta/llama-3.1-8b-instruct", autocomplete: "off" });
  const providerList = h("datalist", { id: uid("providers") }, PROVIDERS.map((p) => h("option", { value: p })));
  const provider = h("input", { name: "model_provider", maxlength: 200, placeholder: "workers-ai", autocomplete: "off" });
  provider.setAttribute("list", providerList.id);
  const mode = h("select", { name: "governance_mode" }, MODES.map((m) => h("option", { value: m }, m)));
  const form = h(
    "form",
    { class: "panel form-grid", "aria-labelledby": "create-agent-title", onsubmit: create },
    h("h2", { id: "create-agent-title" }, "New agent"),
    field("Name", name, "Empty: My Agent."),
    field("Model", model, "Empty: the default model."),
    field("Provider", provider, "Empty: workers-ai."),
    providerList,
    field("Governance mode", mode, "Transparent records verdicts; enforcing also blocks denied messages."),
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Create agent")),
  );
  fill(root, h("h1", {}, "Agents"), form, h("section", { "aria-label": "Your agents" }, table, empty));

  function row(agent) {
    const tr = h(
      "tr",
      { "data-agent-id": agent.id },
      h("td", { "data-label": "Name" }, h("a", { href: `#/agents/${agent.id}` }, agent.agent_name)),
      h("td", { "data-label": "State" }, stateBadge(agent)),
      h("td", { "data-label": "Model" }, h("code", {}, agent.model)),
      h("td", { "data-label": "Provider" }, agent.model_provider),
      h("td", { "data-label": "Governance" }, agent.governance_mode),
      h("td", { "data-label": "Messages" }, String(agent.message_count)),
      h("td", { "data-label": "Actions" }, toggleButton(agent, ctx, (next) => tr.replaceWith(row(next)))),
    );
    return tr;
  }

  async function load() {
    const { data } = await ctx.api("/v1/agents");
    fill(rows, data.map(row));
    empty.hidden = data.length > 0;
    table.hidden = data.length === 0;
  }

  async function create(event) {
    event.preventDefault();
    const body = {};
    for (const [key, input] of [["agent_name", name], ["model", model], ["model_provider", provider], ["governance_mode", mode]]) {
      if (input.value.trim()) body[key] = input.value.trim();
    }
    try {
      const agent = await ctx.api("/v1/agents", { method: "POST", json: body });
      ctx.toast?.(`Agent ${agent.agent_name} created.`);
      form.reset();
      await load();
      rows.querySelector(`[data-agent-id="${agent.id}"] a`)?.focus();
    } catch (error) {
      ctx.toast?.(`Cannot create the agent: ${error.message}`, "error");
    }
  }

  await load();
}

async function renderAgent(root, id, ctx) {
  const agent = await ctx.api(`/v1/agents/${encodeURIComponent(id)}`);
  const header = h("div", { class: "agent-head" });
  const quota = quotaPanel(agent, ctx);
  const chat = chatPanel(agent, ctx, { onTurn: quota.refresh });
  fill(
    root,
    h("p", {}, h("a", { href: "#/agents" }, "← All agents")),
    header,
    h(
      "div",
      { class: "agent-layout" },
      chat.element,
      h("div", { class: "agent-side" }, quota.element, vaultPanel(agent, ctx).element, filesPanel(agent, ctx, quota.refresh).element),
    ),
  );

  function showHeader(current) {
    fill(
      header,
      h("h1", {}, current.agent_name),
      h(
        "p",
        { class: "agent-facts" },
        stateBadge(current),
        " · ",
        h("code", {}, current.model),
        ` on ${current.model_provider} · governance ${current.governance_mode}`,
      ),
      toggleButton(current, ctx, (next) => {
        showHeader(next);
        chat.update(next);
        header.querySelector("button")?.focus();
      }),
    );
  }

  showHeader(agent);
  return () => chat.close();
}
