// An agent's chat panel: the session's messages, and new turns over the chat WebSocket (API.md, "Chat over
// WebSocket"), the reply shown as its chunks arrive, each message with its governance verdict and a link to the
// proof of its transparency-log leaf.

import { h, fill, uid } from "./dom.js";

const NOT_RUNNING = 4409;

/** The chat panel of `agent`; `close()` ends its socket (the view's cleanup). */
export function chatPanel(agent, ctx, { onTurn } = {}) {
  const log = h("div", { class: "chat-log", role: "log", "aria-label": "Conversation", tabindex: "0" });
  const status = h("p", { class: "chat-status", role: "status" });
  const inputId = uid("chat-input");
  const input = h("textarea", { id: inputId, name: "content", rows: 3, required: true, maxlength: 100000 });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const form = h(
    "form",
    { class: "chat-form", onsubmit: (event) => (event.preventDefault(), submit()) },
    h("label", { for: inputId }, "Message"),
    input,
    h("div", { class: "row" }, send, h("span", { class: "muted" }, "Enter sends, Shift+Enter starts a new line.")),
  );
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  const element = h("section", { class: "panel chat", "aria-labelledby": "chat-title" },
    h("h2", { id: "chat-title" }, "Chat"), status, log, form);

  const pending = []; // user messages sent, waiting for their governance frame
  const replies = new Map(); // message_id -> the reply's element parts
  let socket = null;
  let closed = false;

  function setStatus(text) {
    status.textContent = text;
  }

  function setEnabled(enabled) {
    input.disabled = !enabled;
    send.disabled = !enabled;
  }

  function message(role, content) {
    const body = h("p", { class: "chat-text" }, content);
    const meta = h("p", { class: "chat-meta" });
    const item = h(
      "div",
      { class: `chat-message chat-${role}` },
      h("p", { class: "chat-role" }, role === "user" ? "You" : role === "assistant" ? agent.agent_name : role),
      body,
      meta,
    );
    log.querySelector(".chat-empty")?.remove();
    log.append(item);
    log.scrollTop = log.scrollHeight;
    return { item, body, meta };
  }

  function describe(meta, parts) {
    fill(meta, parts.filter(Boolean).flatMap((part, i) => (i ? [" · ", part] : [part])));
  }

  function proofLink(leafHash) {
    return leafHash ? h("a", { href: `#/proof/${leafHash}`, class: "proof-link" }, "Proof") : null;
  }

  function verdictText(decision, mode) {
    return h("span", { class: `verdict verdict-${decision}` }, `Governance: ${decision}${mode ? ` (${mode})` : ""}`);
  }

  function error(text) {
    const { item } = message("system", text);
    item.classList.add("chat-error");
    item.setAttribute("role", "alert");
  }

  /** The turn in flight ends unfinished (an error frame, or the socket closed). */
  function interrupt() {
    for (const reply of replies.values()) {
      reply.item.removeAttribute("aria-busy");
      describe(reply.meta, ["Interrupted"]);
    }
    replies.clear();
    pending.splice(0).forEach((user) => describe(user.meta, ["No answer"]));
  }

  function onFrame(frame) {
    if (frame.type === "governance") {
      const user = pending.shift() ?? message("user", "");
      user.item.dataset.messageId = frame.message_id;
      const findings = (frame.findings ?? []).map((f) => f.message ?? f.rule);
      const blocked = frame.decision === "deny" && frame.mode === "enforcing";
      describe(user.meta, [
        verdictText(frame.decision, frame.mode),
        findings.length ? `findings: ${findings.join("; ")}` : null,
        blocked ? "blocked: not sent to the model" : null,
        proofLink(frame.leaf_hash),
      ]);
      if (blocked) {
        setEnabled(true);
        input.focus();
      }
    } else if (frame.type === "stream_start") {
      const reply = message("assistant", "");
      reply.item.dataset.messageId = frame.message_id;
      reply.item.setAttribute("aria-busy", "true");
      describe(reply.meta, ["Streaming…"]);
      replies.set(frame.message_id, reply);
    } else if (frame.type === "stream_chunk") {
      const reply = replies.get(frame.message_id);
      if (reply) {
        reply.body.append(frame.content);
        log.scrollTop = log.scrollHeight;
      }
    } else if (frame.type === "stream_end") {
      const reply = replies.get(frame.message_id);
      if (reply) {
        reply.item.removeAttribute("aria-busy");
        const tokens = frame.usage?.total_tokens ?? frame.usage?.completion_tokens;
        describe(reply.meta, [tokens !== undefined && tokens !== null ? `${tokens} tokens` : null, proofLink(frame.leaf_hash)]);
        replies.delete(frame.message_id);
      }
      setEnabled(true);
      input.focus();
      onTurn?.();
    } else if (frame.type === "error") {
      interrupt();
      error(`Error (${frame.code}): ${frame.message}`);
      setEnabled(true);
    }
  }

  function submit() {
    const content = input.value;
    if (!content.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
    pending.push(message("user", content));
    socket.send(JSON.stringify({ type: "message", content }));
    input.value = "";
    setEnabled(false);
  }

  async function connect() {
    if (closed) return;
    if (agent.state !== "running") {
      setStatus("The agent is stopped: start it to chat.");
      setEnabled(false);
      return;
    }
    setStatus("Connecting…");
    setEnabled(false);
    try {
      await ctx.api(`/v1/agents/${agent.id}`); // renews the session cookie first, if it has expired
    } catch (failure) {
      setStatus(`Cannot reach the agent: ${failure.message}`);
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/v1/agents/${agent.id}/chat`);
    socket.addEventListener("open", () => {
      setStatus("Connected.");
      setEnabled(true);
    });
    socket.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      onFrame(frame);
    });
    socket.addEventListener("close", (event) => {
      socket = null;
      setEnabled(false);
      if (closed) return;
      interrupt();
      if (event.code === NOT_RUNNING) setStatus("The agent is not running: start it to chat.");
      else setStatus("Disconnected.");
      const again = h("button", { type: "button", onclick: () => (again.remove(), connect()) }, "Reconnect");
      status.append(" ", again);
    });
  }

  async function load() {
    try {
      const page = await ctx.api(`/v1/agents/${agent.id}/messages?limit=200`);
      for (const row of page.data) {
        const { meta } = message(row.role, row.content);
        const tokens = row.usage ? (row.usage.prompt_tokens ?? 0) + (row.usage.completion_tokens ?? 0) : null;
        describe(meta, [
          row.governance_decision ? verdictText(row.governance_decision, null) : null,
          row.role === "assistant" && tokens ? `${tokens} tokens` : null,
          proofLink(row.leaf_hash),
        ]);
      }
      if (!page.data.length) log.append(h("p", { class: "chat-empty muted" }, "No messages in this session yet."));
    } catch (failure) {
      error(`Cannot load the messages: ${failure.message}`);
    }
  }

  const ready = load().then(connect);
  return {
    element,
    ready,
    /** The agent was started or stopped: connect or disconnect. */
    update(next) {
      agent = next;
      if (agent.state === "running" && !socket) connect();
      if (agent.state !== "running" && socket) socket.close();
    },
    close() {
      closed = true;
      socket?.close();
    },
  };
}
